using System.Net;
using Metering.Engine.Access;
using Metering.Engine.Capacity;
using Metering.Engine.Catalog;
using Metering.Engine.Ingest;
using Metering.Engine.Registry;
using Metering.Engine.Settlement;
using Metering.Engine.Storage;
using Metering.Engine.Vouchers;
using Metering.Server.Access;
using Metering.Server.Capacity;
using Metering.Server.Audit;
using Metering.Server.Ingest;
using Metering.Server.RawLogs;
using Metering.Server.Registry;
using Metering.Server.Settlement;
using Metering.Server.Vouchers;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Metering.Server.Hosting;

/// <summary>What a server needs: where to listen, which database, which limits. Credentials live in the database.</summary>
public sealed class ServerSettings
{
    /// <summary>An http:// address on which to serve gRPC over HTTP/2 without TLS; port 0 picks a free port.</summary>
    public Uri Listen { get; set; } = new("http://127.0.0.1:7390");

    public required string ConnectionString { get; init; }

    public IngestLimits Limits { get; init; } = new();

    public DeviceCatalog Catalog { get; init; } = DeviceCatalog.LoadEmbedded();

    public TimeProvider Time { get; init; } = TimeProvider.System;

    /// <summary>How often open streams look their key up again, so that a revoked key loses them.</summary>
    public CredentialRecheckPolicy CredentialRecheck { get; init; } = CredentialRecheckPolicy.Default;

    /// <summary>Per-caller limits on streams and audit calls, the authentication cache and the per-peer limit on unknown keys (proto/metering/v1/limits.md).</summary>
    public CallLimits CallLimits { get; init; } = new();

    /// <summary>Nonce lifetime, validation validity, the sampling levels and the capacity limits.</summary>
    public CapacitySettings Capacity { get; init; } = new();

    /// <summary>How the server logs; the CLI passes its console logger.</summary>
    public Action<ILoggingBuilder>? ConfigureLogging { get; init; }
}

/// <summary>A running Kestrel gRPC server over the engine. Dispose stops it.</summary>
public sealed class MeteringServer : IAsyncDisposable
{
    private readonly WebApplication _app;

    private MeteringServer(WebApplication app, Uri address)
    {
        _app = app;
        Address = address;
    }

    /// <summary>The address actually bound (with the real port when port 0 was asked for).</summary>
    public Uri Address { get; }

    public IServiceProvider Services => _app.Services;

    public static async Task<MeteringServer> StartAsync(ServerSettings settings, CancellationToken cancellationToken = default)
    {
        settings.Limits.Validate();
        settings.Capacity.Validate();
        settings.CallLimits.Validate();
        settings.CredentialRecheck.Validate();
        if (settings.Listen.Scheme != Uri.UriSchemeHttp)
        {
            throw new ArgumentException($"Listen address {settings.Listen} must be http:// (gRPC over cleartext HTTP/2; put TLS in front or use the mTLS option of the registry issue).");
        }

        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        if (settings.ConfigureLogging is not null)
        {
            settings.ConfigureLogging(builder.Logging);
        }

        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            IPAddress address = settings.Listen.Host == "localhost" ? IPAddress.Loopback : IPAddress.Parse(settings.Listen.DnsSafeHost);
            kestrel.Listen(address, settings.Listen.Port, listen => listen.Protocols = HttpProtocols.Http2);
            // Bulk streaming needs larger HTTP/2 windows than the interactive defaults.
            kestrel.Limits.Http2.InitialConnectionWindowSize = 16 * 1024 * 1024;
            kestrel.Limits.Http2.InitialStreamWindowSize = 8 * 1024 * 1024;
            kestrel.Limits.Http2.MaxStreamsPerConnection = 256;
        });

        builder.Services.AddSingleton(settings.Time);
        builder.Services.AddSingleton(settings.Catalog);
        builder.Services.AddSingleton(new RecordValidator(settings.Limits, settings.Catalog));
        builder.Services.AddSingleton(_ => Database.CreateDataSource(settings.ConnectionString));
        builder.Services.AddSingleton(provider => new UsageStore(provider.GetRequiredService<NpgsqlDataSource>()));
        builder.Services.AddSingleton(provider => new UploadStore(provider.GetRequiredService<NpgsqlDataSource>()));
        builder.Services.AddSingleton(provider => new CredentialStore(provider.GetRequiredService<NpgsqlDataSource>(), settings.Time));
        builder.Services.AddSingleton(provider => new AdmissionGate(provider.GetRequiredService<NpgsqlDataSource>()));
        builder.Services.AddSingleton(provider => new ProviderRegistry(provider.GetRequiredService<NpgsqlDataSource>(), settings.Catalog, settings.Time));
        builder.Services.AddSingleton(settings.CredentialRecheck);
        builder.Services.AddSingleton(settings.CallLimits);
        builder.Services.AddSingleton(provider => new CallLimiter(settings.CallLimits, settings.Time, provider.GetRequiredService<ILogger<CallLimiter>>()));
        builder.Services.AddSingleton(provider => new KeyLookupCache(provider.GetRequiredService<CredentialStore>(), settings.CallLimits));
        builder.Services.AddSingleton(provider => new FleetValidationService(provider.GetRequiredService<NpgsqlDataSource>(), settings.Catalog, settings.Capacity, settings.Time));
        builder.Services.AddSingleton(provider => new VoucherBook(provider.GetRequiredService<NpgsqlDataSource>(), settings.Time));
        builder.Services.AddSingleton(provider => new Redemptions(provider.GetRequiredService<NpgsqlDataSource>(), settings.Time));
        builder.Services.AddSingleton(provider => new DailySettlement(provider.GetRequiredService<NpgsqlDataSource>(), settings.Time,
            provider.GetRequiredService<ILoggerFactory>().CreateLogger<DailySettlement>()));
        builder.Services.AddSingleton<StreamLeases>();
        builder.Services.AddSingleton<AuthenticationInterceptor>();
        builder.Services.AddGrpc(grpc =>
        {
            grpc.Interceptors.Add<AuthenticationInterceptor>();
            grpc.MaxReceiveMessageSize = settings.Limits.MessageBytesMax;
            // Audit answers (a rendered report, a provider's stream verifications) are sent whole;
            // AuditGrpcService keeps each under this.
            grpc.MaxSendMessageSize = AuditGrpcService.ResponseBytesMax;
            grpc.EnableDetailedErrors = false;
        });

        WebApplication app = builder.Build();
        app.MapGrpcService<IngestGrpcService>();
        app.MapGrpcService<RawLogGrpcService>();
        app.MapGrpcService<RegistryGrpcService>();
        app.MapGrpcService<CapacityGrpcService>();
        app.MapGrpcService<VoucherGrpcService>();
        app.MapGrpcService<SettlementGrpcService>();
        app.MapGrpcService<AuditGrpcService>();
        await app.StartAsync(cancellationToken);

        string bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return new MeteringServer(app, new Uri(bound));
    }

    /// <summary>Completes when the host is asked to stop (Ctrl+C or SIGTERM in `serve`).</summary>
    public Task WaitForShutdownAsync(CancellationToken cancellationToken = default) => _app.WaitForShutdownAsync(cancellationToken);

    public async ValueTask DisposeAsync()
    {
        using var stopWithin = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        await _app.StopAsync(stopWithin.Token);
        await _app.DisposeAsync();
    }
}
