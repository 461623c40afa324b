using System.Text.Json;
using Grpc.Core;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Audit;

/// <summary>
/// DetectAnomalies and `metering audit anomalies` count every kind in full before the per-kind
/// cap cuts the list, say so where it does, filter kinds on the server, and refuse a kind that is
/// not one.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class AnomalySummaryTests(PostgresFixture postgres)
{
    private static readonly Metadata Auditor = TestServer.Bearer(TestServer.AuditorKey);

    /// <summary>Records streamed, each 5 minutes long and 10 minutes after the one before: 520 five-minute gaps, counting the one after the last.</summary>
    private const int Records = 520;

    private const long PeriodMs = 4 * 86_400_000L;

    /// <summary>A stream whose every gap is a silence at a 1-minute threshold: more silences than the per-kind cap of 500.</summary>
    private static async Task<AuditScene> GappedAsync(PostgresFixture postgres)
    {
        AuditScene scene = await AuditScene.StartAsync(postgres);
        List<UsageRecord> records = TestRecords.Range(1, Records);
        foreach (UsageRecord record in records)
        {
            record.StartUnixMs = TestRecords.BaseStartMs + ((long)record.Sequence - 1) * 600_000;
            record.EndUnixMs = record.StartUnixMs + 300_000;
        }

        await scene.StreamAsync("gappy", records);
        return scene;
    }

    private static DetectAnomaliesRequest Request(params AnomalyKind[] kinds) => new()
    {
        CreditCode = TestRecords.Provider,
        FromUnixMs = TestRecords.BaseStartMs,
        UntilUnixMs = TestRecords.BaseStartMs + PeriodMs,
        SilenceMinutes = 1,
        Kinds = { kinds },
    };

    [Fact]
    public async Task A_kind_cut_by_the_per_kind_cap_is_counted_in_full_and_a_kinds_filter_runs_only_that_kind()
    {
        await using AuditScene scene = await GappedAsync(postgres);
        var audit = new AuditService.AuditServiceClient(scene.Server.Channel);

        DetectAnomaliesResponse every = await audit.DetectAnomaliesAsync(Request(), Auditor);
        DetectAnomaliesResponse silences = await audit.DetectAnomaliesAsync(Request(AnomalyKind.AnomalySilentStream), Auditor);

        // Unfiltered: one count per kind, in the order of AnomalyKind, zero counts included.
        Assert.Equal(Enum.GetValues<AnomalyKind>().Where(k => k != AnomalyKind.Unspecified), every.Kinds.Select(k => k.Kind));
        AnomalyKindCount silent = every.Kinds.Single(k => k.Kind == AnomalyKind.AnomalySilentStream);
        Assert.Equal((Records, 500U, true), ((int)silent.Found, silent.Shown, silent.Truncated));
        Assert.Equal(500U, every.AnomaliesPerKindMax);
        Assert.All(every.Kinds.Where(k => k.Kind != AnomalyKind.AnomalySilentStream), k => Assert.Equal(k.Found, (ulong)k.Shown));
        Assert.Equal(every.Kinds.Sum(k => (long)k.Shown), every.Anomalies.Count);
        // This provider has no fleet validation, so the unfiltered run also reports its usage as unvalidated.
        Assert.True(every.Kinds.Single(k => k.Kind == AnomalyKind.AnomalyCapacityUnvalidated).Found > 0);

        // Filtered on the server: only the kind asked for ran and came back.
        Assert.Equal([AnomalyKind.AnomalySilentStream], silences.Kinds.Select(k => k.Kind));
        Assert.Equal((ulong)Records, silences.Kinds[0].Found);
        Assert.Equal(500, silences.Anomalies.Count);
        Assert.All(silences.Anomalies, a => Assert.Equal(AnomalyKind.AnomalySilentStream, a.Kind));
        Assert.Equal((ulong)Records, silences.RecordsExamined);
    }

    [Fact]
    public async Task A_kind_that_is_not_one_is_refused_by_name_and_not_logged()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync("cluster-a", 1, 5);
        var audit = new AuditService.AuditServiceClient(scene.Server.Channel);

        RpcException unknown = await Assert.ThrowsAsync<RpcException>(() => audit.DetectAnomaliesAsync(Request(AnomalyKind.AnomalyChainBroken, (AnomalyKind)99), Auditor).ResponseAsync);
        RpcException unspecified = await Assert.ThrowsAsync<RpcException>(() => audit.DetectAnomaliesAsync(Request(AnomalyKind.Unspecified), Auditor).ResponseAsync);

        Assert.Equal((StatusCode.InvalidArgument, "AUDIT_ANOMALY_KIND_UNKNOWN"), (unknown.StatusCode, IngestCall.Reason(unknown)));
        Assert.Equal((StatusCode.InvalidArgument, "AUDIT_ANOMALY_KIND_UNKNOWN"), (unspecified.StatusCode, IngestCall.Reason(unspecified)));
        Assert.Contains("kinds holds 99", unknown.Status.Detail, StringComparison.Ordinal);
        Assert.Contains("ANOMALY_KIND_UNSPECIFIED", unspecified.Status.Detail, StringComparison.Ordinal);
        Assert.Contains("ANOMALY_CAPACITY_UNVALIDATED", unknown.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM audit_query_log"));
    }

    [Fact]
    public async Task The_cli_prints_the_summary_first_says_where_the_cap_cut_and_prints_json_on_request()
    {
        await using AuditScene scene = await GappedAsync(postgres);
        string[] period = ["--provider", TestRecords.Provider, "--from", "2026-11-20", "--to", "2026-11-23", "--silence-minutes", "1"];

        var (textExit, text) = await CliProcess.RunAsAsync(scene.Server, TestServer.AuditorKey, ["audit", "anomalies", .. period, "--kind", "silent_stream"]);
        var (jsonExit, json) = await CliProcess.RunAsAsync(scene.Server, TestServer.AuditorKey, ["audit", "anomalies", .. period, "--kind", "SilentStream", "--output", "json"]);
        var (bogusExit, bogus) = await CliProcess.RunAsAsync(scene.Server, TestServer.AuditorKey, ["audit", "anomalies", .. period, "--kind", "ghost_usage"]);

        Assert.Equal((0, 0, 2), (textExit, jsonExit, bogusExit));
        int summary = text.IndexOf("520 SilentStream, showing the first 500", StringComparison.Ordinal);
        int firstAnomaly = text.IndexOf("\nSilentStream  ", StringComparison.Ordinal);
        Assert.True(summary > 0 && firstAnomaly > summary, text[..Math.Min(text.Length, 800)]);
        Assert.StartsWith($"Anomalies of {TestRecords.Provider} from 2026-11-20 to 2026-11-23, by kind (520 records examined):", text, StringComparison.Ordinal);
        Assert.DoesNotContain("CapacityUnvalidated", text, StringComparison.Ordinal);
        Assert.Contains("520 anomalies in 520 records; 500 shown.", text, StringComparison.Ordinal);

        using JsonDocument document = JsonDocument.Parse(json);
        JsonElement kind = Assert.Single(document.RootElement.GetProperty("kinds").EnumerateArray());
        Assert.Equal(("ANOMALY_SILENT_STREAM", "520", 500, true),
            (kind.GetProperty("kind").GetString(), kind.GetProperty("found").GetString(), kind.GetProperty("shown").GetInt32(), kind.GetProperty("truncated").GetBoolean()));
        Assert.Equal(500, document.RootElement.GetProperty("anomalies").GetArrayLength());

        Assert.Contains("--kind 'ghost_usage' is not an anomaly kind; the kinds are CapacityExceeded, DeviceDoubleBooked", bogus, StringComparison.Ordinal);
        // The refused run asked nothing: two queries are logged, not three.
        Assert.Equal(2L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM audit_query_log WHERE query = 'DetectAnomalies'"));
    }
}
