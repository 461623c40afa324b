using Metering.Server.Telemetry;
using OpenTelemetry.Exporter;

namespace Metering.Cli.Configuration;

/// <summary>
/// The settings area `Telemetry`: where `serve` publishes its measurements and traces, all off
/// unless set. `serve --metrics-listen`, `--metrics-public`, `--otlp-endpoint` and
/// `--otlp-protocol` set the same keys from the command line; OTEL_EXPORTER_OTLP_ENDPOINT and
/// OTEL_EXPORTER_OTLP_PROTOCOL, which every OpenTelemetry SDK reads, sit below METERING__Telemetry__….
/// </summary>
internal sealed class TelemetryOptions
{
    private static readonly string[] Protocols = ["grpc", "http/protobuf"];

    /// <summary>http://IP:PORT to serve the Prometheus scrape at /metrics on; empty serves none.</summary>
    public string MetricsListen { get; set; } = "";

    /// <summary>Serve <see cref="MetricsListen"/> on an address other than loopback: the endpoint has no key.</summary>
    public bool MetricsPublic { get; set; }

    /// <summary>An OTLP collector (http:// or https://) to export traces and metrics to; empty exports nothing.</summary>
    public string OtlpEndpoint { get; set; } = "";

    /// <summary>grpc (the collector's port 4317) or http/protobuf (4318).</summary>
    public string OtlpProtocol { get; set; } = "grpc";

    public void Validate()
    {
        Require(MetricsListen.Length == 0 || Absolute(MetricsListen) is not null, nameof(MetricsListen), "empty or an http://IP:PORT address");
        Require(OtlpEndpoint.Length == 0 || Absolute(OtlpEndpoint) is not null, nameof(OtlpEndpoint), "empty or an http:// or https:// address");
        Require(Protocols.Contains(OtlpProtocol), nameof(OtlpProtocol), "grpc or http/protobuf");
        if (ToSettings().MetricsRefusal() is { } refusal)
        {
            throw new ArgumentException($"Telemetry setting {nameof(MetricsListen)}: {refusal}.", nameof(MetricsListen));
        }
    }

    /// <summary>The server's telemetry settings; call once <see cref="Validate"/> has passed.</summary>
    public TelemetrySettings ToSettings() => new()
    {
        MetricsListen = MetricsListen.Length == 0 ? null : Absolute(MetricsListen),
        MetricsPublic = MetricsPublic,
        OtlpEndpoint = OtlpEndpoint.Length == 0 ? null : Absolute(OtlpEndpoint),
        OtlpProtocol = OtlpProtocol == "http/protobuf" ? OtlpExportProtocol.HttpProtobuf : OtlpExportProtocol.Grpc,
    };

    private static Uri? Absolute(string text) =>
        Uri.TryCreate(text, UriKind.Absolute, out Uri? uri) && (uri.Scheme == Uri.UriSchemeHttp || uri.Scheme == Uri.UriSchemeHttps) ? uri : null;

    private static void Require(bool condition, string name, string range)
    {
        if (!condition)
        {
            throw new ArgumentOutOfRangeException(name, $"Telemetry setting {name} must be {range}.");
        }
    }
}
