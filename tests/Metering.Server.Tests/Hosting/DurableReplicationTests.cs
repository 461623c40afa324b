using Google.Rpc;
using Grpc.Core;
using Grpc.Health.V1;
using Metering.Client.Streaming;
using Metering.Engine.Fixtures;
using Metering.Fixtures;
using Metering.Protocol.V1;
using Metering.Server.Fixtures;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Npgsql;

namespace Metering.Server.Tests.Hosting;

/// <summary>
/// A server that requires durable replication, on the test's single PostgreSQL, which has no
/// standby: it refuses to open streams with the condition named, health says why, and nothing is
/// written; the same database is served normally when the requirement is off. The connection
/// string's Options set synchronous_commit for the server's sessions, which is what the check reads.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class DurableReplicationTests(PostgresFixture postgres)
{
    [Fact]
    public async Task A_server_requiring_durable_replication_refuses_to_open_a_stream_while_no_synchronous_standby_is_attached()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, database: await DatabaseAsync("on"), requireDurableReplication: true);

        RpcException refused = await IngestCall.OpenRefusedAsync(server.Client(), "durable-1");

        Assert.Equal(StatusCode.Unavailable, refused.StatusCode);
        ErrorInfo info = refused.GetRpcStatus()!.GetDetail<ErrorInfo>();
        Assert.Equal("REPLICATION_NOT_DURABLE", info.Reason);
        Assert.Equal("NO_SYNCHRONOUS_STANDBY", info.Metadata["why"]);
        Assert.Contains("no synchronous standby", refused.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM ingest_streams WHERE stream_id = 'durable-1'"));
    }

    [Theory]
    [InlineData("off")]
    [InlineData("local")]
    [InlineData("remote_write")]
    public async Task A_session_that_commits_before_a_standby_holds_the_commit_is_named_as_synchronous_commit_off(string synchronousCommit)
    {
        await using TestServer server = await TestServer.StartAsync(postgres, database: await DatabaseAsync(synchronousCommit), requireDurableReplication: true);

        RpcException refused = await IngestCall.OpenRefusedAsync(server.Client(), "durable-2");

        Assert.Equal(StatusCode.Unavailable, refused.StatusCode);
        ErrorInfo info = refused.GetRpcStatus()!.GetDetail<ErrorInfo>();
        Assert.Equal(("REPLICATION_NOT_DURABLE", "SYNCHRONOUS_COMMIT_OFF"), (info.Reason, info.Metadata["why"]));
        Assert.Contains($"'{synchronousCommit}'", refused.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Health_is_not_serving_with_the_reason_while_durable_replication_is_required_and_missing_and_serving_when_it_is_not_required()
    {
        string database = await DatabaseAsync("on");
        await using TestServer required = await TestServer.StartAsync(postgres, database: database, requireDurableReplication: true, healthCheckPeriodMs: 1000);
        await using TestServer notRequired = await TestServer.StartAsync(postgres, database: database, healthCheckPeriodMs: 1000);

        HealthReport report = await required.Services.GetRequiredService<HealthCheckService>().CheckHealthAsync();
        Assert.Equal(HealthStatus.Healthy, report.Entries["database"].Status);
        Assert.Equal(HealthStatus.Unhealthy, report.Entries["replication"].Status);
        Assert.StartsWith("NO_SYNCHRONOUS_STANDBY: ", report.Entries["replication"].Description, StringComparison.Ordinal);
        Assert.DoesNotContain("replication", (await notRequired.Services.GetRequiredService<HealthCheckService>().CheckHealthAsync()).Entries.Keys);

        // Once the server without the requirement serves, the published checks of both have run.
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, await StatusWithinAsync(new Health.HealthClient(notRequired.Channel), HealthCheckResponse.Types.ServingStatus.Serving));
        await Task.Delay(1500);
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.NotServing, (await new Health.HealthClient(required.Channel).CheckAsync(new HealthCheckRequest())).Status);
    }

    [Fact]
    public async Task The_same_database_is_served_and_acknowledged_when_durable_replication_is_not_required()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, database: await DatabaseAsync("on"), requireDurableReplication: false);

        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "durable-3");
        BatchAck ack = await call.SendAsync([TestRecords.Valid(1), TestRecords.Valid(2)]);

        Assert.Equal(2UL, ack.CommittedSequence);
        Assert.Equal(2L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = 'durable-3'"));
    }

    [Fact]
    public async Task Only_the_runtime_role_may_count_synchronous_standbys_through_the_migrations_definer_function()
    {
        string database = await postgres.CreateDatabaseAsync();
        await using (var owner = new NpgsqlConnection(database))
        {
            await owner.OpenAsync();
            await using var create = new NpgsqlCommand("DROP ROLE IF EXISTS durable_outsider; CREATE ROLE durable_outsider LOGIN", owner);
            await create.ExecuteNonQueryAsync();
        }

        await using (var runtime = new NpgsqlConnection(PostgresFixture.AsRuntimeRole(database)))
        {
            await runtime.OpenAsync();
            await using var count = new NpgsqlCommand("SELECT synchronous_standbys_attached()", runtime);
            Assert.Equal(0, await count.ExecuteScalarAsync());
        }

        await using var outsider = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(database) { Username = "durable_outsider" }.ConnectionString);
        await outsider.OpenAsync();
        await using var call = new NpgsqlCommand("SELECT synchronous_standbys_attached()", outsider);
        PostgresException denied = await Assert.ThrowsAsync<PostgresException>(() => call.ExecuteScalarAsync());
        Assert.Equal(PostgresErrorCodes.InsufficientPrivilege, denied.SqlState);
    }

    [Fact]
    public async Task A_multi_host_connection_string_reaches_the_primary_past_a_host_that_does_not_answer()
    {
        string database = await postgres.CreateDatabaseAsync();
        var builder = new NpgsqlConnectionStringBuilder(database);
        builder.Host = $"127.0.0.1:{Metering.Server.Fixtures.ServerProcess.FreePort()},{builder.Host}";
        builder.TargetSessionAttributes = "primary";
        await using TestServer server = await TestServer.StartAsync(postgres, database: builder.ConnectionString);

        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "multi-host");
        BatchAck ack = await call.SendAsync([TestRecords.Valid(1)]);

        Assert.Equal(1UL, ack.CommittedSequence);
    }

    [Fact]
    public async Task A_stream_whose_database_connections_are_cut_ends_with_unavailable_database_unavailable_and_resumes_on_reconnect()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using (IngestCall first = await IngestCall.OpenAsync(server.Client(), "cut"))
        {
            Assert.Equal(1UL, (await first.SendAsync([TestRecords.Valid(1)])).CommittedSequence);

            // What a failover does to the server's pooled connections: the backends are gone.
            await using (var admin = new NpgsqlConnection(postgres.Server.ConnectionString))
            {
                await admin.OpenAsync();
                await using var cut = new NpgsqlCommand(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = @database AND pid <> pg_backend_pid()", admin);
                cut.Parameters.AddWithValue("database", new NpgsqlConnectionStringBuilder(server.ConnectionString).Database!);
                Assert.True((long)(await cut.ExecuteScalarAsync())! > 0);
            }

            RpcException lost = await first.SendRefusedAsync([TestRecords.Valid(2)]);
            Assert.Equal(StatusCode.Unavailable, lost.StatusCode);
            Assert.Equal("DATABASE_UNAVAILABLE", UsageStreamer.ReasonOf(lost));
        }

        await using IngestCall again = await IngestCall.OpenAsync(server.Client(), "cut");
        Assert.Equal(1UL, again.Opened.CommittedSequence);
        Assert.Equal(2UL, (await again.SendAsync([TestRecords.Valid(2)])).CommittedSequence);
    }

    /// <summary>A fresh test database whose connections (the server's too) run with this synchronous_commit.</summary>
    private async Task<string> DatabaseAsync(string synchronousCommit) =>
        new NpgsqlConnectionStringBuilder(await postgres.CreateDatabaseAsync()) { Options = $"-c synchronous_commit={synchronousCommit}" }.ConnectionString;

    private static async Task<HealthCheckResponse.Types.ServingStatus> StatusWithinAsync(Health.HealthClient health, HealthCheckResponse.Types.ServingStatus wanted)
    {
        DateTime until = DateTime.UtcNow.AddSeconds(10);
        HealthCheckResponse.Types.ServingStatus status;
        do
        {
            status = (await health.CheckAsync(new HealthCheckRequest())).Status;
            if (status == wanted)
            {
                break;
            }

            await Task.Delay(100);
        }
        while (DateTime.UtcNow < until);

        return status;
    }
}
