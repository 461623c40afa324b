using System.Text;
using Grpc.Core;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.RawLogs;

/// <summary>
/// SM activity from a JSON Lines upload whose mapping names the property (rawlog.proto
/// LogMapping.sm_active_property): stored as sm_active_bp where a line gives it and NULL where not,
/// covered by the chain as on the ingest stream, refused per line when out of range or not a number,
/// and read by the allocated-but-idle audit.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class RawLogSmActivityTests(PostgresFixture postgres)
{
    private const string Stream = "jobs-a";

    private static readonly Metadata Auditor = TestServer.Bearer(TestServer.AuditorKey);

    private static LogMapping Mapping(SmActiveScale scale)
    {
        LogMapping mapping = RawLogSamples.Mapping();
        mapping.SmActiveProperty = "sm_active";
        mapping.SmActiveScale = scale;
        return mapping;
    }

    private static string Line(string jobId, int startHour, int hours, string? smActive) =>
        $$"""{"job_id":"{{jobId}}","account":"lab-vision","gres":"h100","device_count":2,"start":"2026-11-20T{{startHour:00}}:00:00+08:00","end":"2026-11-20T{{startHour + hours:00}}:00:00+08:00"{{(smActive is null ? "" : ",\"sm_active\":" + smActive)}}}""" + "\n";

    private static byte[] Log(params string[] lines) => Encoding.UTF8.GetBytes(string.Concat(lines));

    private static async Task<UploadReport> UploadAsync(TestServer server, string uploadId, byte[] log, LogMapping mapping) =>
        await RawLogUploadTests.UploadAsync(server, uploadId, Stream, log, chunks: [log.Length], format: LogFormat.JsonLines, mapping: mapping);

    [Fact]
    public async Task Uploaded_figures_are_stored_as_basis_points_and_the_chain_verifies_to_the_reported_head()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        byte[] log = Log(Line("busy", 8, 2, "0.7315"), Line("text", 10, 1, "\"0.5\""), Line("unmeasured", 11, 1, null), Line("zero", 12, 1, "0"));

        UploadReport report = await UploadAsync(scene.Server, "u1", log, Mapping(SmActiveScale.Fraction));

        Assert.Equal((4ul, 0ul), (report.Records, report.LinesRefused));
        var stored = await scene.Server.QueryAsync<string>($"SELECT job_id || '=' || coalesce(sm_active_bp::text, 'null') FROM usage_records WHERE stream_id = '{Stream}' ORDER BY sequence");
        Assert.Equal(["busy=7315", "text=5000", "unmeasured=null", "zero=0"], stored);
        var audit = new AuditService.AuditServiceClient(scene.Server.Channel);
        VerifyChainResponse verified = await audit.VerifyChainAsync(new VerifyChainRequest { CreditCode = TestRecords.Provider, StreamId = Stream }, Auditor);
        StreamVerification stream = Assert.Single(verified.Streams);
        Assert.True(stream.Intact, stream.Break?.ToString());
        Assert.Equal(report.ChainHead.ToByteArray(), stream.ComputedHead.ToByteArray());
    }

    [Fact]
    public async Task The_same_records_sent_on_the_ingest_stream_give_the_same_chain_head()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        UploadReport report = await UploadAsync(scene.Server, "u1", Log(Line("busy", 8, 2, "73.15"), Line("unmeasured", 11, 1, null)), Mapping(SmActiveScale.Percent));

        // The stream path, on a second server, into a stream of the same name (the stream id is
        // hashed), from the same fields with the figure as the wire's own field.
        await using AuditScene streamed = await AuditScene.StartAsync(postgres);
        List<UsageRecord> records = [StreamRecord(1, "busy", 8, 2, 7_315), StreamRecord(2, "unmeasured", 11, 1, null)];
        byte[] streamHead = await streamed.StreamAsync(Stream, records);

        Assert.Equal(streamHead, report.ChainHead.ToByteArray());
    }

    private static UsageRecord StreamRecord(ulong sequence, string jobId, int startHour, int hours, uint? smActiveBp)
    {
        long start = new DateTimeOffset(2026, 11, 20, startHour, 0, 0, TimeSpan.FromHours(8)).ToUnixTimeMilliseconds();
        var record = new UsageRecord
        {
            Sequence = sequence,
            JobId = jobId,
            HolderCode = TestRecords.Holder,
            DeviceModel = "H100-SXM",
            DeviceCount = 2,
            ShareNumerator = 1,
            ShareDenominator = 1,
            StartUnixMs = start,
            EndUnixMs = start + (hours * 3_600_000L),
            Site = "sz-nanshan-dc1",
        };
        if (smActiveBp is uint bp)
        {
            record.SmActiveBp = bp;
        }

        return record;
    }

    [Theory]
    [InlineData("raised to look busy", "sm_active_bp = 9000", 1L)]
    [InlineData("removed", "sm_active_bp = NULL", 1L)]
    [InlineData("added where none was sent", "sm_active_bp = 9000", 2L)]
    public async Task Rewriting_an_uploaded_figure_is_caught_by_verification_at_that_record(string rewrite, string assignment, long sequence)
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await UploadAsync(scene.Server, "u1", Log(Line("idle", 8, 2, "125"), Line("unmeasured", 10, 1, null), Line("later", 11, 1, "9000")), Mapping(SmActiveScale.BasisPoints));

        await scene.TamperAsync($"UPDATE usage_records SET {assignment} WHERE stream_id = '{Stream}' AND sequence = @sequence", new { sequence });
        var audit = new AuditService.AuditServiceClient(scene.Server.Channel);
        VerifyChainResponse verified = await audit.VerifyChainAsync(new VerifyChainRequest { CreditCode = TestRecords.Provider, StreamId = Stream }, Auditor);

        StreamVerification stream = Assert.Single(verified.Streams);
        Assert.False(stream.Intact, rewrite);
        Assert.Equal(((ulong)sequence, ChainBreakKind.HashMismatch), (stream.Break.Sequence, stream.Break.Kind));
    }

    [Fact]
    public async Task A_cheater_s_out_of_range_or_garbage_figures_are_refused_per_line_and_store_nothing()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        byte[] log = Log(
            Line("good", 8, 1, "4200"),
            Line("above", 9, 1, "10001"),
            Line("negative", 10, 1, "-1"),
            Line("garbage", 11, 1, "\"very busy\""),
            Line("fractional", 12, 1, "99.5"),
            Line("good2", 13, 1, "10000"));

        UploadReport report = await UploadAsync(scene.Server, "cheat", log, Mapping(SmActiveScale.BasisPoints));

        Assert.Equal(
            [(2ul, "SM_ACTIVE_OUT_OF_RANGE"), (3ul, "SM_ACTIVE_OUT_OF_RANGE"), (4ul, "MALFORMED_LINE"), (5ul, "MALFORMED_LINE")],
            report.Errors.Select(e => (e.Line, e.Reason)));
        Assert.Equal((2ul, 4ul), (report.Records, report.LinesRefused));
        Assert.Equal(["good=4200", "good2=10000"], await scene.Server.QueryAsync<string>($"SELECT job_id || '=' || sm_active_bp FROM usage_records WHERE stream_id = '{Stream}' ORDER BY sequence"));
        Assert.Equal([1L, 2L], await scene.Server.QueryAsync<long>($"SELECT sequence FROM usage_records WHERE stream_id = '{Stream}' ORDER BY 1"));
    }

    [Fact]
    public async Task An_uploaded_idle_job_is_found_by_the_allocated_idle_audit()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await UploadAsync(scene.Server, "u1", Log(Line("busy", 8, 2, "0.73"), Line("idle", 10, 2, "0.0125"), Line("unmeasured", 12, 2, null)), Mapping(SmActiveScale.Fraction));
        var audit = new AuditService.AuditServiceClient(scene.Server.Channel);

        DetectAnomaliesResponse idle = await audit.DetectAnomaliesAsync(new DetectAnomaliesRequest
        {
            CreditCode = TestRecords.Provider,
            FromUnixMs = TestRecords.BaseStartMs,
            UntilUnixMs = TestRecords.BaseStartMs + 86_400_000,
            Kinds = { AnomalyKind.AnomalyAllocatedIdle },
        }, Auditor);

        Assert.Equal(["idle"], idle.Anomalies.Select(a => Assert.Single(a.Facts, f => f.Name == "job_id").Value));
    }

    [Theory]
    [InlineData(LogFormat.SacctParsable2, "sm_active", SmActiveScale.Fraction)]
    [InlineData(LogFormat.JsonLines, "sm_active", SmActiveScale.Unspecified)]
    [InlineData(LogFormat.JsonLines, "start", SmActiveScale.Percent)]
    public async Task A_header_naming_sm_activity_where_it_cannot_apply_is_refused_whole(LogFormat format, string property, SmActiveScale scale)
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        UploadHeader header = RawLogUploadTests.Header("u1", Stream, 100, 0, format, RawLogSamples.Mapping());
        header.Mapping.SmActiveProperty = property;
        header.Mapping.SmActiveScale = scale;

        using var call = server.RawLogClient().UploadLog(TestServer.Bearer());
        await call.RequestStream.WriteAsync(new LogChunk { Header = header });
        RpcException error = await Assert.ThrowsAsync<RpcException>(async () => await call.ResponseAsync);

        Assert.Equal((StatusCode.InvalidArgument, "HEADER_INVALID"), (error.StatusCode, IngestCall.Reason(error)));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM raw_log_uploads"));
    }
}
