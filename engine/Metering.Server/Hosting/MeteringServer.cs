using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using Metering.Engine.Access;
using Metering.Engine.Audit;
using Metering.Engine.Capacity;
using Metering.Engine.Catalog;
using Metering.Engine.Ingest;
using Metering.Engine.Registry;
using Metering.Engine.Sandbox;
using Metering.Engine.Settlement;
using Metering.Engine.Signing;
using Metering.Engine.Storage;
using Metering.Engine.Transparency;
using Metering.Engine.Vouchers;
using Metering.Server.Access;
using Metering.Server.Capacity;
using Metering.Server.Audit;
using Metering.Server.Ingest;
using Metering.Server.Localization;
using Metering.Server.RawLogs;
using Metering.Server.Registry;
using Metering.Server.Sandbox;
using Metering.Server.Settlement;
using Metering.Server.Telemetry;
using Metering.Server.Transparency;
using Metering.Server.Vouchers;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Server.Kestrel.Https;
using Grpc.AspNetCore.HealthChecks;
using Grpc.AspNetCore.Server.Model;
using Grpc.Health.V1;
using Grpc.HealthCheck;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Metering.Protocol.V1;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Npgsql;

namespace Metering.Server.Hosting;

/// <summary>What a server needs: where to listen, which database, which limits. Credentials live in the database.</summary>
public sealed class ServerSettings
{
    /// <summary>
    /// Where to serve gRPC over HTTP/2: https://IP:PORT with <see cref="Certificate"/>, or
    /// http://IP:PORT without TLS (loopback only, unless <see cref="Insecure"/>); port 0 picks a free port.
    /// </summary>
    public Uri Listen { get; set; } = new("http://127.0.0.1:7390");

    /// <summary>The server's TLS certificate with its private key (see <see cref="ServerCertificate.Load"/>); required for https://.</summary>
    public X509Certificate2? Certificate { get; init; }

    /// <summary>Allows cleartext http:// on a non-loopback address, where API keys would cross the network unprotected.</summary>
    public bool Insecure { get; init; }

    public required string ConnectionString { get; init; }

    /// <summary>
    /// The key the server signs receipts and tree heads with. It is kept outside the database, so
    /// that whoever can write the database cannot forge what the server signed.
    /// </summary>
    public required ServerSigningKey SigningKey { get; init; }

    public IngestLimits Limits { get; init; } = new();

    public DeviceCatalog Catalog { get; init; } = DeviceCatalog.LoadEmbedded();

    public TimeProvider Time { get; init; } = TimeProvider.System;

    /// <summary>How often open streams look their key up again, so that a revoked key loses them.</summary>
    public CredentialRecheckPolicy CredentialRecheck { get; init; } = CredentialRecheckPolicy.Default;

    /// <summary>Per-caller limits on streams and audit calls, the authentication cache and the per-peer limit on unknown keys (proto/metering/v1/limits.md).</summary>
    public CallLimits CallLimits { get; init; } = new();

    /// <summary>Nonce lifetime, validation validity, the sampling levels and the capacity limits.</summary>
    public CapacitySettings Capacity { get; init; } = new();

    /// <summary>How many connections read a day, the run's statement timeout and the fault-drill pause.</summary>
    public SettlementOptions Settlement { get; init; } = new();

    /// <summary>The anomaly detectors' thresholds; a caller's silence_minutes overrides the silence one per call.</summary>
    public DetectorSettings Anomalies { get; init; } = new();

    /// <summary>
    /// Serve even when the connection's role is a superuser or owns the schema
    /// (<see cref="ServingRole"/>); off by default, since such a role can drop the evidence guards.
    /// </summary>
    public bool AllowPrivilegedRole { get; init; }

    /// <summary>
    /// Serve grpc.reflection (v1 and v1alpha), without a key, so that grpcurl and similar tools
    /// can list the services; on by default. It discloses only what the published .proto files say.
    /// </summary>
    public bool Reflection { get; init; } = true;

    /// <summary>
    /// How often, in ms, the database health check runs; grpc.health.v1.Health answers from its
    /// latest result, so a change shows within this time (plus <see cref="DatabaseHealthCheck.Timeout"/>).
    /// </summary>
    public int HealthCheckPeriodMs { get; init; } = 5000;

    /// <summary>The shortest health check period: ASP.NET Core's publisher allows no less than a second.</summary>
    public const int HealthCheckPeriodMsMin = 1000;

    internal void ValidateHealthCheck()
    {
        if (HealthCheckPeriodMs < HealthCheckPeriodMsMin)
        {
            throw new ArgumentException($"The health check period is {HealthCheckPeriodMs} ms; it must be at least {HealthCheckPeriodMsMin} ms.");
        }
    }

    /// <summary>
    /// Acknowledge nothing unless the database replicates synchronously: synchronous_commit on or
    /// remote_apply and a synchronous standby attached (<see cref="ReplicationMonitor"/>). Off here;
    /// `metering serve` turns it on by default when its connection string names several hosts.
    /// </summary>
    public bool RequireDurableReplication { get; init; }

    /// <summary>How often, in ms, the server looks at the database's replication; the longest a lost standby goes unnoticed.</summary>
    public int ReplicationCheckPeriodMs { get; init; } = 1000;

    /// <summary>The bounds of <see cref="ReplicationCheckPeriodMs"/>: at least a tenth of a second, at most a minute.</summary>
    public const int ReplicationCheckPeriodMsMin = 100;

    public const int ReplicationCheckPeriodMsMax = 60_000;

    internal void ValidateReplicationCheck()
    {
        if (ReplicationCheckPeriodMs is < ReplicationCheckPeriodMsMin or > ReplicationCheckPeriodMsMax)
        {
            throw new ArgumentException($"The replication check period is {ReplicationCheckPeriodMs} ms; it must be {ReplicationCheckPeriodMsMin} to {ReplicationCheckPeriodMsMax} ms.");
        }
    }

    /// <summary>The Prometheus scrape endpoint and OTLP export, both off unless asked for.</summary>
    public TelemetrySettings Telemetry { get; init; } = new();

    /// <summary>How the server logs; the CLI passes its console logger.</summary>
    public Action<ILoggingBuilder>? ConfigureLogging { get; init; }
}

/// <summary>A running Kestrel gRPC server over the engine. Dispose stops it.</summary>
public sealed class MeteringServer : IAsyncDisposable
{
    private readonly WebApplication _app;

    private MeteringServer(WebApplication app, Uri address, Uri? metricsAddress)
    {
        _app = app;
        Address = address;
        MetricsAddress = metricsAddress;
    }

    /// <summary>The address actually bound (with the real port when port 0 was asked for).</summary>
    public Uri Address { get; }

    /// <summary>The metrics endpoint's address actually bound, scraped at /metrics; null when metrics are not served.</summary>
    public Uri? MetricsAddress { get; }

    public IServiceProvider Services => _app.Services;

    /// <summary>
    /// A simulated clock only on a sandbox database, and a sandbox only on its simulated clock,
    /// which takes the stored offset: time in a sandbox never jumps back to real time, and
    /// production time is never moved. A test's own TimeProvider is neither and passes.
    /// </summary>
    private static async Task CheckClockAsync(TimeProvider time, SandboxClockStore store, CancellationToken cancellationToken)
    {
        long? offset = await store.ReadOffsetAsync(cancellationToken);
        if (time is SimulatedClock simulated)
        {
            if (offset is not long stored)
            {
                throw new SandboxException(SandboxProblem.NotSandbox, "--clock simulated needs a sandbox database, and this one is not: make one with `metering db migrate --sandbox` on a new, empty database.");
            }

            simulated.MoveTo(stored);
        }
        else if (offset is not null && ReferenceEquals(time, TimeProvider.System))
        {
            throw new SandboxException(SandboxProblem.NotSandbox, "this database is a sandbox, whose time may run ahead of real time: serve it with --clock simulated.");
        }
    }

    public static async Task<MeteringServer> StartAsync(ServerSettings settings, CancellationToken cancellationToken = default)
    {
        settings.Limits.Validate();
        settings.Capacity.Validate();
        settings.CallLimits.Validate();
        settings.CredentialRecheck.Validate();
        settings.ValidateHealthCheck();
        settings.ValidateReplicationCheck();
        // Read the refusal messages now: a broken table fails the start, not every later refusal.
        _ = RefusalMessages.Reasons.Count;
        if (TransportRules.Refusal(settings.Listen, settings.Certificate is not null, settings.Insecure) is { } refusal)
        {
            throw new ArgumentException(refusal);
        }

        if (settings.Telemetry.MetricsRefusal() is { } metricsRefusal)
        {
            throw new ArgumentException(metricsRefusal);
        }

        await using (NpgsqlDataSource probe = Database.CreateDataSource(settings.ConnectionString))
        {
            if (!settings.AllowPrivilegedRole && await ServingRole.WhyPrivilegedAsync(probe, cancellationToken) is string why)
            {
                throw new PrivilegedRoleException(why);
            }

            await CheckClockAsync(settings.Time, new SandboxClockStore(probe), cancellationToken);
        }

        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        if (settings.ConfigureLogging is not null)
        {
            settings.ConfigureLogging(builder.Logging);
        }

        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.Listen(TransportRules.Bind(settings.Listen), settings.Listen.Port, listen =>
            {
                listen.Protocols = HttpProtocols.Http2;
                if (settings.Certificate is { } certificate)
                {
                    listen.UseHttps(Https(certificate));
                }
            });
            // Bulk streaming needs larger HTTP/2 windows than the interactive defaults.
            kestrel.Limits.Http2.InitialConnectionWindowSize = 16 * 1024 * 1024;
            kestrel.Limits.Http2.InitialStreamWindowSize = 8 * 1024 * 1024;
            kestrel.Limits.Http2.MaxStreamsPerConnection = 256;
            // After the gRPC endpoint, so that the bound addresses list it second.
            TelemetryHosting.Listen(kestrel, settings.Telemetry);
        });
        TelemetryHosting.AddTelemetry(builder.Services, settings.Telemetry);

        builder.Services.AddSingleton(settings.Time);
        builder.Services.AddSingleton(settings.Catalog);
        builder.Services.AddSingleton(settings.SigningKey);
        builder.Services.AddSingleton(new ReceiptSigner(settings.SigningKey, settings.Time));
        builder.Services.AddSingleton(new RecordValidator(settings.Limits, settings.Catalog));
        builder.Services.AddSingleton(_ => Database.CreateDataSource(settings.ConnectionString));
        builder.Services.AddSingleton(provider => new UsageStore(provider.GetRequiredService<NpgsqlDataSource>()));
        builder.Services.AddSingleton(provider => new GroupCommitter(provider.GetRequiredService<UsageStore>(), settings.Time, settings.Limits));
        builder.Services.AddSingleton(provider => new UploadStore(provider.GetRequiredService<NpgsqlDataSource>()));
        builder.Services.AddSingleton(provider => new PendingDays(provider.GetRequiredService<NpgsqlDataSource>(), settings.Time));
        builder.Services.AddSingleton(provider => new StatementNames(provider.GetRequiredService<NpgsqlDataSource>()));
        builder.Services.AddSingleton(provider => new Publication(provider.GetRequiredService<NpgsqlDataSource>(), settings.Time));
        builder.Services.AddSingleton(provider => new SandboxClockStore(provider.GetRequiredService<NpgsqlDataSource>()));
        builder.Services.AddSingleton(provider => new CredentialStore(provider.GetRequiredService<NpgsqlDataSource>(), settings.Time));
        builder.Services.AddSingleton(provider => new AdmissionGate(provider.GetRequiredService<NpgsqlDataSource>()));
        builder.Services.AddSingleton(provider => new ProviderRegistry(provider.GetRequiredService<NpgsqlDataSource>(), settings.Catalog, settings.Time,
            new RegistryFleetEvidence(), new RegistryProofEvidence(provider.GetRequiredService<NpgsqlDataSource>())));
        builder.Services.AddSingleton(settings.CredentialRecheck);
        builder.Services.AddSingleton(settings.CallLimits);
        builder.Services.AddSingleton(provider => new CallLimiter(settings.CallLimits, settings.Time, provider.GetRequiredService<ILogger<CallLimiter>>()));
        builder.Services.AddSingleton(provider => new KeyLookupCache(provider.GetRequiredService<CredentialStore>(), settings.CallLimits));
        builder.Services.AddSingleton(_ => new VerificationGate(settings.Capacity.VerificationsConcurrentMax));
        builder.Services.AddSingleton(provider => new NodeKeyService(provider.GetRequiredService<NpgsqlDataSource>(), settings.Capacity, settings.Time));
        builder.Services.AddSingleton(provider => new FleetValidationService(provider.GetRequiredService<NpgsqlDataSource>(), settings.Catalog, settings.Capacity, settings.Time,
            provider.GetRequiredService<VerificationGate>()));
        builder.Services.AddSingleton(provider => new VoucherBook(provider.GetRequiredService<NpgsqlDataSource>(), settings.Time));
        builder.Services.AddSingleton(provider => new Payouts(provider.GetRequiredService<NpgsqlDataSource>(), settings.Time));
        builder.Services.AddSingleton(provider => new YearEndReleases(provider.GetRequiredService<NpgsqlDataSource>(), settings.Time));
        builder.Services.AddSingleton(provider => new Redemptions(provider.GetRequiredService<NpgsqlDataSource>(), settings.Time));
        builder.Services.AddSingleton(provider => new DailySettlement(provider.GetRequiredService<NpgsqlDataSource>(), settings.Time,
            provider.GetRequiredService<ILoggerFactory>().CreateLogger<DailySettlement>(), settings.Settlement));
        builder.Services.AddSingleton(provider => new TransparencyLog(provider.GetRequiredService<NpgsqlDataSource>(), settings.SigningKey, settings.Time,
            provider.GetRequiredService<ILoggerFactory>().CreateLogger<TransparencyLog>()));
        builder.Services.AddAuditServices(settings.Catalog, settings.Time, settings.Anomalies);
        builder.Services.AddSingleton(settings);
        builder.Services.AddSingleton<ReplicationMonitor>();
        builder.Services.AddHostedService(provider => provider.GetRequiredService<ReplicationMonitor>());
        builder.Services.AddSingleton<PartitionCoverageMonitor>();
        builder.Services.AddHostedService(provider => provider.GetRequiredService<PartitionCoverageMonitor>());
        builder.Services.AddSingleton(new StreamLeases(settings.Limits.TakeoverWaitMax));
        builder.Services.AddSingleton<AuthenticationInterceptor>();
        builder.Services.AddSingleton<RefusalInterceptor>();
        builder.Services.AddSingleton<DurableAcknowledgementInterceptor>();
        builder.Services.AddGrpc(grpc =>
        {
            grpc.Interceptors.Add<AuthenticationInterceptor>();
            // Inside authentication, so that a refusal is logged with its authenticated caller.
            grpc.Interceptors.Add<RefusalInterceptor>();
            // Inside both: a caller refused for its key or role learns that first, and a write
            // refused for replication is counted like any refusal.
            grpc.Interceptors.Add<DurableAcknowledgementInterceptor>();
            grpc.MaxReceiveMessageSize = settings.Limits.MessageBytesMax;
            // Audit answers (a rendered report, a provider's stream verifications) are sent whole;
            // AuditGrpcService keeps each under this.
            grpc.MaxSendMessageSize = AuditGrpcService.ResponseBytesMax;
            grpc.EnableDetailedErrors = false;
        });
        // Health answers from the periodic check's latest result, never by querying per call:
        // it is served without a key.
        IHealthChecksBuilder checks = builder.Services.AddHealthChecks().AddCheck<DatabaseHealthCheck>(DatabaseHealthCheck.Name, HealthStatus.Unhealthy, timeout: DatabaseHealthCheck.Timeout);
        if (settings.RequireDurableReplication)
        {
            checks.AddCheck<ReplicationHealthCheck>(ReplicationHealthCheck.Name, HealthStatus.Unhealthy);
        }

        builder.Services.Configure<HealthCheckPublisherOptions>(publisher =>
        {
            publisher.Delay = TimeSpan.Zero;
            publisher.Period = TimeSpan.FromMilliseconds(settings.HealthCheckPeriodMs);
        });
        builder.Services.AddGrpcHealthChecks(health =>
        {
            health.UseHealthChecksCache = true;
            // Every service stands or falls with the database: a probe may name any of them.
            foreach (string service in ServedServices)
            {
                health.Services.Map(service, _ => true);
            }
        });
        if (settings.Reflection)
        {
            builder.Services.AddGrpcReflection();
        }

        // A request that does not parse is refused with a reason, not gRPC's bare UNKNOWN.
        builder.Services.RemoveAll(typeof(IServiceMethodProvider<>));
        builder.Services.TryAddEnumerable(ServiceDescriptor.Singleton(typeof(IServiceMethodProvider<>), typeof(MalformedMessageRefusal<>)));

        WebApplication app = builder.Build();
        TelemetryHosting.MapMetrics(app, settings.Telemetry);
        // Until the first check has run, health says NOT_SERVING rather than NOT_FOUND: the
        // services exist, and nothing has shown yet that the database answers.
        HealthServiceImpl health = app.Services.GetRequiredService<HealthServiceImpl>();
        foreach (ServiceMapping mapping in app.Services.GetRequiredService<IOptions<GrpcHealthChecksOptions>>().Value.Services)
        {
            health.SetStatus(mapping.Name, HealthCheckResponse.Types.ServingStatus.NotServing);
        }

        app.MapGrpcService<AccessGrpcService>();
        app.MapGrpcService<IngestGrpcService>();
        app.MapGrpcService<RawLogGrpcService>();
        app.MapGrpcService<RegistryGrpcService>();
        app.MapGrpcService<CapacityGrpcService>();
        app.MapGrpcService<VoucherGrpcService>();
        app.MapGrpcService<SettlementGrpcService>();
        app.MapGrpcService<AuditGrpcService>();
        app.MapGrpcService<TransparencyGrpcService>();
        app.MapGrpcService<SandboxGrpcService>();
        app.MapGrpcService<PublicationGrpcService>();
        app.MapGrpcHealthChecksService();
        if (settings.Reflection)
        {
            app.MapGrpcReflectionService();
        }

        await app.StartAsync(cancellationToken);

        // Kestrel lists the addresses in the order they were added: gRPC first, then metrics.
        string[] bound = [.. app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses];
        return new MeteringServer(app, new Uri(bound[0]), settings.Telemetry.MetricsListen is null ? null : new Uri(bound[1]));
    }

    /// <summary>The full names of the product's services, each of which health answers for by name too.</summary>
    private static readonly string[] ServedServices =
    [
        AccessService.Descriptor.FullName, IngestService.Descriptor.FullName, RawLogService.Descriptor.FullName,
        RegistryService.Descriptor.FullName, CapacityService.Descriptor.FullName, VoucherService.Descriptor.FullName,
        SettlementService.Descriptor.FullName, AuditService.Descriptor.FullName, TransparencyService.Descriptor.FullName,
        SandboxService.Descriptor.FullName, PublicationService.Descriptor.FullName,
    ];

    /// <summary>
    /// TLS 1.2 or 1.3 only. A client certificate is asked for but not required, and any is accepted
    /// at the TLS layer, self-signed included: providers make their own, and what matters is whether
    /// it is the one their key is pinned to, which <see cref="AuthenticationInterceptor"/> checks.
    /// </summary>
    private static HttpsConnectionAdapterOptions Https(X509Certificate2 certificate) => new()
    {
        ServerCertificate = certificate,
        SslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
        ClientCertificateMode = ClientCertificateMode.AllowCertificate,
        ClientCertificateValidation = static (_, _, _) => true,
        CheckCertificateRevocation = false,
    };

    /// <summary>Completes when the host is asked to stop (Ctrl+C or SIGTERM in `serve`).</summary>
    public Task WaitForShutdownAsync(CancellationToken cancellationToken = default) => _app.WaitForShutdownAsync(cancellationToken);

    public async ValueTask DisposeAsync()
    {
        using var stopWithin = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        await _app.StopAsync(stopWithin.Token);
        await _app.DisposeAsync();
    }
}
