using Grpc.Core;
using Metering.Client.Utilisation;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>
/// The sample agent reading SM activity from dcgm-exporter (--dcgm-url) or nvidia-smi: a recorded
/// exposition of an 8×H100 node (four idle GPUs, four busy) served over real HTTP on loopback, the
/// agent streaming to the real server, and the committed sm_active_bp and the allocated-but-idle
/// audit checked; an exporter that fails stops the agent before it sends anything.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class ProviderAgentSmActivityTests(PostgresFixture postgres)
{
    private const string Day = "2026-11-20";

    /// <summary>
    /// DCGM_FI_PROF_SM_ACTIVE of GPUs 0 to 7 in the recorded file, in basis points rounded half away
    /// from zero: 0.012500, 0.020049, 0, 0.031250 (312.5 → 313), 0.873412, 0.912346, 0.8, 0.950050 (9,500.5 → 9,501).
    /// </summary>
    private static readonly uint[] RecordedGpuBp = [125, 200, 0, 313, 8_734, 9_123, 8_000, 9_501];

    private static string Recorded() => RecordedExporter.Recorded();

    private static Task<(int ExitCode, string Output)> RunAgentAsync(TestServer server, string stream, params string[] options) =>
        ProviderAgentCliTests.RunAgentAsync([
            "--server", server.Address.ToString().TrimEnd('/'), "--ca", TestCertificates.CaPemPath, "--api-key", TestServer.ProviderKey,
            "--stream", stream, "--day", Day, "--jobs-per-interval", "1", "--pools", "H100-SXM:8", "--holders", TestRecords.Holder,
            "--sm-sample-seconds", "0", .. options]);

    [Fact]
    public async Task Records_carry_the_mean_of_their_gpus_and_an_idle_gpus_job_is_found_by_the_audit()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using RecordedExporter exporter = await RecordedExporter.StartAsync(_ => (200, Recorded()));

        var (exit, output) = await RunAgentAsync(server, "dcgm-node-07", "--dcgm-url", exporter.MetricsUrl, "--sm-samples", "3");

        Assert.True(exit == 0, output);
        Assert.Equal(3, exporter.Requests);
        var records = (await server.QueryAsync<(string JobId, string[] Uuids, int? SmActiveBp)>(
            "SELECT job_id, device_uuids, sm_active_bp FROM usage_records WHERE stream_id = 'dcgm-node-07' ORDER BY sequence")).ToList();
        Assert.Equal(288, records.Count);
        foreach (var (jobId, uuids, smActiveBp) in records)
        {
            // Device NNNN is GPU NNNN mod 8; the record's figure is its GPUs' mean, rounded half up.
            uint[] gpus = [.. uuids.Select(uuid => RecordedGpuBp[int.Parse(uuid[(uuid.LastIndexOf('-') + 1)..], System.Globalization.CultureInfo.InvariantCulture) % 8])];
            long expected = ((2 * gpus.Sum(bp => (long)bp)) + gpus.Length) / (2 * gpus.Length);
            Assert.True(expected == smActiveBp, $"{jobId} on {string.Join(' ', uuids)}: expected {expected}, stored {smActiveBp}");
        }

        // Jobs on GPUs 0 to 3 alone are idle (below 500 bp); every job spans four hours here.
        string[] idleJobs = [.. records.GroupBy(r => r.JobId).Where(job => job.All(r => r.SmActiveBp < 500)).Select(job => job.Key).Order(StringComparer.Ordinal)];
        Assert.NotEmpty(idleJobs);
        Assert.Contains(records, r => r.SmActiveBp >= 500);
        var audit = new AuditService.AuditServiceClient(server.Channel);
        long dayStartMs = new DateTimeOffset(2026, 11, 20, 0, 0, 0, TimeSpan.FromHours(8)).ToUnixTimeMilliseconds();
        DetectAnomaliesResponse found = await audit.DetectAnomaliesAsync(new DetectAnomaliesRequest
        {
            CreditCode = TestRecords.Provider,
            FromUnixMs = dayStartMs,
            UntilUnixMs = dayStartMs + 86_400_000,
            Kinds = { AnomalyKind.AnomalyAllocatedIdle },
        }, TestServer.Bearer(TestServer.AuditorKey));
        // A job whose records leave a gap (the simulator ends some intervals early) may have no
        // idle stretch of an hour; every job flagged is one of the idle ones, and some are.
        string[] flagged = [.. found.Anomalies.Select(a => Assert.Single(a.Facts, f => f.Name == "job_id").Value).Distinct()];
        Assert.NotEmpty(flagged);
        Assert.Subset(idleJobs.ToHashSet(StringComparer.Ordinal), flagged.ToHashSet(StringComparer.Ordinal));
    }

    [Fact]
    public async Task Samples_that_differ_are_averaged_per_gpu()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        // The second scrape finds GPU 0 fully busy: its mean over two samples is (0.0125 + 1) / 2 = 0.50625 → 5,063 bp.
        await using RecordedExporter exporter = await RecordedExporter.StartAsync(request => (200,
            request == 1 ? Recorded() : Recorded().Replace("device=\"nvidia0\",modelName=\"NVIDIA H100 80GB HBM3\",Hostname=\"gpu-node-07\",DCGM_FI_DRIVER_VERSION=\"580.65.06\"} 0.012500", "device=\"nvidia0\",modelName=\"NVIDIA H100 80GB HBM3\",Hostname=\"gpu-node-07\",DCGM_FI_DRIVER_VERSION=\"580.65.06\"} 1", StringComparison.Ordinal)));

        var (exit, output) = await RunAgentAsync(server, "dcgm-avg", "--dcgm-url", exporter.MetricsUrl, "--sm-samples", "2");

        Assert.True(exit == 0, output);
        Assert.Contains("gpu 0 5063 bp, gpu 1 200 bp", output, StringComparison.Ordinal);
        Assert.Equal(5_063, await server.ScalarAsync<int>("SELECT sm_active_bp FROM usage_records WHERE stream_id = 'dcgm-avg' AND device_uuids = ARRAY['GPU-sz-nanshan-dc1-0000'] LIMIT 1"));
    }

    [Theory]
    [InlineData("HTTP 500", 5, "answered HTTP 500")]
    [InlineData("garbage", 2, "is not a Prometheus sample")]
    [InlineData("no SM metric", 2, "has no DCGM_FI_PROF_SM_ACTIVE sample")]
    [InlineData("above 1", 2, "is 1.2, outside 0 to 1")]
    [InlineData("negative", 2, "is -0.1, outside 0 to 1")]
    [InlineData("NaN", 2, "not a number")]
    [InlineData("unreachable", 5, "does not answer")]
    public async Task A_failing_exporter_stops_the_agent_with_a_clear_error_and_nothing_is_sent(string failure, int exitCode, string message)
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string gpu0 = "DCGM_FI_DRIVER_VERSION=\"580.65.06\"} 0.012500";
        await using RecordedExporter exporter = await RecordedExporter.StartAsync(_ => failure switch
        {
            "HTTP 500" => (500, "dcgm: failed to collect metrics\n"),
            "garbage" => (200, "<html><body>Bad Gateway</body></html>\n"),
            "no SM metric" => (200, string.Join('\n', Recorded().Split('\n').Where(line => !line.Contains("DCGM_FI_PROF_SM_ACTIVE", StringComparison.Ordinal)))),
            "above 1" => (200, Recorded().Replace(gpu0, gpu0[..^8] + "1.2", StringComparison.Ordinal)),
            "negative" => (200, Recorded().Replace(gpu0, gpu0[..^8] + "-0.1", StringComparison.Ordinal)),
            _ => (200, Recorded().Replace(gpu0, gpu0[..^8] + "NaN", StringComparison.Ordinal)),
        });
        string url = failure == "unreachable" ? "http://127.0.0.1:9/metrics" : exporter.MetricsUrl;

        var (exit, output) = await RunAgentAsync(server, "dcgm-bad", "--dcgm-url", url);

        Assert.True(exit == exitCode, output);
        Assert.Contains("error: dcgm-exporter at", output, StringComparison.Ordinal);
        Assert.Contains(message, output, StringComparison.Ordinal);
        Assert.DoesNotContain("Exception", output, StringComparison.Ordinal);
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = 'dcgm-bad'"));
    }

    [Fact]
    public async Task Nvidia_smi_utilisation_is_read_as_a_percentage_per_gpu()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string program = Path.Combine(Directory.CreateTempSubdirectory("metering-smi-").FullName, "nvidia-smi");
        // What nvidia-smi prints for that query on an 8-GPU node, whatever the arguments.
        await File.WriteAllTextAsync(program, "#!/bin/sh\nprintf '0, 3\\n1, 2\\n2, 0\\n3, 4\\n4, 100\\n5, 97\\n6, 88\\n7, 100\\n'\n");
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(program, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }

        var (exit, output) = await RunAgentAsync(server, "smi-node", "--nvidia-smi", program, "--sm-samples", "1");

        Assert.True(exit == 0, output);
        Assert.Equal(300, await server.ScalarAsync<int>("SELECT sm_active_bp FROM usage_records WHERE stream_id = 'smi-node' AND device_uuids = ARRAY['GPU-sz-nanshan-dc1-0000'] LIMIT 1"));
    }

    [Fact]
    public void The_exposition_reader_takes_whole_gpus_refuses_a_gpu_listed_twice_and_rounds_half_away_from_zero()
    {
        const string text = """
            # TYPE DCGM_FI_PROF_SM_ACTIVE gauge
            DCGM_FI_PROF_SM_ACTIVE{gpu="0", UUID="GPU-a", Hostname="n"} 0.25 1764979200000
            DCGM_FI_PROF_SM_ACTIVE{gpu="0",UUID="GPU-a",GPU_I_PROFILE="1g.10gb",GPU_I_ID="7",Hostname="n"} 0.9
            DCGM_FI_PROF_SM_ACTIVE{gpu="1",UUID="GPU-b",modelName="NVIDIA \"H100\"",Hostname="n"} 5e-1
            """;

        SortedDictionary<int, decimal> figures = DcgmExposition.ParseSmActive(text);

        Assert.Equal([(0, 0.25m), (1, 0.5m)], figures.Select(f => (f.Key, f.Value)));
        var twice = Assert.Throws<GpuActivityException>(() => DcgmExposition.ParseSmActive(text + "DCGM_FI_PROF_SM_ACTIVE{gpu=\"1\"} 0.1\n"));
        Assert.Equal(GpuActivityProblem.BadOutput, twice.Problem);
        Assert.Equal((5_000u, 4_999u, 163u), (SmActivitySampler.ToBasisPoints(0.49995m), SmActivitySampler.ToBasisPoints(0.499949999m),
            SmActivitySampler.MeanBp(new Dictionary<int, uint> { [0] = 125, [1] = 200 }, [0, 1])));
        Assert.Null(SmActivitySampler.MeanBp(new Dictionary<int, uint> { [0] = 125 }, [3]));
    }
}
