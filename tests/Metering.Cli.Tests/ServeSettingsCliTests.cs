using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Metering.Engine.Fixtures;
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
}
