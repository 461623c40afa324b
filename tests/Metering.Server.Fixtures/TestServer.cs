using System.Security.Cryptography.X509Certificates;
using Dapper;
using Grpc.Core;
using Grpc.Net.Client;
using Metering.Engine.Capacity;
using Metering.Engine.Catalog;
using Metering.Engine.Ingest;
using Metering.Engine.Signing;
using Metering.Protocol.V1;
using Metering.Server.Access;
using Metering.Server.Hosting;
using Metering.Server.Telemetry;
using Metering.Fixtures;
using Npgsql;
using Metering.Engine.Fixtures;

namespace Metering.Server.Fixtures;

/// <summary>
/// A real Kestrel gRPC server on a loopback port over a test's own database, in which both test
/// providers are admitted and each role holds a key (see <see cref="Admissions"/>). It serves
/// https:// with the run's test certificate (<see cref="TestCertificates"/>), so that every
/// integration test goes through TLS; <see cref="Channel"/> trusts only the test CA.
/// </summary>
public sealed class TestServer : IAsyncDisposable
{
    public static string ProviderKey => PostgresFixture.Keys.Provider;

    public static string OtherProviderKey => PostgresFixture.Keys.OtherProvider;

    public static string OperatorKey => PostgresFixture.Keys.Operator;

    /// <summary>Another operator's key (subject operator-two), for four-eyes approvals.</summary>
    public static string SecondOperatorKey => PostgresFixture.Keys.SecondOperator;

    public static string AuditorKey => PostgresFixture.Keys.Auditor;

    public static string SettlementKey => PostgresFixture.Keys.Settlement;

    private MeteringServer _server;
    private readonly ServerSettings _settings;

    private TestServer(MeteringServer server, ServerSettings settings, string connectionString)
    {
        _server = server;
        _settings = settings;
        ConnectionString = connectionString;
        Channel = NewChannel();
    }

    /// <summary>The servers' signing key: one per test run, as one deployment keeps one key.</summary>
    public static ServerSigningKey SigningKey { get; } = ServerSigningKey.CreateNew();

    /// <summary>The test database as its owner (the cluster's superuser), for a test's own reads and tampering; the server itself logs in as the runtime role.</summary>
    public string ConnectionString { get; }

    public GrpcChannel Channel { get; private set; }

    public Uri Address => _server.Address;

    /// <summary>Where the server serves /metrics; null unless the test asked for metrics.</summary>
    public Uri? MetricsAddress => _server.MetricsAddress;

    /// <summary>A channel of its own (its own connections) that trusts the test CA and presents <paramref name="client"/>, if any.</summary>
    public GrpcChannel NewChannel(X509Certificate2? client = null) => TestCertificates.Channel(Address, client);

    /// <summary>The running server's services (its credential store, to count key look-ups).</summary>
    public IServiceProvider Services => _server.Services;

    /// <param name="catalog">The device catalog; the embedded one unless a test needs the CPU fixture (<see cref="TestCatalogs.WithCpuFixture"/>).</param>
    /// <param name="database">The owner's connection string of a test database made earlier; a fresh one when null.</param>
    public static async Task<TestServer> StartAsync(PostgresFixture postgres, IngestLimits? limits = null, TimeProvider? time = null, DeviceCatalog? catalog = null,
        CapacitySettings? capacity = null, CredentialRecheckPolicy? recheck = null, X509Certificate2? certificate = null, string? database = null, CallLimits? callLimits = null,
        bool reflection = true, int healthCheckPeriodMs = 5000, TelemetrySettings? telemetry = null, bool requireDurableReplication = false)
    {
        string connectionString = database ?? await postgres.CreateDatabaseAsync();
        var settings = new ServerSettings
        {
            Listen = new Uri("https://127.0.0.1:0"),
            Certificate = certificate ?? TestCertificates.Server,
            ConnectionString = PostgresFixture.AsRuntimeRole(connectionString),
            SigningKey = SigningKey,
            Limits = limits ?? new IngestLimits(),
            Time = time ?? TimeProvider.System,
            CredentialRecheck = recheck ?? CredentialRecheckPolicy.Default,
            Catalog = catalog ?? DeviceCatalog.LoadEmbedded(),
            Capacity = capacity ?? new CapacitySettings(),
            CallLimits = callLimits ?? new CallLimits(),
            Reflection = reflection,
            HealthCheckPeriodMs = healthCheckPeriodMs,
            Telemetry = telemetry ?? new TelemetrySettings(),
            RequireDurableReplication = requireDurableReplication,
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
