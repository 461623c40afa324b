using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Grpc.Reflection.V1;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>
/// `metering serve` as the README's grpcurl examples reach it: cleartext HTTP/2 on loopback,
/// without a key. Health answers; reflection answers by default and not after `--reflection false`.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class ServeHealthCliTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Serve_over_h2c_answers_health_and_reflection_without_a_key_and_reflection_false_turns_reflection_off()
    {
        string database = PostgresFixture.AsRuntimeRole(await postgres.CreateDatabaseAsync());

        foreach (bool reflectionOn in new[] { true, false })
        {
            int port = ServerProcess.FreePort();
            var address = new Uri($"http://127.0.0.1:{port}");
            string[] arguments = ["serve", "--connection", database, "--listen", address.ToString(), "--signing-key", ServerProcess.SigningKeyPath];
            await using ServerProcess server = await ServerProcess.StartAsync(address, reflectionOn ? arguments : [.. arguments, "--reflection", "false"]);
            using GrpcChannel channel = GrpcChannel.ForAddress(server.Address);

            Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, await HealthWait.ServingWithinAsync(new Health.HealthClient(channel)));

            using var call = new ServerReflection.ServerReflectionClient(channel).ServerReflectionInfo();
            async Task<bool> AskAsync()
            {
                await call.RequestStream.WriteAsync(new ServerReflectionRequest { ListServices = "" });
                return await call.ResponseStream.MoveNext(CancellationToken.None);
            }

            if (reflectionOn)
            {
                Assert.True(await AskAsync());
                Assert.Contains(call.ResponseStream.Current.ListServicesResponse.Service, s => s.Name == IngestService.Descriptor.FullName);
            }
            else
            {
                // The server may end the call before the request is written; the refusal then
                // comes from the write instead of the read.
                RpcException error = await Assert.ThrowsAsync<RpcException>(AskAsync);
                Assert.Equal(StatusCode.Unimplemented, error.StatusCode);
            }
        }
    }

    [Fact]
    public async Task Serve_stamps_its_log_lines_in_iso_8601_with_the_offset_and_logs_debug_messages_at_log_level_debug()
    {
        string database = PostgresFixture.AsRuntimeRole(await postgres.CreateDatabaseAsync());
        int port = ServerProcess.FreePort();
        var address = new Uri($"http://127.0.0.1:{port}");

        await using ServerProcess server = await ServerProcess.StartAsync(address,
            "serve", "--connection", database, "--listen", address.ToString(), "--signing-key", ServerProcess.SigningKeyPath, "--log-level", "Debug");
        using GrpcChannel channel = GrpcChannel.ForAddress(server.Address);
        await HealthWait.ServingWithinAsync(new Health.HealthClient(channel));

        string serving = Assert.Single(server.Output, line => line.Contains("Serving gRPC on", StringComparison.Ordinal));
        Assert.Matches(@"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+00:00 info: ", serving);
        DateTimeOffset stamped = DateTimeOffset.Parse(serving[..29], System.Globalization.CultureInfo.InvariantCulture);
        Assert.InRange(DateTimeOffset.UtcNow - stamped, TimeSpan.Zero, TimeSpan.FromMinutes(2));
        Assert.Contains(server.Output, line => line.Contains(" dbug: ", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Serve_refuses_an_unknown_log_level_before_it_starts_anything()
    {
        string folder = Path.Combine(Path.GetTempPath(), $"metering-log-level-{Guid.NewGuid():N}");
        var (exit, output) = await CliProcess.RunAsync("serve", "--log-level", "verbose", "--data-dir", folder);

        Assert.NotEqual(0, exit);
        Assert.Contains("verbose", output, StringComparison.Ordinal);
        Assert.False(Directory.Exists(folder));
    }
}
