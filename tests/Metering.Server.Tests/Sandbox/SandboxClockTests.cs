using Dapper;
using Google.Rpc;
using Grpc.Core;
using Metering.Engine.Sandbox;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;
using Npgsql;

namespace Metering.Server.Tests.Sandbox;

[Collection(PostgresCollection.Name)]
public sealed class SandboxClockTests(PostgresFixture postgres)
{
    private const long Day = 86_400_000;

    /// <summary>
    /// A test database marked a sandbox, and a server on a simulated clock over it. The test
    /// databases hold the seeded organisations and keys, which the mark's trigger refuses; set-up
    /// marks it with that trigger off, as only the owner could, and puts it back.
    /// </summary>
    private async Task<TestServer> StartSandboxAsync(string? database = null)
    {
        database ??= await postgres.CreateDatabaseAsync();
        await using NpgsqlDataSource owner = Database.CreateDataSource(database);
        await using NpgsqlConnection connection = await owner.OpenConnectionAsync();
        await connection.ExecuteAsync("""
            ALTER TABLE sandbox_clock DISABLE TRIGGER sandbox_clock_mark_empty_only;
            INSERT INTO sandbox_clock DEFAULT VALUES ON CONFLICT DO NOTHING;
            ALTER TABLE sandbox_clock ENABLE TRIGGER sandbox_clock_mark_empty_only;
            """);
        return await TestServer.StartAsync(postgres, time: new SimulatedClock(0), database: database);
    }

    [Fact]
    public async Task Not_even_the_owner_marks_a_database_with_programme_data_a_sandbox_or_removes_a_mark()
    {
        string production = await postgres.CreateDatabaseAsync();
        await using (NpgsqlDataSource owner = Database.CreateDataSource(production))
        await using (NpgsqlConnection connection = await owner.OpenConnectionAsync())
        {
            var mark = await Assert.ThrowsAsync<PostgresException>(() => connection.ExecuteAsync("INSERT INTO sandbox_clock DEFAULT VALUES"));
            Assert.Contains("only a database with no organisations", mark.MessageText, StringComparison.Ordinal);
        }

        string sandbox = await postgres.CreateDatabaseAsync();
        await using (TestServer server = await StartSandboxAsync(sandbox))
        {
            var delete = await Assert.ThrowsAsync<PostgresException>(() => server.ExecuteAsync("DELETE FROM sandbox_clock"));
            var truncate = await Assert.ThrowsAsync<PostgresException>(() => server.ExecuteAsync("TRUNCATE sandbox_clock"));
            Assert.Equal(PostgresErrorCodes.InsufficientPrivilege, delete.SqlState);
            Assert.Equal(PostgresErrorCodes.InsufficientPrivilege, truncate.SqlState);
            Assert.Equal(1L, await server.ScalarAsync<long>("SELECT count(*) FROM sandbox_clock"));
        }
    }

    private static SandboxService.SandboxServiceClient Client(TestServer server) => new(server.Channel);

    private static string Reason(RpcException e) => e.GetRpcStatus()!.GetDetail<ErrorInfo>()!.Reason;

    [Fact]
    public async Task An_operator_moves_a_sandbox_clock_forward_and_a_restart_keeps_it()
    {
        string database = await postgres.CreateDatabaseAsync();
        long before;
        await using (TestServer server = await StartSandboxAsync(database))
        {
            Clock start = await Client(server).GetClockAsync(new GetClockRequest(), TestServer.Bearer(TestServer.AuditorKey));
            Assert.True(start.Simulated);
            Assert.Equal(0, start.OffsetMs);
            before = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();

            Clock moved = await Client(server).AdvanceClockAsync(new AdvanceClockRequest { ByMs = 5 * Day }, TestServer.Bearer(TestServer.OperatorKey));

            Assert.Equal(5 * Day, moved.OffsetMs);
            Assert.InRange(moved.NowUnixMs - before, 5 * Day, 5 * Day + 60_000);
            var (by, offset, movedBy) = (await server.QueryAsync<(long, long, string)>("SELECT by_ms, offset_ms, moved_by FROM sandbox_clock_moves")).Single();
            Assert.Equal((5 * Day, 5 * Day), (by, offset));
            Assert.StartsWith("operator:", movedBy, StringComparison.Ordinal);
        }

        // A new server on the same database starts where the sandbox's time stood, not at real time.
        await using TestServer again = await TestServer.StartAsync(postgres, time: new SimulatedClock(0), database: database);
        Clock after = await Client(again).GetClockAsync(new GetClockRequest(), TestServer.Bearer(TestServer.ProviderKey));
        Assert.Equal(5 * Day, after.OffsetMs);
        Assert.True(after.NowUnixMs - before >= 5 * Day);
    }

    [Fact]
    public async Task Ingest_judges_the_future_by_the_sandbox_clock()
    {
        await using TestServer server = await StartSandboxAsync();
        // A record of tomorrow (real time) is in the future until the sandbox's clock passes it.
        long tomorrow = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() + Day;
        UsageRecord record = TestRecords.Valid(1);
        (record.StartUnixMs, record.EndUnixMs) = (tomorrow, tomorrow + 300_000);

        await using (IngestCall early = await IngestCall.OpenAsync(server.Client(), "sandbox-a"))
        {
            RpcException refused = await early.SendRefusedAsync([record]);
            Assert.Equal("TIME_IN_FUTURE", Reason(refused));
        }

        await Client(server).AdvanceClockAsync(new AdvanceClockRequest { ByMs = 2 * Day }, TestServer.Bearer(TestServer.OperatorKey));
        await using IngestCall later = await IngestCall.OpenAsync(server.Client(), "sandbox-a");
        BatchAck ack = await later.SendAsync([record]);

        Assert.Equal(1UL, ack.CommittedSequence);
    }

    [Fact]
    public async Task Only_an_operator_moves_the_clock_and_only_forward()
    {
        await using TestServer server = await StartSandboxAsync();

        var asProvider = await Assert.ThrowsAsync<RpcException>(() => Client(server)
            .AdvanceClockAsync(new AdvanceClockRequest { ByMs = Day }, TestServer.Bearer(TestServer.ProviderKey)).ResponseAsync);
        var asAuditor = await Assert.ThrowsAsync<RpcException>(() => Client(server)
            .AdvanceClockAsync(new AdvanceClockRequest { ByMs = Day }, TestServer.Bearer(TestServer.AuditorKey)).ResponseAsync);
        var backwards = await Assert.ThrowsAsync<RpcException>(() => Client(server)
            .AdvanceClockAsync(new AdvanceClockRequest { ByMs = -Day }, TestServer.Bearer(TestServer.OperatorKey)).ResponseAsync);
        var tooFar = await Assert.ThrowsAsync<RpcException>(() => Client(server)
            .AdvanceClockAsync(new AdvanceClockRequest { ByMs = SandboxClockStore.AdvanceMaxMs + 1 }, TestServer.Bearer(TestServer.OperatorKey)).ResponseAsync);

        Assert.Equal((StatusCode.PermissionDenied, "ROLE_NOT_ALLOWED"), (asProvider.StatusCode, Reason(asProvider)));
        Assert.Equal((StatusCode.PermissionDenied, "ROLE_NOT_ALLOWED"), (asAuditor.StatusCode, Reason(asAuditor)));
        Assert.Equal((StatusCode.InvalidArgument, "ADVANCE_INVALID"), (backwards.StatusCode, Reason(backwards)));
        Assert.Equal((StatusCode.InvalidArgument, "ADVANCE_INVALID"), (tooFar.StatusCode, Reason(tooFar)));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT offset_ms FROM sandbox_clock"));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM sandbox_clock_moves"));
    }

    [Fact]
    public async Task A_server_on_real_time_refuses_to_move_its_clock()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);

        var refused = await Assert.ThrowsAsync<RpcException>(() => Client(server)
            .AdvanceClockAsync(new AdvanceClockRequest { ByMs = Day }, TestServer.Bearer(TestServer.OperatorKey)).ResponseAsync);
        Clock clock = await Client(server).GetClockAsync(new GetClockRequest(), TestServer.Bearer(TestServer.OperatorKey));

        Assert.Equal((StatusCode.FailedPrecondition, "CLOCK_NOT_SIMULATED"), (refused.StatusCode, Reason(refused)));
        Assert.False(clock.Simulated);
        Assert.Equal(0, clock.OffsetMs);
    }

    [Fact]
    public async Task A_simulated_clock_is_refused_on_a_database_that_is_not_a_sandbox_and_a_sandbox_on_real_time()
    {
        string production = await postgres.CreateDatabaseAsync();
        var simulatedOnProduction = await Assert.ThrowsAsync<SandboxException>(() => TestServer.StartAsync(postgres, time: new SimulatedClock(0), database: production));
        Assert.Contains("db migrate --sandbox", simulatedOnProduction.Message, StringComparison.Ordinal);

        string sandbox = await postgres.CreateDatabaseAsync();
        await using (TestServer first = await StartSandboxAsync(sandbox))
        {
        }

        var realOnSandbox = await Assert.ThrowsAsync<SandboxException>(() => TestServer.StartAsync(postgres, database: sandbox));
        Assert.Contains("--clock simulated", realOnSandbox.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_runtime_role_can_neither_make_a_database_a_sandbox_nor_turn_its_clock_back()
    {
        string database = await postgres.CreateDatabaseAsync();
        await using (NpgsqlDataSource runtime = Database.CreateDataSource(PostgresFixture.AsRuntimeRole(database)))
        await using (NpgsqlConnection connection = await runtime.OpenConnectionAsync())
        {
            var mark = await Assert.ThrowsAsync<PostgresException>(() => connection.ExecuteAsync("INSERT INTO sandbox_clock DEFAULT VALUES"));
            Assert.Equal(PostgresErrorCodes.InsufficientPrivilege, mark.SqlState);
        }

        await using TestServer server = await StartSandboxAsync(database);
        await Client(server).AdvanceClockAsync(new AdvanceClockRequest { ByMs = Day }, TestServer.Bearer(TestServer.OperatorKey));
        await using (NpgsqlDataSource runtime = Database.CreateDataSource(PostgresFixture.AsRuntimeRole(database)))
        await using (NpgsqlConnection connection = await runtime.OpenConnectionAsync())
        {
            var back = await Assert.ThrowsAsync<PostgresException>(() => connection.ExecuteAsync("UPDATE sandbox_clock SET offset_ms = 0"));
            Assert.Contains("moves only forward", back.MessageText, StringComparison.Ordinal);
            var erase = await Assert.ThrowsAsync<PostgresException>(() => connection.ExecuteAsync("DELETE FROM sandbox_clock_moves"));
            Assert.Equal(PostgresErrorCodes.InsufficientPrivilege, erase.SqlState);
        }

        // The owner cannot turn it back either: the trigger stops everyone.
        var owner = await Assert.ThrowsAsync<PostgresException>(() => server.ExecuteAsync("UPDATE sandbox_clock SET offset_ms = 1000"));
        Assert.Contains("moves only forward", owner.MessageText, StringComparison.Ordinal);
        Assert.Equal(Day, await server.ScalarAsync<long>("SELECT offset_ms FROM sandbox_clock"));
    }

    [Fact]
    public async Task Db_migrate_sandbox_marks_a_new_empty_database_once()
    {
        string name = $"sandbox_{Guid.NewGuid():N}";
        var admin = new NpgsqlConnectionStringBuilder(postgres.Server.ConnectionString) { Database = "postgres", Pooling = false };
        await using (var connection = new NpgsqlConnection(admin.ConnectionString))
        {
            await connection.ExecuteAsync($"CREATE DATABASE {name}");
        }

        string database = new NpgsqlConnectionStringBuilder(postgres.Server.ConnectionString) { Database = name }.ConnectionString;

        var (first, firstOutput) = await CliProcess.RunAsync("db", "migrate", "--sandbox", "--connection", database);
        var (second, secondOutput) = await CliProcess.RunAsync("db", "migrate", "--sandbox", "--connection", database);

        Assert.True(first == 0, firstOutput);
        Assert.Contains("Marked the database a sandbox", firstOutput, StringComparison.Ordinal);
        Assert.True(second == 0, secondOutput);
        Assert.Contains("a sandbox already", secondOutput, StringComparison.Ordinal);
        await using NpgsqlDataSource owner = Database.CreateDataSource(database);
        Assert.Equal(0L, await new SandboxClockStore(owner).ReadOffsetAsync(CancellationToken.None));
    }

    [Fact]
    public async Task Db_migrate_sandbox_refuses_a_database_that_holds_programme_data()
    {
        string database = await postgres.CreateDatabaseAsync();

        var (exit, output) = await CliProcess.RunAsync("db", "migrate", "--sandbox", "--connection", database);

        Assert.Equal(4, exit);
        Assert.Contains("only a new, empty database can be made a sandbox", output, StringComparison.Ordinal);
        await using NpgsqlDataSource owner = Database.CreateDataSource(database);
        Assert.Null(await new SandboxClockStore(owner).ReadOffsetAsync(CancellationToken.None));
    }

    [Fact]
    public async Task The_clock_commands_show_and_move_a_sandbox_clock()
    {
        await using TestServer server = await StartSandboxAsync();

        var (moved, movedOutput) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "clock", "advance", "--by", "1d12h");
        var (shown, shownOutput) = await CliProcess.RunAsAsync(server, TestServer.AuditorKey, "clock", "show");
        var (bad, badOutput) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "clock", "advance", "--by", "soon");
        var (refused, refusedOutput) = await CliProcess.RunAsAsync(server, TestServer.ProviderKey, "clock", "advance", "--by", "1d");

        Assert.True(moved == 0, movedOutput);
        Assert.Contains("1d 12h 00m ahead of real time", movedOutput, StringComparison.Ordinal);
        Assert.True(shown == 0, shownOutput);
        Assert.Contains("simulated (sandbox)", shownOutput, StringComparison.Ordinal);
        Assert.Equal(2, bad);
        Assert.Contains("is not a duration", badOutput, StringComparison.Ordinal);
        Assert.Equal(4, refused);
        Assert.Contains("PermissionDenied ROLE_NOT_ALLOWED", refusedOutput, StringComparison.Ordinal);
        Assert.Equal(36 * 3_600_000L, await server.ScalarAsync<long>("SELECT offset_ms FROM sandbox_clock"));
    }
}
