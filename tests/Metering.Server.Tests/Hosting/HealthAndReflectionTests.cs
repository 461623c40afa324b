using System.Reflection;
using Dapper;
using Google.Protobuf.Reflection;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Reflection.V1;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Npgsql;

namespace Metering.Server.Tests.Hosting;

/// <summary>
/// grpc.health.v1.Health and server reflection through the real server (TLS, test CA), called
/// without a key as a load balancer, a Kubernetes probe or grpcurl would. Health follows the
/// database: the tests take it away from the server (the test database stops accepting
/// connections and the server's sessions are ended) and put its schema behind the engine.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class HealthAndReflectionTests(PostgresFixture postgres)
{
    /// <summary>The shortest period the server allows, so that a change shows within a couple of seconds.</summary>
    private const int PeriodMs = 1000;

    /// <summary>How long a test waits for health to show a change: several periods and the check's timeout.</summary>
    private static readonly TimeSpan ChangeWithin = TimeSpan.FromSeconds(15);

    [Fact]
    public async Task Health_answers_serving_without_a_key_on_a_migrated_database_for_the_server_and_each_service()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, healthCheckPeriodMs: PeriodMs);
        var health = new Health.HealthClient(server.Channel);

        foreach (string service in ProductServices().Prepend(""))
        {
            Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, await StatusWithinAsync(health, service, HealthCheckResponse.Types.ServingStatus.Serving));
        }
    }

    [Fact]
    public async Task Health_refuses_a_service_the_server_does_not_serve_with_not_found()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, healthCheckPeriodMs: PeriodMs);
        var health = new Health.HealthClient(server.Channel);
        await StatusWithinAsync(health, "", HealthCheckResponse.Types.ServingStatus.Serving);

        RpcException error = await Assert.ThrowsAsync<RpcException>(() => health.CheckAsync(new HealthCheckRequest { Service = "metering.v1.NoSuchService" }).ResponseAsync);
        Assert.Equal(StatusCode.NotFound, error.StatusCode);
    }

    [Fact]
    public async Task Health_answers_not_serving_while_the_database_refuses_the_server_and_serving_again_once_it_answers()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, healthCheckPeriodMs: PeriodMs);
        var health = new Health.HealthClient(server.Channel);
        await StatusWithinAsync(health, "", HealthCheckResponse.Types.ServingStatus.Serving);
        using var watch = health.Watch(new HealthCheckRequest());
        Assert.True(await watch.ResponseStream.MoveNext(CancellationToken.None));
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, watch.ResponseStream.Current.Status);

        string database = new NpgsqlConnectionStringBuilder(server.ConnectionString).Database!;
        await AdministerAsync($"ALTER DATABASE {database} ALLOW_CONNECTIONS false");
        try
        {
            // Its open sessions end too, as when the database goes down under a running server.
            await AdministerAsync("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = @database AND pid <> pg_backend_pid()", new { database });

            Assert.Equal(HealthCheckResponse.Types.ServingStatus.NotServing,
                await StatusWithinAsync(health, "", HealthCheckResponse.Types.ServingStatus.NotServing));
            Assert.Equal(HealthCheckResponse.Types.ServingStatus.NotServing,
                await StatusWithinAsync(health, IngestService.Descriptor.FullName, HealthCheckResponse.Types.ServingStatus.NotServing));
            using var watchWithin = new CancellationTokenSource(ChangeWithin);
            Assert.True(await watch.ResponseStream.MoveNext(watchWithin.Token));
            Assert.Equal(HealthCheckResponse.Types.ServingStatus.NotServing, watch.ResponseStream.Current.Status);
        }
        finally
        {
            await AdministerAsync($"ALTER DATABASE {database} ALLOW_CONNECTIONS true");
        }

        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, await StatusWithinAsync(health, "", HealthCheckResponse.Types.ServingStatus.Serving));
    }

    [Fact]
    public async Task Health_answers_not_serving_while_the_schema_is_behind_the_engine()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, healthCheckPeriodMs: PeriodMs);
        var health = new Health.HealthClient(server.Channel);
        await StatusWithinAsync(health, "", HealthCheckResponse.Types.ServingStatus.Serving);

        await server.ExecuteAsync("DELETE FROM schema_migrations WHERE version = (SELECT max(version) FROM schema_migrations)");

        Assert.Equal(HealthCheckResponse.Types.ServingStatus.NotServing,
            await StatusWithinAsync(health, "", HealthCheckResponse.Types.ServingStatus.NotServing));
    }

    [Fact]
    public async Task Garbage_as_a_health_check_without_a_key_is_invalid_argument_with_the_malformed_reason()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, healthCheckPeriodMs: PeriodMs);
        var raw = Marshallers.Create(static (byte[] bytes) => bytes, static bytes => bytes);
        var check = new Method<byte[], byte[]>(MethodType.Unary, Health.Descriptor.FullName, "Check", raw, raw);

        var call = server.Channel.CreateCallInvoker().AsyncUnaryCall(check, null, new CallOptions(), [0xFF, 0xFF, 0xFF, 0xFF]);
        RpcException error = await Assert.ThrowsAsync<RpcException>(async () => await call.ResponseAsync);

        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Equal("MESSAGE_MALFORMED", IngestCall.Reason(error));
    }

    [Fact]
    public async Task Reflection_lists_every_service_of_the_protos_and_health_without_a_key()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        var reflection = new ServerReflection.ServerReflectionClient(server.Channel);

        using var call = reflection.ServerReflectionInfo();
        await call.RequestStream.WriteAsync(new ServerReflectionRequest { ListServices = "" });
        Assert.True(await call.ResponseStream.MoveNext(CancellationToken.None));
        string[] listed = call.ResponseStream.Current.ListServicesResponse.Service.Select(s => s.Name).Order(StringComparer.Ordinal).ToArray();

        string[] expected = ProductServices()
            .Append(Health.Descriptor.FullName)
            .Append(ServerReflection.Descriptor.FullName)
            .Append(Grpc.Reflection.V1Alpha.ServerReflection.Descriptor.FullName)
            .Order(StringComparer.Ordinal)
            .ToArray();
        Assert.Equal(expected, listed);

        // A listed service resolves to its file, so that a client can build calls from it alone.
        await call.RequestStream.WriteAsync(new ServerReflectionRequest { FileContainingSymbol = IngestService.Descriptor.FullName });
        Assert.True(await call.ResponseStream.MoveNext(CancellationToken.None));
        Assert.NotEmpty(call.ResponseStream.Current.FileDescriptorResponse.FileDescriptorProto);
        await call.RequestStream.CompleteAsync();
    }

    [Fact]
    public async Task Reflection_turned_off_answers_unimplemented_while_health_still_answers()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, reflection: false, healthCheckPeriodMs: PeriodMs);
        var reflection = new ServerReflection.ServerReflectionClient(server.Channel);

        using var call = reflection.ServerReflectionInfo(TestServer.Bearer(TestServer.OperatorKey));
        // The server ends a call to a method it does not serve at once and resets the request
        // side, so the write may fail (even as CANCELLED when the reset wins); the call's status
        // is what the response side reads.
        try
        {
            await call.RequestStream.WriteAsync(new ServerReflectionRequest { ListServices = "" });
        }
        catch (RpcException)
        {
        }

        RpcException error = await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext(CancellationToken.None));
        Assert.Equal(StatusCode.Unimplemented, error.StatusCode);

        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving,
            await StatusWithinAsync(new Health.HealthClient(server.Channel), "", HealthCheckResponse.Types.ServingStatus.Serving));
    }

    /// <summary>The full name of every service the product's protos define, from the generated descriptors.</summary>
    private static IEnumerable<string> ProductServices() =>
        typeof(IngestRequest).Assembly.GetTypes()
            .Where(type => type.Namespace == "Metering.Protocol.V1" && type.Name.EndsWith("Reflection", StringComparison.Ordinal))
            .Select(type => (FileDescriptor)type.GetProperty("Descriptor", BindingFlags.Public | BindingFlags.Static)!.GetValue(null)!)
            .SelectMany(file => file.Services)
            .Select(service => service.FullName);

    /// <summary>Checks, without a key, until the status is <paramref name="wanted"/> or the time is up; returns the last status seen.</summary>
    private static async Task<HealthCheckResponse.Types.ServingStatus> StatusWithinAsync(Health.HealthClient health, string service, HealthCheckResponse.Types.ServingStatus wanted)
    {
        DateTime until = DateTime.UtcNow + ChangeWithin;
        HealthCheckResponse.Types.ServingStatus last;
        do
        {
            last = (await health.CheckAsync(new HealthCheckRequest { Service = service })).Status;
            if (last == wanted)
            {
                return last;
            }

            await Task.Delay(200);
        }
        while (DateTime.UtcNow < until);

        return last;
    }

    private async Task AdministerAsync(string sql, object? parameters = null)
    {
        var admin = new NpgsqlConnectionStringBuilder(postgres.Server.ConnectionString) { Database = "postgres", Pooling = false };
        await using var connection = new NpgsqlConnection(admin.ConnectionString);
        await connection.ExecuteAsync(sql, parameters);
    }
}
