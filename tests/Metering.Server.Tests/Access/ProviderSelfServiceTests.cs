using System.Text;
using Grpc.Core;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Access;

/// <summary>
/// A provider's key reads its own usage with the auditors' queries (QueryUsage, ExportUsage,
/// GetChainHashes beside the chains, roots and proofs), confined to its own credit code: another
/// provider's code, no code at all (every provider), or another provider's stream name under its
/// own code gets it nothing of the other's.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class ProviderSelfServiceTests(PostgresFixture postgres)
{
    private static readonly Metadata Me = TestServer.Bearer(TestServer.ProviderKey);

    private static UsageSelection Day(string code, string stream = "") => new()
    {
        CreditCode = code,
        StreamId = stream,
        FromUnixMs = TestRecords.BaseStartMs,
        UntilUnixMs = TestRecords.BaseStartMs + 86_400_000,
    };

    /// <summary>Both providers stream "cluster-x" (3 records mine, 5 theirs); only the other provider has "theirs-only" (4 records).</summary>
    private static async Task<AuditScene> SeedAsync(PostgresFixture postgres)
    {
        AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync("cluster-x", 1, 5, TestServer.OtherProviderKey);
        await scene.StreamAsync("theirs-only", 1, 4, TestServer.OtherProviderKey);
        await scene.StreamAsync("cluster-x", 1, 3);
        return scene;
    }

    private static async Task<(string Csv, ulong Records)> ExportAsync(AuditService.AuditServiceClient audit, UsageSelection selection)
    {
        using var call = audit.ExportUsage(new ExportUsageRequest { Selection = selection, Format = ExportFormat.Csv }, Me);
        var file = new MemoryStream();
        ulong records = 0;
        await foreach (ExportChunk chunk in call.ResponseStream.ReadAllAsync())
        {
            chunk.Data.WriteTo(file);
            records = chunk.Records;
        }

        return (Encoding.UTF8.GetString(file.ToArray()), records);
    }

    [Fact]
    public async Task A_provider_queries_and_exports_its_own_usage_and_the_query_log_names_the_provider_as_the_caller()
    {
        await using AuditScene scene = await SeedAsync(postgres);
        var audit = new AuditService.AuditServiceClient(scene.Server.Channel);

        QueryUsageResponse usage = await audit.QueryUsageAsync(new QueryUsageRequest { Selection = Day(TestRecords.Provider), GroupBy = UsageGroupBy.GroupByStream }, Me);
        var (csv, exported) = await ExportAsync(audit, Day(TestRecords.Provider));
        GetChainHashesResponse hashes = await audit.GetChainHashesAsync(new GetChainHashesRequest { CreditCode = TestRecords.Provider, StreamId = "cluster-x", Sequences = { 1, 3 } }, Me);

        // Its own three records, and none of the other provider's eight.
        Assert.Equal(3UL, usage.Total.Records);
        Assert.Equal([("cluster-x", 3UL)], usage.Groups.Select(g => (g.Key, g.Records)));
        Assert.Equal(3UL, exported);
        string[] rows = csv.TrimEnd('\n').Split('\n')[1..];
        Assert.Equal(3, rows.Length);
        Assert.All(rows, row => Assert.Contains(TestRecords.Provider, row, StringComparison.Ordinal));
        Assert.DoesNotContain(TestRecords.OtherProvider, csv, StringComparison.Ordinal);
        Assert.Equal(3UL, hashes.CommittedSequence);
        Assert.All(hashes.Hashes, h => Assert.True(h.Stored));

        // The query log records the provider's key as the caller, with its role, about itself.
        var logged = await scene.Server.QueryAsync<(string Actor, string Role, string Query, string Provider)>(
            "SELECT actor, role, query, provider_id FROM audit_query_log ORDER BY query_id");
        Assert.Equal(["QueryUsage", "ExportUsage", "GetChainHashes"], logged.Select(l => l.Query));
        // (a provider key's subject is its credit code).
        Assert.All(logged, l => Assert.Equal((TestRecords.Provider, "provider", TestRecords.Provider), (l.Actor, l.Role, l.Provider)));
    }

    [Fact]
    public async Task A_provider_naming_another_provider_or_none_is_refused_on_every_opened_query_and_nothing_is_logged()
    {
        await using AuditScene scene = await SeedAsync(postgres);
        var audit = new AuditService.AuditServiceClient(scene.Server.Channel);

        var refusals = new List<RpcException>
        {
            await Refused(audit.QueryUsageAsync(new QueryUsageRequest { Selection = Day(TestRecords.OtherProvider) }, Me).ResponseAsync),
            await Refused(audit.QueryUsageAsync(new QueryUsageRequest { Selection = Day("") }, Me).ResponseAsync),
            await Refused(ExportAsync(audit, Day(TestRecords.OtherProvider))),
            await Refused(ExportAsync(audit, Day(""))),
            await Refused(audit.GetChainHashesAsync(new GetChainHashesRequest { CreditCode = TestRecords.OtherProvider, StreamId = "theirs-only", Sequences = { 1 } }, Me).ResponseAsync),
            await Refused(audit.GetChainHashesAsync(new GetChainHashesRequest { StreamId = "theirs-only", Sequences = { 1 } }, Me).ResponseAsync),
        };

        Assert.All(refusals, e => Assert.Equal((StatusCode.PermissionDenied, "OTHER_PROVIDER"), (e.StatusCode, IngestCall.Reason(e))));
        // The empty code is named as what it would mean: every provider.
        Assert.Contains("must name its own credit code", refusals[1].Status.Detail, StringComparison.Ordinal);
        Assert.Contains(TestRecords.OtherProvider, refusals[0].Status.Detail, StringComparison.Ordinal);
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM audit_query_log"));
    }

    [Fact]
    public async Task A_provider_naming_another_providers_stream_under_its_own_code_gets_nothing_of_it()
    {
        await using AuditScene scene = await SeedAsync(postgres);
        var audit = new AuditService.AuditServiceClient(scene.Server.Channel);

        QueryUsageResponse usage = await audit.QueryUsageAsync(new QueryUsageRequest { Selection = Day(TestRecords.Provider, "theirs-only") }, Me);
        var (csv, exported) = await ExportAsync(audit, Day(TestRecords.Provider, "theirs-only"));
        GetChainHashesResponse hashes = await audit.GetChainHashesAsync(new GetChainHashesRequest { CreditCode = TestRecords.Provider, StreamId = "theirs-only", Sequences = { 1, 4 } }, Me);
        RpcException chain = await Refused(audit.VerifyChainAsync(new VerifyChainRequest { CreditCode = TestRecords.Provider, StreamId = "theirs-only" }, Me).ResponseAsync);
        RpcException proof = await Refused(audit.GetInclusionProofAsync(new GetInclusionProofRequest { CreditCode = TestRecords.Provider, StreamId = "theirs-only", Sequence = 1 }, Me).ResponseAsync);
        // The shared stream name under its own code is its own three records, not the other's five.
        QueryUsageResponse shared = await audit.QueryUsageAsync(new QueryUsageRequest { Selection = Day(TestRecords.Provider, "cluster-x") }, Me);

        Assert.Equal(0UL, usage.Total.Records);
        Assert.Equal((0UL, 1), (exported, csv.TrimEnd('\n').Split('\n').Length));
        Assert.Equal(0UL, hashes.CommittedSequence);
        Assert.All(hashes.Hashes, h => Assert.Equal((false, 0), (h.Stored, h.ChainHash.Length)));
        // Under its own code that stream does not exist: not found, as for any stream never opened.
        Assert.Equal((StatusCode.NotFound, "AUDIT_NOT_FOUND"), (chain.StatusCode, IngestCall.Reason(chain)));
        Assert.Equal((StatusCode.NotFound, "AUDIT_NOT_FOUND"), (proof.StatusCode, IngestCall.Reason(proof)));
        Assert.Equal(3UL, shared.Total.Records);
        // The other provider's own key sees its four records there: they exist, just not for this caller.
        QueryUsageResponse theirs = await audit.QueryUsageAsync(new QueryUsageRequest { Selection = Day(TestRecords.OtherProvider, "theirs-only") }, TestServer.Bearer(TestServer.OtherProviderKey));
        Assert.Equal(4UL, theirs.Total.Records);
    }

    [Fact]
    public async Task A_provider_key_runs_audit_usage_and_export_on_its_own_code_through_the_cli()
    {
        await using AuditScene scene = await SeedAsync(postgres);
        string path = Path.Combine(Path.GetTempPath(), $"own-{Guid.NewGuid():N}.csv");

        var (usageExit, usage) = await CliProcess.RunAsAsync(scene.Server, TestServer.ProviderKey, "audit", "usage", "--provider", TestRecords.Provider,
            "--from", "2026-11-20", "--to", "2026-11-20", "--by", "stream");
        var (exportExit, export) = await CliProcess.RunAsAsync(scene.Server, TestServer.ProviderKey, "audit", "export", "--provider", TestRecords.Provider,
            "--from", "2026-11-20", "--to", "2026-11-20", "--format", "csv", "--out", path);

        Assert.True((usageExit, exportExit) == (0, 0), usage + export);
        // Three records of 8 H100 for five minutes: 1,978,800,000 nPFh, 2.000 device-hours; the other provider's eight are not counted.
        Assert.Matches(@"total\s+3\s+2\.000\s+1\.978800000", usage);
        Assert.Contains($"Exported 3 records to {path}.", export, StringComparison.Ordinal);
        string[] lines = await File.ReadAllLinesAsync(path);
        Assert.Equal(3, lines.Count(l => l.StartsWith(TestRecords.Provider + ",cluster-x,", StringComparison.Ordinal)));
        Assert.Equal(4, lines.Length);
        File.Delete(path);
    }

    private static async Task<RpcException> Refused(Task call) => await Assert.ThrowsAsync<RpcException>(() => call);
}
