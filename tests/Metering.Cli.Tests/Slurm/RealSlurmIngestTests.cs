using System.Runtime.Versioning;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;

namespace Metering.Cli.Tests.Slurm;

/// <summary>
/// Real jobs on a real single-node Slurm (<see cref="SlurmCluster"/>), their real `sacct
/// --parsable2` output uploaded with `metering ingest-file` to a real server: what is committed is
/// compared, job by job, with what Slurm reported.
/// </summary>
[Collection(SlurmCollection.Name)]
[SupportedOSPlatform("linux")]
public sealed class RealSlurmIngestTests(PostgresFixture postgres, SlurmClusterFixture slurm) : IClassFixture<SlurmClusterFixture>
{
    internal const string Stream = "slurm-real";

    private SlurmCluster Cluster => slurm.Cluster;

    [Fact]
    public async Task Finished_jobs_of_every_outcome_are_committed_exactly_as_sacct_reports_them_and_a_running_job_is_not()
    {
        // The timed-out job goes first: Slurm keeps time limits in whole minutes and checks them
        // every 30 s, so it ends a minute or more later while the others run beside it.
        string timedOut = await Cluster.SubmitAsync("-A", SlurmCluster.Account, "--gres=gpu:a100:1", "--time=1", "--wrap", "sleep 300");
        string completed = await Cluster.SubmitAsync("-A", SlurmCluster.Account, "--gres=gpu:a100:1", "--wrap", "sleep 1");
        string array = await Cluster.SubmitAsync("-A", SlurmCluster.OtherAccount, "--gres=gpu:h100:1", "--array=0-2", "--wrap", "sleep 1");
        string failed = await Cluster.SubmitAsync("-A", SlurmCluster.Account, "--gres=gpu:h100:1", "--wrap", "sleep 1; exit 3");
        string cancelled = await Cluster.SubmitAsync("-A", SlurmCluster.Account, "--gres=gpu:a100:2", "--wrap", "sleep 300");
        string running = await Cluster.SubmitAsync("-A", SlurmCluster.Account, "--gres=gpu:a100:1", "--wrap", "sleep 300");
        try
        {
            await Cluster.WaitForStateAsync(cancelled, "RUNNING");
            await Task.Delay(TimeSpan.FromSeconds(2));
            await Cluster.RunCheckedAsync("scancel", cancelled);
            await Cluster.WaitForEndAsync(timedOut, completed, array, failed, cancelled);
            await Cluster.WaitForStateAsync(running, "RUNNING");

            string sacct = await Cluster.SacctAsync(timedOut, completed, array, failed, cancelled, running);
            List<SacctOutput.Line> lines = SacctOutput.Parse(sacct);
            Assert.Equal(["CANCELLED", "COMPLETED", "FAILED", "RUNNING", "TIMEOUT"],
                lines.Where(line => line.IsAllocation).Select(line => line.State.Split(' ')[0]).Distinct().Order(StringComparer.Ordinal));

            await using TestServer server = await TestServer.StartAsync(postgres);
            var (exit, output) = await IngestAsync(server, sacct);

            Assert.True(exit == 0, output + "\n" + sacct);
            List<SacctOutput.Line> finished = lines.Where(line => line.IsAllocation && line.State != "RUNNING").ToList();
            Assert.Equal(7, finished.Count);
            Assert.Equal(finished.Select(Expected).OrderBy(row => row.JobId, StringComparer.Ordinal), await CommittedAsync(server));
            Assert.Equal([$"{array}_0", $"{array}_1", $"{array}_2"], (await CommittedAsync(server)).Where(row => row.JobId.StartsWith(array + "_", StringComparison.Ordinal)).Select(row => row.JobId));
            Assert.DoesNotContain(await CommittedAsync(server), row => row.JobId == running);

            // The same output again commits nothing: every job is a duplicate of itself.
            var (again, againOutput) = await IngestAsync(server, sacct, uploadId: "again");
            Assert.True(again == 0, againOutput);
            Assert.Equal(7L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = @Stream", new { Stream }));
        }
        finally
        {
            await Cluster.RunAsync("scancel", running, timedOut, cancelled);
        }
    }

    [Fact]
    public async Task A_suspended_and_resumed_job_is_metered_for_the_time_it_ran_leaving_out_the_time_it_was_suspended()
    {
        string suspended = await Cluster.SubmitAsync("-A", SlurmCluster.Account, "--gres=gpu:a100:1", "--wrap", "sleep 4");
        await Cluster.WaitForStateAsync(suspended, "RUNNING");
        await Cluster.RunCheckedAsync("scontrol", "suspend", suspended);
        await Task.Delay(TimeSpan.FromSeconds(3));
        await Cluster.RunCheckedAsync("scontrol", "resume", suspended);
        await Cluster.WaitForEndAsync(suspended);
        string sacct = await Cluster.SacctAsync(suspended);
        SacctOutput.Line job = SacctOutput.Parse(sacct).Single(line => line.IsAllocation);

        // Real Slurm's own figures: the job really was suspended, and Elapsed + Suspended is its window.
        Assert.True(job.SuspendedTime >= TimeSpan.FromSeconds(2), sacct);
        Assert.InRange((job.EndUtc - job.StartUtc - job.ElapsedTime - job.SuspendedTime).Duration(), TimeSpan.Zero, TimeSpan.FromSeconds(1));

        await using TestServer server = await TestServer.StartAsync(postgres);
        var (exit, output) = await IngestAsync(server, sacct);

        Assert.True(exit == 0, output + "\n" + sacct);
        Assert.Equal([Expected(job) with { EndAt = job.StartUtc + job.ElapsedTime }], await CommittedAsync(server));
    }

    [Fact]
    public async Task A_job_holding_two_gpu_types_becomes_one_record_per_type()
    {
        string twoTypes = await Cluster.SubmitAsync("-A", SlurmCluster.Account, "--gres=gpu:a100:1,gpu:h100:1", "--wrap", "sleep 1");
        await Cluster.WaitForEndAsync(twoTypes);
        string sacct = await Cluster.SacctAsync(twoTypes);
        SacctOutput.Line job = SacctOutput.Parse(sacct).Single(line => line.IsAllocation);
        Assert.Equal([("a100", 1), ("h100", 1)], job.TypedGpus);

        await using TestServer server = await TestServer.StartAsync(postgres);
        var (exit, output) = await IngestAsync(server, sacct);

        Assert.True(exit == 0, output + "\n" + sacct);
        Assert.Equal(
            [new Row($"{twoTypes}/gpu:a100", "A100-SXM", 1, job.StartUtc, job.EndUtc), new Row($"{twoTypes}/gpu:h100", "H100-SXM", 1, job.StartUtc, job.EndUtc)],
            await CommittedAsync(server));
    }

    [Fact]
    public async Task A_requeued_jobs_earlier_run_is_metered_beside_its_final_run()
    {
        // The first run lasts until it is requeued, so the requeue cannot race its end; the run after it (SLURM_RESTART_COUNT set) is short.
        string requeued = await Cluster.SubmitAsync("-A", SlurmCluster.Account, "--gres=gpu:a100:1", "--wrap", "if [ -n \"$SLURM_RESTART_COUNT\" ]; then sleep 2; else sleep 60; fi");
        await Cluster.WaitForStateAsync(requeued, "RUNNING");
        await Task.Delay(TimeSpan.FromSeconds(2));
        // Slurm holds a requeued batch job back for a while (its BeginTime about two minutes
        // later) before it may start again; releasing it at once keeps the test short. The
        // release is refused while the old run is still completing, so it is repeated until the
        // job is no longer pending.
        await Cluster.RequeueAsync(requeued);
        await Cluster.WaitForEndAsync(requeued);
        await Cluster.WaitForStateAsync(requeued, "COMPLETED", "REQUEUED");
        string sacct = await Cluster.SacctAsync(requeued);
        List<SacctOutput.Line> runs = SacctOutput.Parse(sacct).Where(line => line.IsAllocation).ToList();
        Assert.Equal(["COMPLETED", "REQUEUED"], runs.Select(run => run.State).Order(StringComparer.Ordinal));

        await using TestServer server = await TestServer.StartAsync(postgres);
        var (exit, output) = await IngestAsync(server, sacct);

        Assert.True(exit == 0, output + "\n" + sacct);
        Assert.Equal(runs.Select(Expected).OrderBy(row => row.StartAt), (await CommittedAsync(server)).OrderBy(row => row.StartAt));
    }

    [Fact]
    public async Task With_meter_steps_an_sbatch_job_without_srun_steps_is_metered_from_its_batch_step_and_one_with_srun_steps_from_its_steps_alone()
    {
        string batchOnly = await Cluster.SubmitAsync("-A", SlurmCluster.Account, "--gres=gpu:a100:1", "--wrap", "sleep 1");
        string withStep = await Cluster.SubmitAsync("-A", SlurmCluster.Account, "--gres=gpu:h100:1", "--wrap", "srun --gres=gpu:h100:1 sleep 1");
        await Cluster.WaitForEndAsync(batchOnly, withStep);
        string sacct = await Cluster.SacctAsync(batchOnly, withStep);
        List<SacctOutput.Line> lines = SacctOutput.Parse(sacct);
        SacctOutput.Line batch = lines.Single(line => line.JobId == batchOnly + ".batch");
        SacctOutput.Line step = lines.Single(line => line.JobId == withStep + ".0");

        // The parser decides a .batch line by the lines after it; real sacct lists a job's .batch
        // before its numbered steps, which is what that relies on.
        List<string> withStepLines = lines.Where(line => line.JobId.StartsWith(withStep + ".", StringComparison.Ordinal)).Select(line => line.JobId).ToList();
        Assert.True(withStepLines.IndexOf(withStep + ".batch") < withStepLines.IndexOf(withStep + ".0"), sacct);

        await using TestServer server = await TestServer.StartAsync(postgres);
        var (exit, output) = await IngestAsync(server, sacct, meterSteps: true);

        Assert.True(exit == 0, output + "\n" + sacct);
        Assert.Equal([Expected(batch), Expected(step)], await CommittedAsync(server));
    }

    internal sealed record Row(string JobId, string DeviceModel, int DeviceCount, DateTime StartAt, DateTime EndAt);

    /// <summary>The record a finished allocation line must become: its one typed GPU entry mapped to the catalog.</summary>
    internal static Row Expected(SacctOutput.Line line)
    {
        (string type, int count) = Assert.Single(line.TypedGpus);
        return new Row(line.JobId, type == "a100" ? "A100-SXM" : "H100-SXM", count, line.StartUtc, line.EndUtc);
    }

    internal static async Task<List<Row>> CommittedAsync(TestServer server, string stream = Stream) =>
        await server.QueryAsync<Row>(
            "SELECT job_id AS JobId, device_model AS DeviceModel, device_count AS DeviceCount, start_at AS StartAt, end_at AS EndAt FROM usage_records WHERE stream_id = @stream ORDER BY job_id, start_at, device_model",
            new { stream });

    /// <summary>The mapping of this cluster's accounts and GRES types, in the cluster's zone (+480).</summary>
    internal static string WriteMapping(bool meterSteps = false)
    {
        string path = Path.Combine(Directory.CreateTempSubdirectory("metering-slurm-map-").FullName, "mapping.json");
        File.WriteAllText(path, $$"""
            {
              "accountHolders": { "{{SlurmCluster.Account}}": "9144030071526726XG", "{{SlurmCluster.OtherAccount}}": "91440300MA5G2XK3P1" },
              "gresModels": { "a100": "A100-SXM", "h100": "H100-SXM" },
              "site": "sz-test-slurm",
              "utcOffsetMinutes": 480,
              "meterSteps": {{(meterSteps ? "true" : "false")}}
            }
            """);
        return path;
    }

    private static async Task<(int ExitCode, string Output)> IngestAsync(TestServer server, string sacct, bool meterSteps = false, string? uploadId = null)
    {
        string file = Path.Combine(Directory.CreateTempSubdirectory("metering-sacct-").FullName, "sacct.txt");
        await File.WriteAllTextAsync(file, sacct);
        string[] id = uploadId is null ? [] : ["--upload-id", uploadId];
        return await CliProcess.RunAsAsync(server, TestServer.ProviderKey,
            ["ingest-file", file, "--stream", Stream, "--format", "sacct", "--mapping", WriteMapping(meterSteps), .. id]);
    }
}
