using System.Globalization;
using System.Net;
using System.Text;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Metering.Protocol.V1;
using Metering.Server.Telemetry;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Telemetry;

/// <summary>
/// The Prometheus scrape endpoint, read over HTTP as Prometheus reads it, after real streams on a
/// real server. The engine's instruments are one per process, so each test compares a scrape
/// before with one after: the tests of this collection run one at a time.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class MetricsTests(PostgresFixture postgres)
{
    private static readonly TelemetrySettings LoopbackMetrics = new() { MetricsListen = new Uri("http://127.0.0.1:0") };

    [Fact]
    public async Task A_scrape_after_a_stream_finds_the_ingest_counters_moved_by_exactly_what_was_committed_and_refused()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, telemetry: LoopbackMetrics);
        using var http = new HttpClient();
        Uri scrape = new(server.MetricsAddress!, TelemetrySettings.ScrapePath);
        Scrape before = await Scrape.ReadAsync(http, scrape);
        string provider = $"provider=\"{TestRecords.Provider}\"";

        await using (IngestCall call = await IngestCall.OpenAsync(server.Client(), "metrics-a"))
        {
            await call.SendAsync(TestRecords.Range(1, 3));
            await call.SendAsync(TestRecords.Range(4, 7));
            // A replay of what is committed is acknowledged but commits nothing new.
            await call.SendAsync(TestRecords.Range(6, 7));
            await call.HeartbeatAsync();
            List<UsageRecord> refused = TestRecords.Range(8, 12);
            refused[2].DeviceModel = "NO-SUCH-GPU";
            RpcException error = await call.SendRefusedAsync(refused);
            Assert.Equal("UNKNOWN_DEVICE_MODEL", IngestCall.Reason(error));
        }

        // A stream refused at its open, before any engine rule: counted with every other call's refusals.
        RpcException badOpen = await IngestCall.OpenRefusedAsync(server.Client(), "no spaces allowed");
        Assert.Equal("STREAM_ID_INVALID", IngestCall.Reason(badOpen));

        Scrape after = await Scrape.ReadAsync(http, scrape);
        Assert.Equal(7, after.Sum("metering_ingest_records_committed_total", provider) - before.Sum("metering_ingest_records_committed_total", provider));
        Assert.Equal(7L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = 'metrics-a'"));
        string unknownModel = "reason=\"UNKNOWN_DEVICE_MODEL\"";
        Assert.Equal(5, after.Sum("metering_ingest_records_refused_total", provider, unknownModel) - before.Sum("metering_ingest_records_refused_total", provider, unknownModel));
        Assert.Equal(1, after.Sum("metering_ingest_refusals_total", provider, unknownModel) - before.Sum("metering_ingest_refusals_total", provider, unknownModel));
        Assert.Equal(1, after.Sum("metering_ingest_refusals_total", provider) - before.Sum("metering_ingest_refusals_total", provider));
        // Two batches committed new records; the replay committed none, the refused batch nothing.
        Assert.Equal(2, after.Sum("metering_ingest_batch_commit_duration_seconds_count") - before.Sum("metering_ingest_batch_commit_duration_seconds_count"));
        // Three batches were acknowledged, the replay included.
        Assert.Equal(3, after.Sum("metering_ingest_ack_duration_seconds_count") - before.Sum("metering_ingest_ack_duration_seconds_count"));
        Assert.Equal(1, after.Sum("metering_ingest_heartbeats_total", provider) - before.Sum("metering_ingest_heartbeats_total", provider));
        string method = "method=\"/metering.v1.IngestService/Stream\"";
        string streamIdInvalid = "reason=\"STREAM_ID_INVALID\"";
        Assert.Equal(1, after.Sum("metering_rpc_refusals_total", method, streamIdInvalid) - before.Sum("metering_rpc_refusals_total", method, streamIdInvalid));
        Assert.Equal(1, after.Sum("metering_rpc_refusals_total", method, unknownModel) - before.Sum("metering_rpc_refusals_total", method, unknownModel));
    }

    [Fact]
    public async Task An_open_stream_is_counted_while_it_is_open_and_not_after()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, telemetry: LoopbackMetrics);
        using var http = new HttpClient();
        Uri scrape = new(server.MetricsAddress!, TelemetrySettings.ScrapePath);
        string provider = $"provider=\"{TestRecords.Provider}\"";

        await using (IngestCall call = await IngestCall.OpenAsync(server.Client(), "metrics-open"))
        {
            Assert.Equal(1, (await Scrape.ReadAsync(http, scrape)).Sum("metering_ingest_streams_open", provider));
            await call.CompleteAsync();
        }

        // The server counts the stream closed when its handler returns, just after the client sees the end.
        double open = 1;
        for (int attempt = 0; attempt < 50 && open != 0; attempt++)
        {
            await Task.Delay(20);
            open = (await Scrape.ReadAsync(http, scrape)).Sum("metering_ingest_streams_open", provider);
        }

        Assert.Equal(0, open);
    }

    [Fact]
    public async Task Metrics_are_not_served_unless_asked_for_and_never_on_the_grpc_port()
    {
        await using TestServer plain = await TestServer.StartAsync(postgres);
        await using TestServer metered = await TestServer.StartAsync(postgres, database: null, telemetry: LoopbackMetrics);
        using var grpcPort = new HttpClient(new SocketsHttpHandler { SslOptions = { CertificateChainPolicy = TestCertificates.TrustOnly(TestCertificates.Ca) } }) { DefaultRequestVersion = HttpVersion.Version20, DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact };
        using var http = new HttpClient();

        Assert.Null(plain.MetricsAddress);
        Assert.Equal(HttpStatusCode.NotFound, (await grpcPort.GetAsync(new Uri(plain.Address, TelemetrySettings.ScrapePath))).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await grpcPort.GetAsync(new Uri(metered.Address, TelemetrySettings.ScrapePath))).StatusCode);
        Assert.NotEqual(metered.Address.Port, metered.MetricsAddress!.Port);
        // The metrics port serves the scrape and nothing else: no gRPC service, no other path.
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync(new Uri(metered.MetricsAddress, TelemetrySettings.ScrapePath))).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync(new Uri(metered.MetricsAddress, "/metering.v1.IngestService/Stream"))).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync(new Uri(metered.MetricsAddress, "/"))).StatusCode);
    }

    [Theory]
    [InlineData("http://0.0.0.0:9464", false, "is not a loopback address")]
    [InlineData("http://192.0.2.7:9464", false, "is not a loopback address")]
    [InlineData("https://127.0.0.1:9464", false, "must be http://IP:PORT")]
    [InlineData("http://127.0.0.1:9464/prom", false, "the scrape path is always /metrics")]
    [InlineData("http://metrics.example:9464", true, "must name an IP address")]
    public void A_metrics_address_that_is_not_loopback_http_is_refused_and_says_why(string address, bool isPublic, string why)
    {
        string? refusal = new TelemetrySettings { MetricsListen = new Uri(address), MetricsPublic = isPublic }.MetricsRefusal();

        Assert.NotNull(refusal);
        Assert.Contains(why, refusal, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("http://127.0.0.1:9464", false)]
    [InlineData("http://[::1]:9464", false)]
    [InlineData("http://localhost:9464", false)]
    [InlineData("http://0.0.0.0:9464", true)]
    public void A_loopback_metrics_address_or_a_public_one_with_its_flag_is_allowed(string address, bool isPublic)
    {
        Assert.Null(new TelemetrySettings { MetricsListen = new Uri(address), MetricsPublic = isPublic }.MetricsRefusal());
    }

    [Fact]
    public async Task Serve_refuses_a_non_loopback_metrics_address_without_metrics_public_before_it_opens_the_database()
    {
        // No database is reachable at this connection string: the refusal must come before it is tried.
        var (exit, output) = await CliProcess.RunAsync("serve", "--metrics-listen", "http://0.0.0.0:9464", "--connection", "Host=127.0.0.1;Port=1;Timeout=1");

        Assert.Equal(2, exit);
        Assert.Contains("is not a loopback address", output, StringComparison.Ordinal);
        Assert.Contains("--metrics-public", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Serve_with_metrics_listen_serves_the_scrape_the_readme_curls()
    {
        string database = await postgres.CreateDatabaseAsync();
        int port = ServerProcess.FreePort();
        int metricsPort = ServerProcess.FreePort();
        var address = new Uri($"http://127.0.0.1:{port}");

        await using ServerProcess server = await ServerProcess.StartAsync(address,
            "serve", "--connection", PostgresFixture.AsRuntimeRole(database), "--listen", address.ToString(), "--signing-key", ServerProcess.SigningKeyPath,
            "--metrics-listen", $"http://127.0.0.1:{metricsPort}");
        using GrpcChannel channel = GrpcChannel.ForAddress(server.Address);
        RpcException refused = await Assert.ThrowsAsync<RpcException>(() => new RawLogService.RawLogServiceClient(channel)
            .GetUploadAsync(new GetUploadRequest { UploadId = "no-such-upload" }, TestServer.Bearer()).ResponseAsync);
        Assert.Equal(StatusCode.NotFound, refused.StatusCode);
        using var http = new HttpClient();
        using HttpResponseMessage answer = await http.GetAsync(new Uri($"http://127.0.0.1:{metricsPort}/metrics"));
        string text = await answer.Content.ReadAsStringAsync();

        Assert.Equal(HttpStatusCode.OK, answer.StatusCode);
        Assert.StartsWith("text/plain", answer.Content.Headers.ContentType?.MediaType, StringComparison.Ordinal);
        // The process is the test's own, so its counters hold exactly this one call: its key was
        // read from the database once, and the call was refused.
        Assert.Contains("# TYPE metering_access_key_lookups_total counter", text, StringComparison.Ordinal);
        Assert.Matches(@"(?m)^metering_access_key_lookups_total\{[^}]*outcome=""miss""[^}]*\} 1( |$)", text);
        Assert.Matches(@"(?m)^metering_rpc_refusals_total\{[^}]*reason=""UPLOAD_NOT_FOUND"",status=""NOT_FOUND""\} 1( |$)", text);
        Assert.Contains(server.Output, line => line.Contains($"Serving Prometheus metrics on http://127.0.0.1:{metricsPort}/metrics", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_raw_log_upload_counts_its_lines_by_outcome_and_its_records_as_committed()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, telemetry: LoopbackMetrics);
        using var http = new HttpClient();
        Uri scrape = new(server.MetricsAddress!, TelemetrySettings.ScrapePath);
        byte[] sacct = Encoding.UTF8.GetBytes(RawLogSamples.Sacct);
        string provider = $"provider=\"{TestRecords.Provider}\"";
        Scrape before = await Scrape.ReadAsync(http, scrape);

        using var call = server.RawLogClient().UploadLog(TestServer.Bearer());
        await call.RequestStream.WriteAsync(new LogChunk
        {
            Header = new UploadHeader
            {
                UploadId = "metrics-upload", StreamId = "metrics-slurm", Format = LogFormat.SacctParsable2, Mapping = RawLogSamples.Mapping(), TotalBytes = (ulong)sacct.Length,
            },
        });
        await call.RequestStream.WriteAsync(new LogChunk { Data = ByteString.CopyFrom(sacct) });
        await call.RequestStream.CompleteAsync();
        UploadReport report = await call.ResponseAsync;

        Scrape after = await Scrape.ReadAsync(http, scrape);
        Assert.True(report.Records > 0 && report.LinesSkipped > 0 && report.LinesRefused > 0, "the sample has lines of every outcome but duplicates");
        double Lines(Scrape s, string outcome) => s.Sum("metering_rawlog_lines_total", provider, $"outcome=\"{outcome}\"");
        Assert.Equal(report.Records, Lines(after, "metered") - Lines(before, "metered"));
        Assert.Equal(report.LinesSkipped, Lines(after, "skipped") - Lines(before, "skipped"));
        Assert.Equal(report.LinesRefused, Lines(after, "refused") - Lines(before, "refused"));
        Assert.Equal(0, Lines(after, "duplicate") - Lines(before, "duplicate"));
        Assert.Equal(report.Records, after.Sum("metering_ingest_records_committed_total", provider) - before.Sum("metering_ingest_records_committed_total", provider));
    }

    [Fact]
    public async Task Verification_and_settlement_are_counted_by_what_they_did()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, telemetry: LoopbackMetrics);
        using var http = new HttpClient();
        Uri scrape = new(server.MetricsAddress!, TelemetrySettings.ScrapePath);
        await using (IngestCall call = await IngestCall.OpenAsync(server.Client(), "metrics-verify"))
        {
            await call.SendAsync(TestRecords.Range(1, 7));
        }

        long stored = await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE provider_id = @provider", new { provider = TestRecords.Provider });
        Scrape before = await Scrape.ReadAsync(http, scrape);

        var audit = new AuditService.AuditServiceClient(server.Channel);
        await audit.VerifyChainAsync(new VerifyChainRequest { CreditCode = TestRecords.Provider }, TestServer.Bearer(TestServer.AuditorKey));
        var settlement = new SettlementService.SettlementServiceClient(server.Channel);
        await settlement.SettleDayAsync(new SettleDayRequest { Day = "2026-11-20" }, TestServer.Bearer(TestServer.SettlementKey));
        await settlement.SettleDayAsync(new SettleDayRequest { Day = "2026-11-20" }, TestServer.Bearer(TestServer.SettlementKey));

        Scrape after = await Scrape.ReadAsync(http, scrape);
        // Verification re-hashes every stored record of the provider, proof streams included.
        Assert.Equal(stored, after.Sum("metering_audit_chain_verified_records_total") - before.Sum("metering_audit_chain_verified_records_total"));
        Assert.True(after.Sum("metering_audit_chain_verified_bytes_total") - before.Sum("metering_audit_chain_verified_bytes_total") > stored * 100);
        Assert.Equal(1, after.Sum("metering_settlement_run_duration_seconds_count", "result=\"closed\"") - before.Sum("metering_settlement_run_duration_seconds_count", "result=\"closed\""));
        Assert.Equal(1, after.Sum("metering_settlement_run_duration_seconds_count", "result=\"already_closed\"") - before.Sum("metering_settlement_run_duration_seconds_count", "result=\"already_closed\""));
    }

    [Fact]
    public async Task Serve_help_describes_the_metrics_and_otlp_options()
    {
        var (exit, output) = await CliProcess.RunAsync("serve", "--help");

        Assert.Equal(0, exit);
        Assert.Superset(new HashSet<string> { "--metrics-listen", "--metrics-public", "--otlp-endpoint", "--otlp-protocol" }, new HashSet<string>(CliHelp.Options(output)));
        Assert.Contains("/metrics", output, StringComparison.Ordinal);
        Assert.Contains("OTEL_EXPORTER_OTLP_ENDPOINT", output, StringComparison.Ordinal);
    }

    /// <summary>One scrape in the Prometheus text format: each sample line's name, labels and value.</summary>
    private sealed class Scrape(IReadOnlyList<(string Name, string Labels, double Value)> samples)
    {
        public static async Task<Scrape> ReadAsync(HttpClient http, Uri endpoint)
        {
            using HttpResponseMessage answer = await http.GetAsync(endpoint);
            Assert.Equal(HttpStatusCode.OK, answer.StatusCode);
            var samples = new List<(string, string, double)>();
            foreach (string line in (await answer.Content.ReadAsStringAsync()).Split('\n'))
            {
                if (line.Length == 0 || line[0] == '#')
                {
                    continue;
                }

                int labelsStart = line.IndexOf('{', StringComparison.Ordinal);
                int labelsEnd = line.LastIndexOf('}');
                int nameEnd = labelsStart >= 0 ? labelsStart : line.IndexOf(' ', StringComparison.Ordinal);
                string rest = line[((labelsEnd >= 0 ? labelsEnd + 1 : nameEnd) + 1)..].Trim();
                string value = rest.Split(' ')[0];
                samples.Add((line[..nameEnd], labelsStart >= 0 ? line[labelsStart..(labelsEnd + 1)] : "", double.Parse(value, CultureInfo.InvariantCulture)));
            }

            return new Scrape(samples);
        }

        /// <summary>The sum of the samples of <paramref name="name"/> whose labels hold every one of <paramref name="labels"/>; 0 when there is none yet.</summary>
        public double Sum(string name, params string[] labels) =>
            samples.Where(s => s.Name == name && labels.All(label => s.Labels.Contains(label, StringComparison.Ordinal))).Sum(s => s.Value);
    }
}
