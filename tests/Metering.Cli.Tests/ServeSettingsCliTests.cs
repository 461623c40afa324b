using System.Text.Json;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Metering.Engine.Fixtures;
using Metering.Fixtures;
using Metering.Server.Fixtures;

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

    private static List<JsonElement> JsonLines(string output) =>
        [.. output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Where(line => line.StartsWith('{'))
            .Select(line => JsonDocument.Parse(line).RootElement.Clone())];
}
