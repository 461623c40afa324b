using System.Net;
using Metering.Engine.Telemetry;
using Metering.Server.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using OpenTelemetry.Exporter;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace Metering.Server.Telemetry;

/// <summary>Where the server's measurements and traces go; all off unless asked for.</summary>
public sealed record TelemetrySettings
{
    /// <summary>The path Prometheus scrapes on <see cref="MetricsListen"/>.</summary>
    public const string ScrapePath = "/metrics";

    /// <summary>
    /// Where to serve the Prometheus scrape endpoint <see cref="ScrapePath"/>:
    /// http://IP:PORT, on a port of its own, never the gRPC one; null serves no metrics.
    /// </summary>
    public Uri? MetricsListen { get; init; }

    /// <summary>
    /// Serve metrics on a non-loopback address. The endpoint has no key: whoever reaches it reads
    /// provider ids and their volumes, so by default it is served on loopback only.
    /// </summary>
    public bool MetricsPublic { get; init; }

    /// <summary>An OTLP collector to export traces and metrics to; null exports nothing (unless OTEL_EXPORTER_OTLP_ENDPOINT is set).</summary>
    public Uri? OtlpEndpoint { get; init; }

    /// <summary>OTLP over gRPC (the collector's port 4317) or HTTP/protobuf (4318).</summary>
    public OtlpExportProtocol OtlpProtocol { get; init; } = OtlpExportProtocol.Grpc;

    /// <summary>Null when the metrics endpoint may be served as asked, else why not.</summary>
    public string? MetricsRefusal()
    {
        if (MetricsListen is not { } listen)
        {
            return null;
        }

        if (listen.Scheme != Uri.UriSchemeHttp || listen.AbsolutePath != "/" || listen.Query.Length > 0)
        {
            return $"metrics address {listen} must be http://IP:PORT; the scrape path is always {ScrapePath}";
        }

        if (listen.Host != "localhost" && !IPAddress.TryParse(listen.DnsSafeHost, out _))
        {
            return $"metrics address {listen} must name an IP address or localhost";
        }

        return IPAddress.IsLoopback(TransportRules.Bind(listen)) || MetricsPublic
            ? null
            : $"metrics address {listen} is not a loopback address: the scrape endpoint has no key, and anyone who reaches it reads provider ids and volumes. Serve it on 127.0.0.1, or pass --metrics-public if a firewall or a private network limits who reaches it";
    }

    /// <summary>The collector, from the settings or else from OTEL_EXPORTER_OTLP_ENDPOINT, the variable every OpenTelemetry SDK reads.</summary>
    internal Uri? EffectiveOtlpEndpoint() =>
        OtlpEndpoint ?? (Environment.GetEnvironmentVariable("OTEL_EXPORTER_OTLP_ENDPOINT") is { Length: > 0 } configured ? new Uri(configured) : null);
}

/// <summary>Wires the engine's meter and activity source (<see cref="MeteringTelemetry"/>) to OpenTelemetry.</summary>
internal static class TelemetryHosting
{
    /// <summary>Registers OpenTelemetry when metrics or OTLP export are asked for; otherwise nothing listens and the engine's instruments cost a branch each.</summary>
    public static void AddTelemetry(IServiceCollection services, TelemetrySettings settings)
    {
        Uri? otlp = settings.EffectiveOtlpEndpoint();
        if (settings.MetricsListen is null && otlp is null)
        {
            return;
        }

        OpenTelemetry.OpenTelemetryBuilder telemetry = services.AddOpenTelemetry()
            .ConfigureResource(resource => resource.AddService("metering", serviceVersion: typeof(TelemetryHosting).Assembly.GetName().Version?.ToString()));
        telemetry.WithMetrics(metrics =>
        {
            metrics.AddMeter(MeteringTelemetry.Name);
            if (settings.MetricsListen is not null)
            {
                // No response cache: a scrape sees every measurement made before it.
                metrics.AddPrometheusExporter(prometheus => prometheus.ScrapeResponseCacheDurationMilliseconds = 0);
            }

            if (otlp is not null)
            {
                metrics.AddOtlpExporter(exporter => Point(exporter, otlp, settings.OtlpProtocol, "v1/metrics"));
            }
        });
        if (otlp is not null)
        {
            telemetry.WithTracing(tracing => tracing
                .AddSource(MeteringTelemetry.Name)
                .AddOtlpExporter(exporter => Point(exporter, otlp, settings.OtlpProtocol, "v1/traces")));
        }
    }

    /// <summary>
    /// Over HTTP the exporter takes an endpoint set in code as the full URL of the signal, while
    /// OTEL_EXPORTER_OTLP_ENDPOINT names the collector's base: the signal's path is added here, so
    /// that both forms mean the same.
    /// </summary>
    private static void Point(OtlpExporterOptions exporter, Uri collector, OtlpExportProtocol protocol, string signalPath)
    {
        exporter.Protocol = protocol;
        exporter.Endpoint = protocol == OtlpExportProtocol.HttpProtobuf
            ? new Uri(collector.AbsoluteUri.TrimEnd('/') + "/" + signalPath)
            : collector;
    }

    /// <summary>Adds the metrics endpoint to Kestrel: HTTP/1.1 (what Prometheus and curl speak), each connection marked as the metrics port's.</summary>
    public static void Listen(KestrelServerOptions kestrel, TelemetrySettings settings)
    {
        if (settings.MetricsListen is not { } listen)
        {
            return;
        }

        kestrel.Listen(TransportRules.Bind(listen), listen.Port, options =>
        {
            options.Protocols = HttpProtocols.Http1;
            options.Use(next => connection =>
            {
                connection.Features.Set(MetricsConnection.Instance);
                return next(connection);
            });
        });
    }

    /// <summary>
    /// Answers every request on the metrics port before routing reaches the gRPC services: the
    /// scrape at <see cref="TelemetrySettings.ScrapePath"/>, 404 for anything else. The gRPC port never serves the scrape.
    /// </summary>
    public static void MapMetrics(WebApplication app, TelemetrySettings settings)
    {
        if (settings.MetricsListen is null)
        {
            return;
        }

        app.MapWhen(IsMetricsConnection, branch =>
        {
            branch.UseOpenTelemetryPrometheusScrapingEndpoint(TelemetrySettings.ScrapePath);
            branch.Run(static context =>
            {
                context.Response.StatusCode = StatusCodes.Status404NotFound;
                return Task.CompletedTask;
            });
        });
    }

    private static bool IsMetricsConnection(HttpContext context) => context.Features.Get<MetricsConnection>() is not null;

    /// <summary>Marks a connection accepted on the metrics port.</summary>
    private sealed class MetricsConnection
    {
        public static readonly MetricsConnection Instance = new();
    }
}
