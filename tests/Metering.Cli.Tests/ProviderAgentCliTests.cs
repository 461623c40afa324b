using System.Diagnostics;
using Dapper;
using Metering.Engine.Registry;
using Metering.Engine.Sandbox;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;
using Npgsql;

namespace Metering.Cli.Tests;

/// <summary>
/// The sample agent as a provider runs it. Its default day used to be yesterday by the machine's
/// clock, which in a sandbox whose clock was moved past an admission is a day before it.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class ProviderAgentCliTests(PostgresFixture postgres)
{
    private const long Day = 86_400_000;

    [Fact]
    public async Task The_agent_streams_yesterday_by_the_sandbox_clock_on_the_pools_and_for_the_holder_given()
    {
        string database = await postgres.CreateDatabaseAsync();
        await using (NpgsqlDataSource owner = Database.CreateDataSource(database))
        await using (NpgsqlConnection connection = await owner.OpenConnectionAsync())
        {
            // The test database holds the seeded organisations, which the mark's trigger refuses;
            // set-up marks it with that trigger off, as only the owner could.
            await connection.ExecuteAsync("""
                ALTER TABLE sandbox_clock DISABLE TRIGGER sandbox_clock_mark_empty_only;
                INSERT INTO sandbox_clock DEFAULT VALUES ON CONFLICT DO NOTHING;
                ALTER TABLE sandbox_clock ENABLE TRIGGER sandbox_clock_mark_empty_only;
                """);
        }

        await using TestServer server = await TestServer.StartAsync(postgres, time: new SimulatedClock(0), database: database);
        Clock moved = await new SandboxService.SandboxServiceClient(server.Channel)
            .AdvanceClockAsync(new AdvanceClockRequest { ByMs = 3 * Day }, TestServer.Bearer(TestServer.OperatorKey));
        DateOnly sandboxYesterday = ShanghaiTime.DateOf(DateTimeOffset.FromUnixTimeMilliseconds(moved.NowUnixMs)).AddDays(-1);

        var (exit, output) = await RunAgentAsync(
            "--server", server.Address.ToString().TrimEnd('/'), "--ca", TestCertificates.CaPemPath, "--api-key", TestServer.ProviderKey,
            "--stream", "sandbox-agent", "--jobs-per-interval", "2", "--pools", "H100-SXM:16", "--holders", TestRecords.Holder);

        Assert.True(exit == 0, output);
        var (records, firstDay, lastDay, models, holders) = (await server.QueryAsync<(long, DateTime, DateTime, long, long)>("""
            SELECT count(*), min((start_at AT TIME ZONE 'Asia/Shanghai')::date), max(((end_at - interval '1 ms') AT TIME ZONE 'Asia/Shanghai')::date),
                   count(DISTINCT device_model) FILTER (WHERE device_model <> 'H100-SXM'), count(DISTINCT holder_code) FILTER (WHERE holder_code <> @holder)
                   + count(*) FILTER (WHERE sm_active_bp IS NOT NULL)
            FROM usage_records WHERE stream_id = 'sandbox-agent'
            """, new { holder = TestRecords.Holder })).Single();
        Assert.Equal(288L * 2, records);
        Assert.Equal((sandboxYesterday, sandboxYesterday), (DateOnly.FromDateTime(firstDay), DateOnly.FromDateTime(lastDay)));
        Assert.NotEqual(DateOnly.FromDateTime(DateTime.UtcNow.AddHours(8)).AddDays(-1), sandboxYesterday);
        // Without --dcgm-url or --nvidia-smi no record carries an SM-activity figure (counted with the holders).
        Assert.Equal((0L, 0L), (models, holders));
    }

    [Theory]
    [InlineData("H100-SXM")]
    [InlineData("H100-SXM:0")]
    [InlineData("H100-SXM:-4")]
    [InlineData(":8")]
    [InlineData("H100-SXM:8,")]
    public async Task The_agent_refuses_a_malformed_pool_list_before_it_connects(string pools)
    {
        // Nothing listens on port 9: a usage error must come before any connection is tried.
        var (exit, output) = await RunAgentAsync("--server", "http://127.0.0.1:9", "--api-key", "key", "--pools", pools);

        Assert.Equal(2, exit);
        Assert.Contains("Usage: provider-agent", output, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("--site", "5", "--site must be 0, 1 or 2, not '5'")]
    [InlineData("--day", "2026/11/20", "--day must be a date as yyyy-MM-dd, not '2026/11/20'")]
    [InlineData("--jobs-per-interval", "many", "--jobs-per-interval must be a whole number above 0, not 'many'")]
    public async Task The_agent_names_a_malformed_option_and_exits_2_before_it_connects(string option, string value, string message)
    {
        var (exit, output) = await RunAgentAsync("--server", "http://127.0.0.1:9", "--api-key", "key", option, value);

        Assert.Equal(2, exit);
        Assert.Contains($"error: {message}", output, StringComparison.Ordinal);
        Assert.DoesNotContain("Exception", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_agent_exits_0_on_help_4_on_a_refusal_and_5_with_no_server()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);

        var (helpExit, help) = await RunAgentAsync("--help");
        var (refusedExit, refused) = await RunAgentAsync("--server", server.Address.ToString().TrimEnd('/'), "--ca", TestCertificates.CaPemPath, "--api-key", "not-a-key");
        var (nowhereExit, nowhere) = await RunAgentAsync("--server", "http://127.0.0.1:9", "--api-key", "key");

        Assert.True(helpExit == 0, help);
        Assert.Contains("Usage: provider-agent", help, StringComparison.Ordinal);
        Assert.True(refusedExit == 4, refused);
        Assert.Contains("refused: Unauthenticated", refused, StringComparison.Ordinal);
        Assert.True(nowhereExit == 5, nowhere);
        Assert.Contains("no Metering server answers", nowhere, StringComparison.Ordinal);
    }

    internal static async Task<(int ExitCode, string Output)> RunAgentAsync(params string[] arguments)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.ArgumentList.Add(ProgramBuilds.PathOf("provider-agent.dll"));
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        start.Environment.Remove("METERING_API_KEY");
        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60));
        return (process.ExitCode, await output + await error);
    }
}
