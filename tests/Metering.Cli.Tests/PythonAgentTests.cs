using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json;
using Dapper;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;
using Npgsql;

namespace Metering.Cli.Tests;

/// <summary>
/// The Python agent (samples/python-agent), a client written from proto/ and its documents alone,
/// through the real server: what it streams is what the database holds, its own chain is the
/// server's, it resumes without sending anything twice, and it stops loudly with exit code 3 when
/// the server stands behind or apart from what it acknowledged.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class PythonAgentTests(PostgresFixture postgres)
{
    private const string Stream = "py-cluster";

    [Fact]
    public async Task The_agents_encoding_and_receipt_check_hold_to_the_worked_examples_of_the_documents()
    {
        await PythonAgent.RequireAsync();

        var (exit, output) = await CliProcess.RunAsync(new ProcessStartInfo(PythonAgent.Python, ["-m", "unittest", "discover", "-s", "tests", "-v"])
        {
            WorkingDirectory = PythonAgent.Folder,
        });

        Assert.True(exit == 0, output);
        Assert.Contains("Ran 11 tests", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_agent_streams_a_file_that_the_database_then_holds_as_sent_under_the_head_it_computed()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string state = NewFolder();

        PythonAgent.Run run = await PythonAgent.RunAsync(server, TestServer.ProviderKey, state, "stream", "--stream", Stream, "--input", Input(120), "--batch-records", "25");

        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Equal((120, 0, 120, 0), (run.Summary.GetProperty("committed_sequence").GetInt32(), run.Summary.GetProperty("resumed_after").GetInt32(),
            run.Summary.GetProperty("sent").GetInt32(), run.Summary.GetProperty("replayed").GetInt32()));
        Assert.Equal(Enumerable.Range(1, 120).Select(n => Expected((ulong)n)), await StoredAsync(server));
        byte[] head = await server.ScalarAsync<byte[]>("SELECT chain_head FROM ingest_streams WHERE stream_id = @Stream", new { Stream });
        Assert.Equal(Convert.ToHexStringLower(head), run.Summary.GetProperty("chain_head").GetString());
        Assert.Equal(Convert.ToHexStringLower(head), StateOf(state).GetProperty("chain_head").GetString());

        // The receipts it kept are the documented file, which the .NET CLI checks against the database.
        string receipts = Path.Combine(state, "receipts.jsonl");
        Assert.Equal(5, File.ReadAllLines(receipts).Length);
        var (checkExit, checkOutput) = await CliProcess.RunAsAsync(server, TestServer.ProviderKey, "audit", "check-receipts", receipts);
        Assert.True(checkExit == 0, checkOutput);
    }

    [Fact]
    public async Task The_agent_given_two_servers_streams_through_the_one_that_answers_when_the_other_is_down()
    {
        await using TestServer down = await TestServer.StartAsync(postgres);
        await using TestServer up = await TestServer.StartAsync(postgres, database: down.ConnectionString);
        await down.StopAsync();
        string servers = $"{down.Address.ToString().TrimEnd('/')},{up.Address.ToString().TrimEnd('/')}";

        PythonAgent.Run run = await PythonAgent.RunAsync(up, TestServer.ProviderKey, NewFolder(), "stream", "--stream", Stream, "--input", Input(60), "--batch-records", "20",
            "--server", servers);

        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Equal(60, run.Summary.GetProperty("committed_sequence").GetInt32());
        Assert.Equal(Enumerable.Range(1, 60).Select(n => Expected((ulong)n)), await StoredAsync(up));

        // Two schemes in one list are a usage error, before anything is sent.
        PythonAgent.Run mixed = await PythonAgent.RunAsync(up, TestServer.ProviderKey, NewFolder(), "stream", "--stream", Stream, "--input", Input(1),
            "--server", $"http://127.0.0.1:9,{up.Address.ToString().TrimEnd('/')}");
        Assert.True(mixed.ExitCode == 2, mixed.ToString());
        Assert.Contains("mixes http:// and https://", mixed.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_agent_killed_mid_stream_resumes_at_the_servers_mark_and_sends_nothing_twice()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await PythonAgent.RequireAsync();
        string state = NewFolder();
        string input = Input(200);

        // Killed once its log says the third batch was acknowledged: no chance to save anything more.
        ProcessStartInfo start = PythonAgent.Start(server, TestServer.ProviderKey, state,
            "stream", "--stream", Stream, "--input", input, "--batch-records", "10", "--batches-in-flight", "1", "--pause-ms", "200", "--verbose");
        using (Process paced = new() { StartInfo = start })
        {
            var log = new System.Collections.Concurrent.ConcurrentQueue<string>();
            var third = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            paced.ErrorDataReceived += (_, line) =>
            {
                log.Enqueue(line.Data ?? "");
                if (line.Data?.Contains($"acknowledged {Stream} 21..30,", StringComparison.Ordinal) == true)
                {
                    third.TrySetResult();
                }
            };
            paced.Start();
            paced.BeginErrorReadLine();
            Task finished = await Task.WhenAny(third.Task, paced.WaitForExitAsync(), Task.Delay(TimeSpan.FromSeconds(45)));
            Assert.True(finished == third.Task, "the paced agent did not acknowledge 21..30 first:\n" + string.Join('\n', log));

            paced.Kill(entireProcessTree: true);
            await paced.WaitForExitAsync();
        }

        long acknowledged = StateOf(state).GetProperty("committed_sequence").GetInt64();
        long committed = await server.ScalarAsync<long>("SELECT committed_sequence FROM ingest_streams WHERE stream_id = @Stream", new { Stream });
        Assert.InRange(committed, acknowledged, 199);

        PythonAgent.Run run = await PythonAgent.RunAsync(server, TestServer.ProviderKey, state, "stream", "--stream", Stream, "--input", input, "--batch-records", "10");

        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Equal((committed, 200 - committed, 0L), (run.Summary.GetProperty("resumed_after").GetInt64(), run.Summary.GetProperty("sent").GetInt64(),
            run.Summary.GetProperty("replayed").GetInt64()));
        Assert.Equal(Enumerable.Range(1, 200).Select(n => Expected((ulong)n)), await StoredAsync(server));
    }

    [Fact]
    public async Task An_agent_whose_server_restarts_mid_stream_reconnects_and_finishes_without_a_replay()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await PythonAgent.RequireAsync();
        string state = NewFolder();
        using Process paced = new()
        {
            StartInfo = PythonAgent.Start(server, TestServer.ProviderKey, state,
                "stream", "--stream", Stream, "--input", Input(200), "--batch-records", "10", "--batches-in-flight", "1", "--pause-ms", "100", "--verbose"),
        };
        var log = new System.Collections.Concurrent.ConcurrentQueue<string>();
        var third = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        paced.ErrorDataReceived += (_, line) =>
        {
            log.Enqueue(line.Data ?? "");
            if (line.Data?.Contains($"acknowledged {Stream} 21..30,", StringComparison.Ordinal) == true)
            {
                third.TrySetResult();
            }
        };
        paced.Start();
        paced.BeginErrorReadLine();
        Task<string> summary = paced.StandardOutput.ReadToEndAsync();
        await third.Task.WaitAsync(TimeSpan.FromSeconds(45));

        await server.RestartAsync();
        await paced.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60));

        string all = string.Join('\n', log);
        Assert.True(paced.ExitCode == 0, all);
        Assert.Contains("reconnecting in", all, StringComparison.Ordinal);
        Assert.Equal(0, JsonDocument.Parse(await summary).RootElement.GetProperty("replayed").GetInt32());
        Assert.Equal(Enumerable.Range(1, 200).Select(n => Expected((ulong)n)), await StoredAsync(server));
    }

    [Fact]
    public async Task The_agent_answers_help_usage_errors_and_a_missing_server_with_the_readmes_exit_codes()
    {
        await PythonAgent.RequireAsync();
        string agent = Path.Combine(PythonAgent.Folder, "metering-agent");

        var (helpExit, help) = await CliProcess.RunAsync(new ProcessStartInfo(PythonAgent.Python, [agent, "stream", "--help"]));
        var (usageExit, usage) = await CliProcess.RunAsync(new ProcessStartInfo(PythonAgent.Python, [agent, "stream", "--stream", "x", "--generate", "many"]));
        var (noServerExit, noServer) = await CliProcess.RunAsync(new ProcessStartInfo(PythonAgent.Python,
            [agent, "stream", "--server", "https://127.0.0.1:9", "--ca", TestCertificates.CaPemPath, "--api-key", "k", "--provider", TestRecords.Provider,
             "--stream", Stream, "--generate", "1", "--from", "2026-11-20T00:00:00Z", "--holder", TestRecords.Holder, "--state-dir", NewFolder()]));

        Assert.True(helpExit == 0, help);
        Assert.Contains("4  refused by the server (refused: STATUS REASON: message)", help, StringComparison.Ordinal);
        Assert.True(usageExit == 2, usage);
        Assert.Contains("argument --generate: a whole number above 0, not 'many'", usage, StringComparison.Ordinal);
        Assert.Contains("Try 'metering-agent stream --help'.", usage, StringComparison.Ordinal);
        Assert.DoesNotContain("--batches-in-flight", usage, StringComparison.Ordinal);
        Assert.True(noServerExit == 5, noServer);
        Assert.Single(noServer.Trim().Split('\n'));
    }

    [Fact]
    public async Task An_agent_whose_server_lost_acknowledged_records_stops_loudly_and_sends_nothing()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string state = NewFolder();
        PythonAgent.Run first = await PythonAgent.RunAsync(server, TestServer.ProviderKey, state, "stream", "--stream", Stream, "--input", Input(60), "--batch-records", "20");
        Assert.True(first.ExitCode == 0, first.ToString());

        // The server restored from a backup taken at sequence 40: as the superuser, with the guards off.
        await server.ExecuteAsync("""
            SET session_replication_role = replica;
            DELETE FROM usage_records WHERE stream_id = @Stream AND sequence > 40;
            UPDATE ingest_streams SET committed_sequence = 40,
                   chain_head = (SELECT chain_hash FROM usage_records WHERE stream_id = @Stream AND sequence = 40) WHERE stream_id = @Stream;
            RESET session_replication_role;
            """, new { Stream });

        PythonAgent.Run run = await PythonAgent.RunAsync(server, TestServer.ProviderKey, state, "stream", "--stream", Stream, "--input", Input(80), "--batch-records", "20");

        Assert.True(run.ExitCode == 3, run.ToString());
        Assert.Contains("EVIDENCE FAILURE", run.Error, StringComparison.Ordinal);
        Assert.Contains("committed mark is 40, behind 60", run.Error, StringComparison.Ordinal);
        Assert.Equal(40L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = @Stream", new { Stream }));
    }

    [Fact]
    public async Task An_agent_stops_loudly_when_an_insider_rewrote_a_record_and_recomputed_every_hash_after_it()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string state = NewFolder();
        PythonAgent.Run first = await PythonAgent.RunAsync(server, TestServer.ProviderKey, state, "stream", "--stream", Stream, "--input", Input(60), "--batch-records", "20");
        Assert.True(first.ExitCode == 0, first.ToString());

        byte[] forgedHead = await InsiderRewrite.RewriteChainAsync(server.ConnectionString, TestRecords.Provider, Stream, 10, 60, Sent, record => record.DeviceCount = 4);
        PythonAgent.Run run = await PythonAgent.RunAsync(server, TestServer.ProviderKey, state, "stream", "--stream", Stream, "--input", Input(80), "--batch-records", "20");

        Assert.True(run.ExitCode == 3, run.ToString());
        Assert.Contains($"holds {Convert.ToHexStringLower(forgedHead)} at sequence 60", run.Error, StringComparison.Ordinal);
        Assert.Contains("the stream was rewritten", run.Error, StringComparison.Ordinal);
        Assert.Equal(60L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = @Stream", new { Stream }));
    }

    [Fact]
    public async Task An_agent_that_trusts_another_signing_key_rejects_the_servers_receipts()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string state = NewFolder();
        string foreignKey = Path.Combine(state, "foreign.pub.pem");
        using (var key = ECDsa.Create(ECCurve.NamedCurves.nistP256))
        {
            Directory.CreateDirectory(state);
            await File.WriteAllTextAsync(foreignKey, key.ExportSubjectPublicKeyInfoPem());
        }

        PythonAgent.Run run = await PythonAgent.RunAsync(server, TestServer.ProviderKey, state,
            "stream", "--stream", Stream, "--input", Input(20), "--batch-records", "10", "--batches-in-flight", "1", "--public-key", foreignKey);

        Assert.True(run.ExitCode == 3, run.ToString());
        Assert.Contains("which is not a trusted key", run.Error, StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(state, "state.json")), "a receipt that failed its check moved the state");
    }

    [Fact]
    public async Task Another_providers_key_is_refused_before_the_agent_sends_anything()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);

        PythonAgent.Run run = await PythonAgent.RunAsync(server, TestServer.OtherProviderKey, NewFolder(), "stream", "--stream", Stream, "--input", Input(10));

        Assert.True(run.ExitCode == 4, run.ToString());
        Assert.Contains("refused: PermissionDenied OTHER_PROVIDER", run.Error, StringComparison.Ordinal);
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM ingest_streams WHERE stream_id = @Stream", new { Stream }));
    }

    [Fact]
    public async Task Generated_records_carry_the_mean_sm_activity_dcgm_exporter_reports_for_their_gpus()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using RecordedExporter exporter = await RecordedExporter.StartAsync(_ => (200, RecordedExporter.Recorded()));

        PythonAgent.Run run = await PythonAgent.RunAsync(server, TestServer.ProviderKey, NewFolder(), "stream", "--stream", "py-dcgm", "--generate", "12",
            "--from", "2026-11-20T00:00:00+08:00", "--holder", TestRecords.Holder, "--dcgm-url", exporter.MetricsUrl, "--sm-samples", "2", "--sm-sample-seconds", "0");

        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Equal(2, exporter.Requests);
        // Eight devices: GPUs 0 to 7 of the recording, (125 + 200 + 0 + 313 + 8,734 + 9,123 + 8,000 + 9,501) / 8 = 4,499.5 → 4,500.
        Assert.Equal([4_500], await server.QueryAsync<int>("SELECT DISTINCT sm_active_bp FROM usage_records WHERE stream_id = 'py-dcgm'"));
        byte[] head = await server.ScalarAsync<byte[]>("SELECT chain_head FROM ingest_streams WHERE stream_id = 'py-dcgm'");
        Assert.Equal(Convert.ToHexStringLower(head), run.Summary.GetProperty("chain_head").GetString());

        await using RecordedExporter broken = await RecordedExporter.StartAsync(_ => (500, "dcgm: failed to collect metrics\n"));
        PythonAgent.Run failed = await PythonAgent.RunAsync(server, TestServer.ProviderKey, NewFolder(), "stream", "--stream", "py-dcgm-bad", "--generate", "12",
            "--from", "2026-11-20T00:00:00+08:00", "--holder", TestRecords.Holder, "--dcgm-url", broken.MetricsUrl, "--sm-sample-seconds", "0");
        Assert.True(failed.ExitCode == 5, failed.ToString());
        Assert.Contains("answered HTTP 500", failed.Error, StringComparison.Ordinal);
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = 'py-dcgm-bad'"));
    }

    [Fact]
    public async Task The_agent_uploads_a_sacct_file_whose_good_lines_commit_once_however_often_it_runs()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string state = NewFolder();
        string[] arguments = ["upload", Sample("sacct-2026-11-20.txt"), "--stream", "py-slurm", "--format", "sacct", "--mapping", Sample("mapping.json")];

        PythonAgent.Run first = await PythonAgent.RunAsync(server, TestServer.ProviderKey, state, arguments);
        PythonAgent.Run again = await PythonAgent.RunAsync(server, TestServer.ProviderKey, state, arguments);

        // Exit 7, as `metering ingest-file`: the good lines committed and the server refused some.
        Assert.True(first.ExitCode == 7, first.ToString());
        Assert.Contains(": UNMAPPED_ACCOUNT: ", first.Output, StringComparison.Ordinal);
        Assert.Contains(": ELAPSED_MISMATCH: ", first.Output, StringComparison.Ordinal);
        Assert.True(again.ExitCode == 7, again.ToString());
        Assert.Equal((5, true), (first.Summary.GetProperty("records").GetInt32(), first.Summary.GetProperty("complete").GetBoolean()));
        var jobs = await server.QueryAsync<string>("SELECT job_id FROM usage_records WHERE stream_id = 'py-slurm' ORDER BY sequence");
        Assert.Equal(5, jobs.Count);
        Assert.Equal(jobs.Count, jobs.Distinct().Count());
        Assert.All(jobs, job => Assert.DoesNotContain('.', job)); // allocations are metered, not steps
        Assert.Equal(5, StateOf(state, "py-slurm").GetProperty("committed_sequence").GetInt32());
    }

    [Fact]
    public async Task A_malformed_input_line_is_a_usage_error_named_by_its_line_before_anything_is_sent()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string input = Input(3);
        await File.AppendAllTextAsync(input, """{"job_id":"j","holder_code":"9144030071526726XG","device_model":"H100-SXM","device_count":1,"start":"2026-11-20T08:00:00","end":"2026-11-20T09:00:00+08:00","site":"s"}""" + "\n");

        PythonAgent.Run run = await PythonAgent.RunAsync(server, TestServer.ProviderKey, NewFolder(), "stream", "--stream", Stream, "--input", input);

        Assert.True(run.ExitCode == 2, run.ToString());
        Assert.Contains($"{input}:4: '2026-11-20T08:00:00' has no zone", run.Error, StringComparison.Ordinal);
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM ingest_streams WHERE stream_id = @Stream", new { Stream }));
    }

    /// <summary>
    /// The records the tests send: the fixture's, with every third one a half share without UUIDs or
    /// energy, and every fourth one carrying an SM activity (0 at every twentieth), which the agent
    /// hashes as the optional field of canonical-encoding.md.
    /// </summary>
    private static UsageRecord Sent(ulong sequence)
    {
        UsageRecord record = TestRecords.Valid(sequence);
        if (sequence % 3 == 0)
        {
            record.ShareDenominator = 2;
            record.DeviceUuids.Clear();
            record.ClearEnergyMwh();
        }

        if (sequence % 4 == 0)
        {
            record.SmActiveBp = sequence % 20 == 0 ? 0 : (uint)(sequence * 613 % 10_001);
        }

        return record;
    }

    /// <summary>Records 1..count as JSON Lines in the schema of rawlog-formats.md, times in UTC or in Shanghai time by turns.</summary>
    private static string Input(int count)
    {
        string path = Path.Combine(NewFolder(), "records.jsonl");
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        using var writer = new StreamWriter(path);
        for (ulong sequence = 1; sequence <= (ulong)count; sequence++)
        {
            UsageRecord record = Sent(sequence);
            TimeSpan zone = sequence % 2 == 0 ? TimeSpan.FromHours(8) : TimeSpan.Zero;
            string Time(long ms) => DateTimeOffset.FromUnixTimeMilliseconds(ms).ToOffset(zone).ToString("yyyy-MM-dd'T'HH:mm:ss.fffzzz", System.Globalization.CultureInfo.InvariantCulture);
            var line = new Dictionary<string, object>
            {
                ["job_id"] = record.JobId, ["holder_code"] = record.HolderCode, ["device_model"] = record.DeviceModel, ["device_count"] = record.DeviceCount,
                ["share_numerator"] = record.ShareNumerator, ["share_denominator"] = record.ShareDenominator,
                ["start"] = Time(record.StartUnixMs), ["end"] = Time(record.EndUnixMs), ["site"] = record.Site, ["device_uuids"] = record.DeviceUuids.ToArray(),
            };
            if (record.HasEnergyMwh)
            {
                line["energy_mwh"] = record.EnergyMwh;
            }

            if (record.HasSmActiveBp)
            {
                line["sm_active_bp"] = record.SmActiveBp;
            }

            writer.WriteLine(JsonSerializer.Serialize(line));
        }

        return path;
    }

    private static string Expected(ulong sequence)
    {
        UsageRecord r = Sent(sequence);
        return $"{r.Sequence}|{r.JobId}|{r.HolderCode}|{r.DeviceModel}|{r.DeviceCount}|{r.ShareNumerator}/{r.ShareDenominator}|{r.StartUnixMs}|{r.EndUnixMs}|{r.Site}|"
            + $"{string.Join(',', r.DeviceUuids)}|{(r.HasEnergyMwh ? r.EnergyMwh.ToString(System.Globalization.CultureInfo.InvariantCulture) : "-")}"
            + $"|{(r.HasSmActiveBp ? r.SmActiveBp.ToString(System.Globalization.CultureInfo.InvariantCulture) : "-")}";
    }

    private static async Task<List<string>> StoredAsync(TestServer server)
    {
        await using var connection = new NpgsqlConnection(server.ConnectionString);
        return [.. await connection.QueryAsync<string>("""
            SELECT concat_ws('|', sequence, job_id, holder_code, device_model, device_count, share_numerator || '/' || share_denominator,
                   (extract(epoch FROM start_at) * 1000)::bigint, (extract(epoch FROM end_at) * 1000)::bigint, site,
                   coalesce(array_to_string(device_uuids, ','), ''), coalesce(energy_mwh::text, '-'), coalesce(sm_active_bp::text, '-'))
            FROM usage_records WHERE provider_id = @Provider AND stream_id = @Stream ORDER BY sequence
            """, new { TestRecords.Provider, Stream })];
    }

    private static JsonElement StateOf(string folder, string stream = Stream) =>
        JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "state.json"))).RootElement.GetProperty("streams").GetProperty($"{TestRecords.Provider}/{stream}");


    private static string NewFolder() => Path.Combine(Directory.CreateTempSubdirectory("metering-py-").FullName, "state");

    private static string Sample(string name) => Path.Combine(TestRecords.RepositoryRoot(), "samples", "RawLogs", name);
}
