using System.Text;
using Grpc.Core;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Audit;

/// <summary>
/// The optional mean SM activity of a record (ingest.proto sm_active_bp) through the real server:
/// stored where sent and NULL where not, covered by the chain so that a rewrite is caught, and
/// read by the audit's allocated-but-idle detector (idle below 500 basis points for at least an
/// hour), which never takes a record without the figure for an idle one.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class AllocatedIdleTests(PostgresFixture postgres)
{
    private const string Stream = "gpu-a";
    private const long FiveMinutesMs = 300_000;

    private static readonly Metadata Auditor = TestServer.Bearer(TestServer.AuditorKey);

    /// <summary>2026-11-20T00:00Z = 08:00 in Shenzhen.</summary>
    private static readonly long Day0 = TestRecords.BaseStartMs;

    /// <summary>
    /// Consecutive five-minute records of one job on two H100s from <paramref name="startMs"/>,
    /// numbered from <paramref name="firstSequence"/>, each with the SM activity the function
    /// gives for its index (null: not reported).
    /// </summary>
    private static List<UsageRecord> Job(string jobId, ulong firstSequence, long startMs, int count, Func<int, uint?> smActiveBp)
    {
        var records = new List<UsageRecord>();
        for (int i = 0; i < count; i++)
        {
            UsageRecord record = TestRecords.Valid(firstSequence + (ulong)i);
            record.JobId = jobId;
            record.DeviceCount = 2;
            record.DeviceUuids.Clear();
            record.ClearEnergyMwh();
            record.StartUnixMs = startMs + i * FiveMinutesMs;
            record.EndUnixMs = record.StartUnixMs + FiveMinutesMs;
            if (smActiveBp(i) is uint bp)
            {
                record.SmActiveBp = bp;
            }

            records.Add(record);
        }

        return records;
    }

    /// <summary>
    /// Five jobs side by side on one stream, two hours each at most: idle (200 and 400 basis
    /// points in turn), busy, never measured, idle with one busy record in the middle, and idle
    /// with one unmeasured record in the middle. Only the first is an idle hour without a break.
    /// </summary>
    private static List<UsageRecord> FiveJobs()
    {
        var records = new List<UsageRecord>();
        records.AddRange(Job("train-idle", 1, Day0, 24, i => i % 2 == 0 ? 200u : 400u));
        records.AddRange(Job("train-busy", 25, Day0, 24, _ => 6_500u));
        records.AddRange(Job("train-unmeasured", 49, Day0, 24, _ => null));
        records.AddRange(Job("train-interrupted", 73, Day0, 23, i => i == 11 ? 500u : 100u));
        records.AddRange(Job("train-gap", 96, Day0, 23, i => i == 11 ? null : 100u));
        return records;
    }

    private static DetectAnomaliesRequest Request(params AnomalyKind[] kinds) => new()
    {
        CreditCode = TestRecords.Provider,
        FromUnixMs = Day0,
        UntilUnixMs = Day0 + 86_400_000,
        Kinds = { kinds },
    };

    private static string Fact(Metering.Protocol.V1.Anomaly anomaly, string name) => Assert.Single(anomaly.Facts, f => f.Name == name).Value;

    [Fact]
    public async Task An_idle_hour_of_a_job_is_flagged_with_its_figures_while_busy_and_interrupted_jobs_are_not()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync(Stream, FiveJobs());
        var audit = new AuditService.AuditServiceClient(scene.Server.Channel);

        DetectAnomaliesResponse idle = await audit.DetectAnomaliesAsync(Request(AnomalyKind.AnomalyAllocatedIdle), Auditor);
        DetectAnomaliesResponse every = await audit.DetectAnomaliesAsync(Request(), Auditor);

        Metering.Protocol.V1.Anomaly found = Assert.Single(idle.Anomalies);
        Assert.Equal((AnomalyKind.AnomalyAllocatedIdle, Stream, Day0, Day0 + 24 * FiveMinutesMs), (found.Kind, found.StreamId, found.FromUnixMs, found.UntilUnixMs));
        Assert.Equal("train-idle", Fact(found, "job_id"));
        Assert.Equal(("H100-SXM", "2", "120"), (Fact(found, "device_model"), Fact(found, "devices"), Fact(found, "idle_minutes")));
        Assert.Equal(("300", "500", "60"), (Fact(found, "sm_active_mean_bp"), Fact(found, "threshold_bp"), Fact(found, "idle_minutes_min")));
        Assert.Equal("job train-idle held 2 H100-SXM devices for 120 minutes at a mean SM activity of 3.00 %, below the idle threshold of 5.00 %", found.Summary);
        Assert.Equal(24u, found.EvidenceTotal);
        Assert.Equal(20, found.Evidence.Count);
        Assert.All(found.Evidence, row => Assert.True(row.HasSmActiveBp && row.SmActiveBp is 200 or 400, row.ToString()));

        // Unfiltered, the kind is counted in its place (last) and finds the same one anomaly.
        Assert.Equal(AnomalyKind.AnomalyAllocatedIdle, every.Kinds[^1].Kind);
        Assert.Equal(1UL, every.Kinds[^1].Found);
        Assert.Equal(["train-idle"], every.Anomalies.Where(a => a.Kind == AnomalyKind.AnomalyAllocatedIdle).Select(a => Fact(a, "job_id")));
    }

    [Fact]
    public async Task Records_that_report_no_activity_never_flag_however_long_they_run_and_stay_null()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        // Ten hours of one job without a figure, beside an hour measured at 0 exactly: absent is
        // not zero, and only the measured zero is idle.
        List<UsageRecord> records = Job("train-unmeasured", 1, Day0, 120, _ => null);
        records.AddRange(Job("train-zero", 121, Day0, 12, _ => 0u));
        await scene.StreamAsync(Stream, records);
        var audit = new AuditService.AuditServiceClient(scene.Server.Channel);

        DetectAnomaliesResponse idle = await audit.DetectAnomaliesAsync(Request(AnomalyKind.AnomalyAllocatedIdle), Auditor);

        Assert.Equal(["train-zero"], idle.Anomalies.Select(a => Fact(a, "job_id")));
        Assert.Equal("0", Fact(idle.Anomalies[0], "sm_active_mean_bp"));
        Assert.Equal(120L, await scene.Server.ScalarAsync<long>($"SELECT count(*) FROM usage_records WHERE stream_id = '{Stream}' AND sm_active_bp IS NULL"));
        Assert.Equal(12L, await scene.Server.ScalarAsync<long>($"SELECT count(*) FROM usage_records WHERE stream_id = '{Stream}' AND sm_active_bp = 0"));
    }

    [Fact]
    public async Task A_stream_with_figures_stores_each_one_as_sent_and_its_chain_verifies_to_the_acknowledged_head()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        byte[] head = await scene.StreamAsync(Stream, FiveJobs());
        var audit = new AuditService.AuditServiceClient(scene.Server.Channel);

        VerifyChainResponse verified = await audit.VerifyChainAsync(new VerifyChainRequest { CreditCode = TestRecords.Provider, StreamId = Stream }, Auditor);

        StreamVerification stream = Assert.Single(verified.Streams);
        Assert.True(stream.Intact, stream.Break?.ToString());
        Assert.Equal(118UL, stream.RecordsChecked);
        Assert.Equal(head, stream.ComputedHead.ToByteArray());
        Assert.Equal(24 + 1L, await scene.Server.ScalarAsync<long>($"SELECT count(*) FROM usage_records WHERE stream_id = '{Stream}' AND sm_active_bp IS NULL"));
        Assert.Equal(6_500L * 24, await scene.Server.ScalarAsync<long>($"SELECT sum(sm_active_bp) FROM usage_records WHERE stream_id = '{Stream}' AND job_id = 'train-busy'"));
        Assert.Equal(300L, await scene.Server.ScalarAsync<long>($"SELECT avg(sm_active_bp)::bigint FROM usage_records WHERE stream_id = '{Stream}' AND job_id = 'train-idle'"));
    }

    [Theory]
    [InlineData("a stored figure raised to look busy", "sm_active_bp = 9000", 2UL)]
    [InlineData("a stored figure removed", "sm_active_bp = NULL", 3UL)]
    [InlineData("a figure added to a record that reported none", "sm_active_bp = 9000", 50UL)]
    [InlineData("a stored figure set to zero", "sm_active_bp = 0", 30UL)]
    public async Task Rewriting_a_stored_figure_is_caught_by_verification_at_that_record(string rewrite, string assignment, ulong sequence)
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync(Stream, FiveJobs());
        var audit = new AuditService.AuditServiceClient(scene.Server.Channel);

        await scene.TamperAsync($"UPDATE usage_records SET {assignment} WHERE stream_id = '{Stream}' AND sequence = @sequence", new { sequence = (long)sequence });
        VerifyChainResponse verified = await audit.VerifyChainAsync(new VerifyChainRequest { CreditCode = TestRecords.Provider, StreamId = Stream }, Auditor);

        StreamVerification stream = Assert.Single(verified.Streams);
        Assert.False(stream.Intact, rewrite);
        Assert.Equal((sequence, ChainBreakKind.HashMismatch), (stream.Break.Sequence, stream.Break.Kind));
        Assert.Equal(sequence - 1, stream.RecordsChecked);
    }

    [Fact]
    public async Task A_replay_that_adds_changes_or_drops_a_figure_is_a_tamper_conflict_and_changes_nothing()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        List<UsageRecord> sent = FiveJobs();
        byte[] head = await scene.StreamAsync(Stream, sent);

        // Record 2 was sent with 400, record 49 without a figure: offer each back otherwise.
        UsageRecord[][] replays =
        [
            [.. sent.Take(1), With(sent[1], r => r.SmActiveBp = 9_000)],
            [.. sent.Take(1), With(sent[1], r => r.ClearSmActiveBp())],
            [.. sent.Take(48), With(sent[48], r => r.SmActiveBp = 0)],
        ];
        var conflicts = new List<(StatusCode, string?)>();
        foreach (UsageRecord[] replay in replays)
        {
            await using IngestCall call = await IngestCall.OpenAsync(scene.Server.Client(), Stream);
            RpcException refused = await call.SendRefusedAsync(replay);
            conflicts.Add((refused.StatusCode, IngestCall.Reason(refused)));
        }

        Assert.All(conflicts, c => Assert.Equal((StatusCode.AlreadyExists, "TAMPER_CONFLICT"), c));
        Assert.Equal(3L, await scene.Server.ScalarAsync<long>($"SELECT count(*) FROM tamper_conflicts WHERE stream_id = '{Stream}'"));
        Assert.Equal(head, await scene.Server.ScalarAsync<byte[]>($"SELECT chain_head FROM ingest_streams WHERE stream_id = '{Stream}'"));
        Assert.Equal(400L, await scene.Server.ScalarAsync<long>($"SELECT sm_active_bp FROM usage_records WHERE stream_id = '{Stream}' AND sequence = 2"));
    }

    [Fact]
    public async Task The_cli_lists_the_kind_and_the_report_shows_it()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync(Stream, FiveJobs());
        var audit = new AuditService.AuditServiceClient(scene.Server.Channel);

        var (exit, text) = await CliProcess.RunAsAsync(scene.Server, TestServer.AuditorKey,
            "audit", "anomalies", "--provider", TestRecords.Provider, "--from", "2026-11-20", "--to", "2026-11-20", "--kind", "allocated_idle");
        AuditReport report = await audit.RenderReportAsync(new RenderReportRequest { CreditCode = TestRecords.Provider, FromDay = "2026-11-20", ToDay = "2026-11-20" }, Auditor);

        Assert.True(exit == 0, text);
        Assert.Matches(@"\n  AllocatedIdle +1\n", text);
        Assert.Contains($"    {Stream} #1 job train-idle 2×H100-SXM 1/1 ", text, StringComparison.Ordinal);
        Assert.Contains(" SM 200 bp\n", text, StringComparison.Ordinal);
        Assert.Contains("job train-idle held 2 H100-SXM devices for 120 minutes", text, StringComparison.Ordinal);
        string html = Encoding.UTF8.GetString(report.Html.Span);
        Assert.Contains("<tr class=\"anomaly\" data-kind=\"AllocatedIdle\">", html, StringComparison.Ordinal);
        Assert.Contains("<dt>sm_active_mean_bp</dt><dd>300</dd>", html, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Exports_carry_each_figure_in_a_last_column_and_leave_an_unreported_one_empty()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync(Stream, [.. Job("train-idle", 1, Day0, 2, i => i == 0 ? 0u : 250u), .. Job("train-unmeasured", 3, Day0, 1, _ => null)]);
        var audit = new AuditService.AuditServiceClient(scene.Server.Channel);

        string[] lines = Encoding.UTF8.GetString(await ExportAsync(audit, ExportFormat.Csv)).TrimEnd('\n').Split('\n');
        byte[] parquet = await ExportAsync(audit, ExportFormat.Parquet);

        Assert.EndsWith(",committed_at,sm_active_bp", lines[0], StringComparison.Ordinal);
        Assert.Equal(["0", "250", ""], lines[1..].Select(l => l[(l.LastIndexOf(',') + 1)..]));
        using var stream = new MemoryStream(parquet);
        await using Parquet.ParquetReader reader = await Parquet.ParquetReader.CreateAsync(stream);
        Parquet.Schema.DataField field = reader.Schema.GetDataFields().Single(f => f.Name == "sm_active_bp");
        using Parquet.ParquetRowGroupReader group = reader.OpenRowGroupReader(0);
        var values = new int?[group.RowCount];
        await group.ReadAsync<int>(field, values);
        Assert.Equal([0, 250, null], values);
    }

    private static async Task<byte[]> ExportAsync(AuditService.AuditServiceClient audit, ExportFormat format)
    {
        var selection = new UsageSelection { CreditCode = TestRecords.Provider, FromUnixMs = Day0, UntilUnixMs = Day0 + 86_400_000 };
        using var call = audit.ExportUsage(new ExportUsageRequest { Selection = selection, Format = format }, Auditor);
        using var file = new MemoryStream();
        await foreach (ExportChunk chunk in call.ResponseStream.ReadAllAsync())
        {
            chunk.Data.WriteTo(file);
        }

        return file.ToArray();
    }

    private static UsageRecord With(UsageRecord record, Action<UsageRecord> change)
    {
        UsageRecord copy = record.Clone();
        change(copy);
        return copy;
    }
}
