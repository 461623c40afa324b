using Google.Rpc;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Metering.Engine.Fixtures;
using Metering.Fixtures;
using Metering.Protocol.V1;
using Metering.Server.Fixtures;
using Npgsql;

namespace Metering.Cli.Tests;

/// <summary>
/// `metering serve` given a connection string that names two hosts, the first of which does not
/// answer and the second the test's single PostgreSQL, which has no standby: Npgsql finds the
/// primary, and the server, requiring durable replication by default for such a string, refuses
/// to open streams, with health NOT_SERVING and the metrics gauge naming why; told
/// `--require-durable-replication false`, the same server acknowledges.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class DurableReplicationServeCliTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Serve_with_two_hosts_requires_durable_replication_by_default_and_acknowledges_once_told_not_to()
    {
        var builder = new NpgsqlConnectionStringBuilder(PostgresFixture.AsRuntimeRole(await postgres.CreateDatabaseAsync()));
        builder.Host = $"127.0.0.1:{ServerProcess.FreePort()},{builder.Host}";
        builder.TargetSessionAttributes = "primary";
        builder.Options = "-c synchronous_commit=on";
        string connection = builder.ConnectionString;

        foreach (bool turnedOff in new[] { false, true })
        {
            int port = ServerProcess.FreePort();
            int metricsPort = ServerProcess.FreePort();
            var address = new Uri($"http://127.0.0.1:{port}");
            string[] arguments = ["serve", "--connection", connection, "--listen", address.ToString(), "--signing-key", ServerProcess.SigningKeyPath,
                "--metrics-listen", $"http://127.0.0.1:{metricsPort}"];
            await using ServerProcess server = await ServerProcess.StartAsync(address, turnedOff ? [.. arguments, "--require-durable-replication", "false"] : arguments);
            using GrpcChannel channel = GrpcChannel.ForAddress(server.Address);
            var client = new IngestService.IngestServiceClient(channel);
            using var http = new HttpClient();
            string metrics = await http.GetStringAsync(new Uri($"http://127.0.0.1:{metricsPort}/metrics"));

            if (!turnedOff)
            {
                RpcException refused = await IngestCall.OpenRefusedAsync(client, "two-hosts");
                Assert.Equal(StatusCode.Unavailable, refused.StatusCode);
                ErrorInfo info = refused.GetRpcStatus()!.GetDetail<ErrorInfo>();
                Assert.Equal(("REPLICATION_NOT_DURABLE", "NO_SYNCHRONOUS_STANDBY"), (info.Reason, info.Metadata["why"]));
                Assert.Matches(@"(?m)^metering_replication_not_durable\{[^}]*reason=""NO_SYNCHRONOUS_STANDBY""[^}]*\} 1( |$)", metrics);
                Assert.Matches(@"(?m)^metering_replication_not_durable\{[^}]*reason=""SYNCHRONOUS_COMMIT_OFF""[^}]*\} 0( |$)", metrics);
                Assert.Matches(@"(?m)^metering_replication_required( |\{[^}]*\} )1( |$)", metrics);
                Assert.Contains(server.Output, line => line.Contains("Replication is not durable (NO_SYNCHRONOUS_STANDBY)", StringComparison.Ordinal));
                // Health publishes every 5 s from the start: two rounds have run by then.
                await Task.Delay(TimeSpan.FromSeconds(6));
                Assert.Equal(HealthCheckResponse.Types.ServingStatus.NotServing, (await new Health.HealthClient(channel).CheckAsync(new HealthCheckRequest())).Status);
            }
            else
            {
                await using IngestCall call = await IngestCall.OpenAsync(client, "two-hosts");
                Assert.Equal(1UL, (await call.SendAsync([TestRecords.Valid(1)])).CommittedSequence);
                Assert.Matches(@"(?m)^metering_replication_required( |\{[^}]*\} )0( |$)", metrics);
                Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, await HealthWait.ServingWithinAsync(new Health.HealthClient(channel)));
            }
        }
    }
}
