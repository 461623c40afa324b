using System.Diagnostics;
using System.Text.Json;
using Dapper;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Metering.Engine.Fixtures;
using Metering.Fixtures;
using Metering.Protocol.V1;
using Metering.Server.Fixtures;
using Npgsql;

namespace Metering.Cli.Tests;

/// <summary>A setting given to `serve` through the environment reaches the running server, not only `config show`.</summary>
[Collection(PostgresCollection.Name)]
public sealed class ServeSettingsCliTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Serve_applies_ingest_message_bytes_max_from_the_environment_to_every_call()
    {
        string database = PostgresFixture.AsRuntimeRole(await postgres.CreateDatabaseAsync());
        int port = ServerProcess.FreePort();
        var address = new Uri($"http://127.0.0.1:{port}");

        await using ServerProcess server = await ServerProcess.StartAsync(address,
            new Dictionary<string, string> { ["METERING__Ingest__MessageBytesMax"] = "65536" },
            "serve", "--connection", database, "--listen", address.ToString(), "--signing-key", ServerProcess.SigningKeyPath);
        using GrpcChannel channel = GrpcChannel.ForAddress(server.Address);
        var health = new Health.HealthClient(channel);

        // Under the configured 64 KiB the call is read and answered (an unknown service name is NOT_FOUND);
        // over it gRPC refuses the message before any handler, which the 16 MiB default would have read.
        RpcException small = await Assert.ThrowsAsync<RpcException>(async () => await health.CheckAsync(new HealthCheckRequest { Service = new string('x', 60_000) }));
        Assert.Equal(StatusCode.NotFound, small.StatusCode);
        RpcException large = await Assert.ThrowsAsync<RpcException>(async () => await health.CheckAsync(new HealthCheckRequest { Service = new string('x', 70_000) }));
        Assert.Equal(StatusCode.ResourceExhausted, large.StatusCode);
    }

    [Fact]
    public async Task Serve_applies_settlement_and_anomaly_settings_from_the_command_line_to_the_runs_its_clients_start()
    {
        string database = PostgresFixture.AsRuntimeRole(await postgres.CreateDatabaseAsync());
        int port = ServerProcess.FreePort();
        var address = new Uri($"http://127.0.0.1:{port}");

        await using ServerProcess server = await ServerProcess.StartAsync(address, new Dictionary<string, string>(),
            "serve", "--connection", database, "--listen", address.ToString(), "--signing-key", ServerProcess.SigningKeyPath,
            "--set", "Settlement:PauseBeforeCommit=00:00:01", "--set", "Anomalies:AnomaliesPerKindMax=7");
        string url = address.ToString().TrimEnd('/');

        // The drill pause is off by default; set, the settlement run the client starts waits and says so.
        var (settleExit, settled) = await CliProcess.RunAsync("settle", "--day", "2026-11-01", "--allow-empty", "--server", url, "--api-key", TestServer.SettlementKey);
        Assert.True(settleExit == 0, settled);
        Assert.Contains("pausing 1 s before commit (fault drill)", settled, StringComparison.Ordinal);

        // The detectors run with the operator's cap (500 by default), which the response states.
        var (anomaliesExit, anomalies) = await CliProcess.RunAsync("audit", "anomalies", "--provider", TestRecords.Provider, "--from", "2026-11-01", "--to", "2026-11-01",
            "--output", "json", "--server", url, "--api-key", TestServer.AuditorKey);
        Assert.True(anomaliesExit == 6, anomalies); // No records that day: nothing to judge, and the response still comes.
        string json = anomalies[anomalies.IndexOf('{', StringComparison.Ordinal)..(anomalies.LastIndexOf('}') + 1)];
        using JsonDocument response = JsonDocument.Parse(json);
        Assert.Equal(7, response.RootElement.GetProperty("anomaliesPerKindMax").GetInt32());
    }

    [Fact]
    public async Task A_connection_taking_over_a_stream_whose_holder_is_stuck_in_a_commit_waits_the_configured_takeover_wait_not_30_s()
    {
        string owner = await postgres.CreateDatabaseAsync();
        int port = ServerProcess.FreePort();
        var address = new Uri($"http://127.0.0.1:{port}");
        await using ServerProcess server = await ServerProcess.StartAsync(address, new Dictionary<string, string>(),
            "serve", "--connection", PostgresFixture.AsRuntimeRole(owner), "--listen", address.ToString(), "--signing-key", ServerProcess.SigningKeyPath,
            "--set", "Ingest:TakeoverWaitMax=00:00:01.500");
        using GrpcChannel channel = GrpcChannel.ForAddress(server.Address);
        var client = new IngestService.IngestServiceClient(channel);
        await using IngestCall holder = await IngestCall.OpenAsync(client, "takeover-wait");

        // The holder's commit waits on a lock the test holds, and a commit once started runs to its end: the holder cannot let go.
        await using var locker = new NpgsqlConnection(owner);
        await locker.OpenAsync();
        await using NpgsqlTransaction locked = await locker.BeginTransactionAsync();
        await using (var lockRecords = new NpgsqlCommand("LOCK TABLE usage_records IN ACCESS EXCLUSIVE MODE", locker, locked))
        {
            await lockRecords.ExecuteNonQueryAsync();
        }

        var batch = new UsageBatch();
        batch.Records.Add(TestRecords.Range(1, 3));
        await holder.WriteRawAsync(new IngestRequest { Batch = batch });
        await WaitForLockWaiterAsync(owner);

        var waited = Stopwatch.StartNew();
        RpcException refused = await IngestCall.OpenRefusedAsync(client, "takeover-wait");
        waited.Stop();
        Assert.Equal(StatusCode.Unavailable, refused.StatusCode);
        Assert.Contains("did not let go within 1500 ms", refused.Status.Detail, StringComparison.Ordinal);
        Assert.InRange(waited.Elapsed, TimeSpan.FromSeconds(1.4), TimeSpan.FromSeconds(15));

        // Once the lock goes the holder's commit ends, whole or not at all; whether the holder
        // still hears its acknowledgement depends on timing (a holder told to go learns where the
        // stream stands from the next open, as every client resumes). Either way the next opener
        // resumes exactly after what is stored, and nothing acknowledged is lost.
        await locked.RollbackAsync();
        ulong acknowledged = 0;
        try
        {
            IngestResponse outcome = await holder.ReadAsync();
            Assert.Equal(IngestResponse.KindOneofCase.Ack, outcome.KindCase);
            acknowledged = outcome.Ack.CommittedSequence;
            Assert.Equal(3UL, acknowledged);
        }
        catch (RpcException)
        {
        }

        var reopened = Stopwatch.StartNew();
        await using IngestCall next = await IngestCall.OpenAsync(client, "takeover-wait");
        ulong committed = next.Opened.CommittedSequence;
        Assert.True(committed is 0 or 3, $"the stream resumes after {committed}, neither none nor the whole batch");
        Assert.True(committed >= acknowledged, $"acknowledged {acknowledged} but the stream resumes after {committed}");
        await using (var count = new NpgsqlCommand("SELECT count(*) FROM usage_records WHERE stream_id = 'takeover-wait'", locker))
        {
            Assert.Equal((long)committed, (long)(await count.ExecuteScalarAsync())!);
        }

        Assert.True(reopened.Elapsed < TimeSpan.FromSeconds(15), $"the reopen took {reopened.Elapsed}");
    }

    [Fact]
    public async Task Serve_serves_metrics_on_the_address_its_settings_file_names_and_the_environment_overrides_the_file()
    {
        string database = PostgresFixture.AsRuntimeRole(await postgres.CreateDatabaseAsync());
        int port = ServerProcess.FreePort();
        int metricsPort = ServerProcess.FreePort();
        var address = new Uri($"http://127.0.0.1:{port}");
        string folder = Directory.CreateTempSubdirectory("metering-telemetry-").FullName;
        string file = Path.Combine(folder, "metering.json");
        await File.WriteAllTextAsync(file, $$$"""{"Telemetry": {"MetricsListen": "http://127.0.0.1:{{{metricsPort}}}"}}""");

        await using (ServerProcess server = await ServerProcess.StartAsync(address, new Dictionary<string, string>(),
            "serve", "--connection", database, "--listen", address.ToString(), "--signing-key", ServerProcess.SigningKeyPath, "--config", file))
        {
            using GrpcChannel channel = GrpcChannel.ForAddress(server.Address);
            // A call with a key counts a key look-up, so the scrape has a series of the engine's to show.
            await new AccessService.AccessServiceClient(channel).ListKeysAsync(new ListKeysRequest(), TestServer.Bearer(TestServer.OperatorKey));
            using var http = new HttpClient();
            string scrape = await http.GetStringAsync(new Uri($"http://127.0.0.1:{metricsPort}/metrics"));
            Assert.Contains("metering_", scrape, StringComparison.Ordinal);
            Assert.Contains(server.Output, line => line.Contains($"Serving Prometheus metrics on http://127.0.0.1:{metricsPort}/metrics", StringComparison.Ordinal));
        }

        // The environment wins over the file, and `config show` says where each value came from.
        var (exit, shown) = await CliProcess.RunWithEnvironmentAsync(
            new Dictionary<string, string> { ["METERING__Telemetry__MetricsListen"] = "http://127.0.0.1:9465", ["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf" },
            "config", "show", "--config", file, "--output", "json");
        Assert.True(exit == 0, shown);
        JsonElement[] settings = [.. JsonDocument.Parse(shown).RootElement.EnumerateArray()];
        JsonElement listen = settings.Single(s => s.GetProperty("key").GetString() == "Telemetry:MetricsListen");
        Assert.Equal("http://127.0.0.1:9465", listen.GetProperty("value").GetString());
        Assert.Equal("env METERING__Telemetry__MetricsListen", listen.GetProperty("source").GetString());
        JsonElement protocol = settings.Single(s => s.GetProperty("key").GetString() == "Telemetry:OtlpProtocol");
        Assert.Equal("http/protobuf", protocol.GetProperty("value").GetString());
        Assert.Equal("env OTEL_EXPORTER_OTLP_PROTOCOL", protocol.GetProperty("source").GetString());
    }

    [Theory]
    [InlineData("METERING__Telemetry__MetricsListen", "http://0.0.0.0:9464", "setting Telemetry:MetricsListen = 'http://0.0.0.0:9464' (from env METERING__Telemetry__MetricsListen) is refused")]
    [InlineData("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift", "setting Telemetry:OtlpProtocol = 'thrift' (from env OTEL_EXPORTER_OTLP_PROTOCOL) is refused: Telemetry setting OtlpProtocol must be grpc or http/protobuf")]
    [InlineData("METERING__Ingest__TakeoverWaitMax", "00:00:00.050", "setting Ingest:TakeoverWaitMax = '00:00:00.050' (from env METERING__Ingest__TakeoverWaitMax) is refused: Ingest limit TakeoverWaitMax must be between 100 ms and 10 minutes")]
    public async Task Serve_refuses_a_telemetry_or_takeover_setting_out_of_range_with_exit_2_naming_it_and_its_source_before_it_starts(string variable, string value, string message)
    {
        string dataFolder = Path.Combine(Path.GetTempPath(), $"metering-settings-never-{Guid.NewGuid():N}");
        var (exit, output) = await CliProcess.RunWithEnvironmentAsync(new Dictionary<string, string> { [variable] = value }, "serve", "--data-dir", dataFolder);
        Assert.Equal(2, exit);
        Assert.Contains("error: " + message, output, StringComparison.Ordinal);
        Assert.False(Directory.Exists(dataFolder));
    }

    [Theory]
    [InlineData("Settlement:DaySegments=9", "setting Settlement:DaySegments = '9' (from command line) is refused: Settlement setting DaySegments must be between 1 and 8")]
    [InlineData("Anomalies:Silence=00:00:30", "setting Anomalies:Silence = '00:00:30' (from command line) is refused: Detector setting Silence must be between 1 minute and 31 days")]
    public async Task Serve_refuses_a_settlement_or_anomaly_setting_out_of_range_with_exit_2_naming_it_before_it_starts(string set, string message)
    {
        string dataFolder = Path.Combine(Path.GetTempPath(), $"metering-settings-never-{Guid.NewGuid():N}");
        var (exit, output) = await CliProcess.RunAsync("serve", "--data-dir", dataFolder, "--set", set);
        Assert.Equal(2, exit);
        Assert.Contains("error: " + message, output, StringComparison.Ordinal);
        Assert.False(Directory.Exists(dataFolder));
    }

    [Fact]
    public async Task Db_migrate_logs_information_by_default_and_only_warnings_with_log_level_warning()
    {
        string database = await postgres.CreateDatabaseAsync();
        var (defaultExit, defaultOutput) = await CliProcess.RunAsync("db", "migrate", "--connection", database, "--log-format", "json");
        var (quietExit, quietOutput) = await CliProcess.RunAsync("db", "migrate", "--connection", database, "--log-format", "json", "--log-level", "Warning");

        Assert.True(defaultExit == 0, defaultOutput);
        Assert.True(quietExit == 0, quietOutput);
        // Every run grants the runtime role its privileges again (event 1012, Information).
        Assert.Contains(JsonLines(defaultOutput), line => line.GetProperty("EventId").GetInt32() == 1012 && line.GetProperty("LogLevel").GetString() == "Information");
        Assert.DoesNotContain(JsonLines(quietOutput), line => line.GetProperty("LogLevel").GetString() is "Information" or "Debug" or "Trace");
        var (badExit, bad) = await CliProcess.RunAsync("db", "migrate", "--connection", database, "--log-level", "Chatty");
        Assert.Equal(2, badExit);
        Assert.Contains("Chatty", bad, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Db_migrate_creates_the_monthly_partitions_it_is_asked_for_and_refuses_a_reach_out_of_range_changing_nothing()
    {
        string database = await postgres.CreateDatabaseAsync();
        await using var connection = new NpgsqlConnection(database);
        const string Partitions = "SELECT count(*) FROM pg_inherits WHERE inhparent = 'usage_records'::regclass";
        long before = await connection.ExecuteScalarAsync<long>(Partitions);

        var (badExit, bad) = await CliProcess.RunAsync("db", "migrate", "--connection", database, "--partition-months-ahead", "121");
        long afterRefusal = await connection.ExecuteScalarAsync<long>(Partitions);
        // Thirteen months ahead of this machine's clock: at least one month past the migrations' 2027-12 while it reads 2026-12 or later.
        DateTime now = DateTime.UtcNow;
        string farthest = $"usage_records_{new DateTime(now.Year, now.Month, 1).AddMonths(13):yyyy_MM}";
        var (exit, output) = await CliProcess.RunAsync("db", "migrate", "--connection", database, "--partition-months-ahead", "13");

        Assert.Equal(2, badExit);
        Assert.Contains("--partition-months-ahead must be 0 to 120", bad, StringComparison.Ordinal);
        Assert.Equal(before, afterRefusal);
        Assert.True(exit == 0, output);
        Assert.Contains("monthly partition(s)", output, StringComparison.Ordinal);
        Assert.Equal(farthest, await connection.ExecuteScalarAsync<string>("SELECT to_regclass(@farthest)::text", new { farthest }));
    }

    /// <summary>Waits until a session of the database waits on a lock: the holder's commit has reached the locked table.</summary>
    private static async Task WaitForLockWaiterAsync(string connectionString)
    {
        await using var connection = new NpgsqlConnection(connectionString);
        await connection.OpenAsync();
        await using var waiters = new NpgsqlCommand("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'", connection);
        var deadline = Stopwatch.StartNew();
        while ((long)(await waiters.ExecuteScalarAsync())! == 0)
        {
            Assert.True(deadline.Elapsed < TimeSpan.FromSeconds(30), "the holder's commit never reached the locked table");
            await Task.Delay(50);
        }
    }

    private static List<JsonElement> JsonLines(string output) =>
        [.. output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Where(line => line.StartsWith('{'))
            .Select(line => JsonDocument.Parse(line).RootElement.Clone())];
}
