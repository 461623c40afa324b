using Dapper;
using Grpc.Core;
using Grpc.Net.Client;
using Metering.Engine.Capacity;
using Metering.Engine.Catalog;
using Metering.Engine.Ingest;
using Metering.Protocol.V1;
using Metering.Server.Access;
using Metering.Server.Hosting;
using Metering.Tests.Shared;
using Npgsql;

namespace Metering.Server.Tests.Infrastructure;

/// <summary>
/// A real Kestrel gRPC server on a loopback port over a test's own database, in which both test
/// providers are admitted and each role holds a key (see <see cref="Admissions"/>).
/// </summary>
public sealed class TestServer : IAsyncDisposable
{
    public static string ProviderKey => PostgresFixture.Keys.Provider;

    public static string OtherProviderKey => PostgresFixture.Keys.OtherProvider;

    public static string OperatorKey => PostgresFixture.Keys.Operator;

    public static string AuditorKey => PostgresFixture.Keys.Auditor;

    public static string SettlementKey => PostgresFixture.Keys.Settlement;

    private MeteringServer _server;
    private readonly ServerSettings _settings;

    private TestServer(MeteringServer server, ServerSettings settings, string connectionString)
    {
        _server = server;
        _settings = settings;
        ConnectionString = connectionString;
        Channel = GrpcChannel.ForAddress(server.Address);
    }

    public string ConnectionString { get; }

    public GrpcChannel Channel { get; private set; }

    public Uri Address => _server.Address;

    /// <summary>The running server's services (its credential store, to count key look-ups).</summary>
    public IServiceProvider Services => _server.Services;

    /// <param name="catalog">The device catalog; the embedded one unless a test needs the CPU fixture (<see cref="TestCatalogs.WithCpuFixture"/>).</param>
    public static async Task<TestServer> StartAsync(PostgresFixture postgres, IngestLimits? limits = null, TimeProvider? time = null, DeviceCatalog? catalog = null,
        CapacitySettings? capacity = null, CredentialRecheckPolicy? recheck = null, CallLimits? callLimits = null)
    {
        string connectionString = await postgres.CreateDatabaseAsync();
        var settings = new ServerSettings
        {
            Listen = new Uri("http://127.0.0.1:0"),
            ConnectionString = connectionString,
            Limits = limits ?? new IngestLimits(),
            Time = time ?? TimeProvider.System,
            CredentialRecheck = recheck ?? CredentialRecheckPolicy.Default,
            Catalog = catalog ?? DeviceCatalog.LoadEmbedded(),
            Capacity = capacity ?? new CapacitySettings(),
            CallLimits = callLimits ?? new CallLimits(),
        };
        return new TestServer(await MeteringServer.StartAsync(settings), settings, connectionString);
    }

    /// <summary>Stops the server abruptly and starts a new one on the same port, as a restart would.</summary>
    public async Task RestartAsync()
    {
        await _server.DisposeAsync();
        _settings.Listen = _server.Address;
        _server = await MeteringServer.StartAsync(_settings);
    }

    public async Task StopAsync() => await _server.DisposeAsync();

    public async Task StartAgainAsync()
    {
        _settings.Listen = _server.Address;
        _server = await MeteringServer.StartAsync(_settings);
    }

    public IngestService.IngestServiceClient Client() => new(Channel);

    public RawLogService.RawLogServiceClient RawLogClient() => new(Channel);

    public static Metadata Bearer(string? key = null) => new() { { "authorization", "Bearer " + (key ?? ProviderKey) } };

    public RegistryService.RegistryServiceClient RegistryClient() => new(Channel);

    public CapacityService.CapacityServiceClient CapacityClient() => new(Channel);

    public async Task<T> ScalarAsync<T>(string sql, object? parameters = null)
    {
        await using var connection = new NpgsqlConnection(ConnectionString);
        return await connection.ExecuteScalarAsync<T>(sql, parameters) ?? throw new InvalidOperationException($"{sql} returned null");
    }

    public async Task ExecuteAsync(string sql, object? parameters = null)
    {
        await using var connection = new NpgsqlConnection(ConnectionString);
        await connection.ExecuteAsync(sql, parameters);
    }

    public async Task<List<T>> QueryAsync<T>(string sql, object? parameters = null)
    {
        await using var connection = new NpgsqlConnection(ConnectionString);
        return (await connection.QueryAsync<T>(sql, parameters)).ToList();
    }

    public async ValueTask DisposeAsync()
    {
        Channel.Dispose();
        await _server.DisposeAsync();
    }
}
