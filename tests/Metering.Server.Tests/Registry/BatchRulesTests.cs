using System.Text.Json;
using Grpc.Core;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Registry;

/// <summary>
/// Batches carry their rules as data, through the real server and database: the 2025 batch as
/// the guide sets it, filing judged by the application's batch, rules frozen once the filing
/// window opens on the server's clock, corrections as versions with reasons, and bad rules and
/// wrong keys refused with nothing changed.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class BatchRulesTests(PostgresFixture postgres)
{
    private static readonly TimeSpan Shanghai = TimeSpan.FromHours(8);

    [Fact]
    public async Task The_2025_batch_is_seeded_with_the_figures_of_the_2025_guide()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);

        AdmissionBatch batch = (await scene.Client.ListAdmissionBatchesAsync(new ListAdmissionBatchesRequest(), RegistryScene.Operator)).Batches.Single(b => b.BatchId == "2025");

        // 六（二）网络填报时间：2025年3月14日--2025年4月7日（截至18：00）.
        Assert.Equal(new DateTimeOffset(2025, 3, 14, 0, 0, 0, Shanghai).ToUnixTimeMilliseconds(), batch.WindowOpensUnixMs);
        Assert.Equal(new DateTimeOffset(2025, 4, 7, 18, 0, 0, Shanghai).ToUnixTimeMilliseconds(), batch.WindowClosesUnixMs);
        // 四（三）有效期自认定之日起至2026年12月31日止: valid through the whole of that day.
        Assert.Equal(new DateTimeOffset(2027, 1, 1, 0, 0, 0, Shanghai).ToUnixTimeMilliseconds(), batch.ValidityEndsUnixMs);
        // 四（二）2. 智能算力规模为300P FLOPS（FP16）（含）以上: 300,000,000 GFLOPS, the bar itself included.
        Assert.Equal(300_000_000L, batch.CapacityMinimumGflops);
        // 五: the eight materials, （一） to （八）.
        Assert.Equal(
            [MaterialKind.BusinessLicence, MaterialKind.FinancialReport, MaterialKind.TaxCertificate, MaterialKind.IdcIspLicence,
             MaterialKind.CapacityProof, MaterialKind.MeteringLogProof, MaterialKind.ServiceAndFees, MaterialKind.CommitmentLetters],
            batch.MaterialsRequired);
        // 五（二）2024年度或2023年度（如客观原因不能提供2024年度的）…（注册未满一年的可提供验资报告）.
        Assert.Equal(2024U, batch.AuditReportYear);
        Assert.True(batch.AuditReportPriorYearWithReason);
        Assert.True(batch.CapitalVerificationForNewEntities);
        // The 2025 programme year's voucher parameters, and the least annual rental they hold (500,000 CNY).
        Assert.Equal(2025U, batch.VoucherProgrammeYear);
        Assert.Equal(50_000_000L, batch.MinAnnualRentalFen);
        Assert.Equal((1U, "migration batch_rules", ""), (batch.RulesVersion, batch.RulesRecordedBy, batch.CorrectionReason));
    }

    [Fact]
    public async Task A_batch_with_another_bar_accepts_and_refuses_by_its_own_bar_at_filing_and_at_verification()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key) = await scene.RegisterAsync();
        // Admissions.Filing declares 316.608 PFLOPS, which passes the guide's 300.
        await PutAsync(scene, Batch("high-bar", bar: 316_608_001));
        await PutAsync(scene, Batch("exact-bar", bar: 316_608_000, singleOperator: true));

        FileApplicationRequest high = RegistryScene.Filing(code, "gpu-high");
        high.BatchId = "high-bar";
        RpcException refused = await Assert.ThrowsAsync<RpcException>(() => scene.Client.FileApplicationAsync(high, key).ResponseAsync);
        FileApplicationRequest exact = RegistryScene.Filing(code, "gpu-exact");
        exact.BatchId = "exact-bar";
        Application filed = await scene.Client.FileApplicationAsync(exact, key);

        Assert.Equal((StatusCode.FailedPrecondition, "CAPACITY_BELOW_MINIMUM", "316608001"),
            (refused.StatusCode, IngestCall.Reason(refused), IngestCall.Metadata(refused, "capacity_minimum_gflops")));
        Assert.Contains("batch high-bar requires at least 316.608", refused.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(ApplicationState.AwaitingMaterialReview, filed.State);

        // Verification judges the verified figure by the same batch's bar: 310 PFLOPS would pass the guide's.
        await scene.Client.ReviewMaterialsAsync(new StageDecision { ApplicationId = filed.ApplicationId, Pass = true }, RegistryScene.Operator);
        RpcException low = await Assert.ThrowsAsync<RpcException>(() => scene.Client.RecordVerificationAsync(
            new VerificationDecision { ApplicationId = filed.ApplicationId, Pass = true, VerifiedFp16Gflops = 310_000_000 }, RegistryScene.Operator).ResponseAsync);
        Application verified = await scene.Client.RecordVerificationAsync(
            new VerificationDecision { ApplicationId = filed.ApplicationId, Pass = true, VerifiedFp16Gflops = 316_608_000 }, RegistryScene.Operator);

        Assert.Equal("CAPACITY_BELOW_MINIMUM", IngestCall.Reason(low));
        Assert.Equal(ApplicationState.AwaitingPublicNotice, verified.State);
    }

    [Fact]
    public async Task Capital_verification_is_taken_only_from_an_organisation_under_a_year_old_and_only_where_the_batch_allows_it()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        // The scene's clock stands on 2026-11-02: one is seven months old, the other eleven years.
        var (young, youngKey) = await scene.RegisterAsync(established: "2026-04-01");
        var (old, oldKey) = await scene.RegisterAsync(established: "2015-06-01");
        await PutAsync(scene, Batch("no-capital", capitalVerification: false));

        RpcException fromOld = await Assert.ThrowsAsync<RpcException>(() => scene.Client.FileApplicationAsync(CapitalVerification(old, RegistryScene.Batch), oldKey).ResponseAsync);
        RpcException whereRefused = await Assert.ThrowsAsync<RpcException>(() => scene.Client.FileApplicationAsync(CapitalVerification(young, "no-capital"), youngKey).ResponseAsync);
        Application taken = await scene.Client.FileApplicationAsync(CapitalVerification(young, RegistryScene.Batch), youngKey);
        // Optional, as the guide writes it (可提供): the young organisation may file its audit report instead.
        FileApplicationRequest audit = RegistryScene.Filing(young, "gpu-audit");
        audit.BatchId = "no-capital";
        Application audited = await scene.Client.FileApplicationAsync(audit, youngKey);

        Assert.Equal((StatusCode.FailedPrecondition, "CAPITAL_VERIFICATION_NOT_ACCEPTED"), (fromOld.StatusCode, IngestCall.Reason(fromOld)));
        Assert.Contains("2015-06-01", fromOld.Status.Detail, StringComparison.Ordinal);
        Assert.Equal((StatusCode.FailedPrecondition, "CAPITAL_VERIFICATION_NOT_ACCEPTED"), (whereRefused.StatusCode, IngestCall.Reason(whereRefused)));
        Assert.Contains("batch no-capital takes no capital verification report", whereRefused.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(ApplicationState.AwaitingMaterialReview, taken.State);
        Assert.Equal(ApplicationState.AwaitingMaterialReview, audited.State);
        Assert.Equal(2L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM applications WHERE provider_id IN (@young, @old)", new { young, old }));
    }

    [Fact]
    public async Task Rules_change_freely_before_the_window_opens_and_are_frozen_from_the_moment_it_opens_on_the_servers_clock()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        DateTimeOffset opens = scene.Clock.Now.AddDays(10);
        AdmissionBatch first = await PutAsync(scene, Batch("next", opens: opens));
        AdmissionBatch changed = await PutAsync(scene, Batch("next", opens: opens, bar: 400_000_000));
        AdmissionBatch same = await PutAsync(scene, Batch("next", opens: opens, bar: 400_000_000));

        Assert.Equal((1U, 2U, 2U), (first.RulesVersion, changed.RulesVersion, same.RulesVersion));
        Assert.Equal(["create", "change"], await BatchActionsAsync(scene, "next"));

        scene.Clock.Now = opens;
        long changes = await scene.Server.ScalarAsync<long>("SELECT count(*) FROM registry_history");
        RpcException frozen = await Assert.ThrowsAsync<RpcException>(() =>
            scene.Client.PutAdmissionBatchAsync(Batch("next", opens: opens, bar: 300_000_000), RegistryScene.Operator).ResponseAsync);

        Assert.Equal((StatusCode.FailedPrecondition, "BATCH_RULES_FROZEN", "capacity_minimum_gflops", "2"),
            (frozen.StatusCode, IngestCall.Reason(frozen), IngestCall.Metadata(frozen, "fields"), IngestCall.Metadata(frozen, "rules_version")));
        Assert.Equal(changes, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM registry_history"));
        Assert.Equal(400_000_000L, await scene.Server.ScalarAsync<long>("SELECT capacity_minimum_gflops FROM admission_batches WHERE batch_id = 'next'"));
        Assert.Equal(2L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM admission_batch_versions WHERE batch_id = 'next'"));
    }

    [Fact]
    public async Task An_operator_cannot_lower_the_bar_of_an_open_batch_silently_but_a_correction_with_its_reason_is_a_new_version_in_the_history()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key) = await scene.RegisterAsync();
        AdmissionBatch open = (await scene.Client.ListAdmissionBatchesAsync(new ListAdmissionBatchesRequest(), RegistryScene.Operator)).Batches.Single(b => b.BatchId == RegistryScene.Batch);
        FileApplicationRequest small = RegistryScene.Filing(code);
        small.Capacity[0].DeviceCount = 100;
        RpcException belowBar = await Assert.ThrowsAsync<RpcException>(() => scene.Client.FileApplicationAsync(small, key).ResponseAsync);
        Assert.Equal("CAPACITY_BELOW_MINIMUM", IngestCall.Reason(belowBar));
        long changes = await scene.Server.ScalarAsync<long>("SELECT count(*) FROM registry_history");

        // The cheat: the same batch, the bar quietly lowered so that the small fleet gets in.
        AdmissionBatch lowered = open.Clone();
        lowered.CapacityMinimumGflops = 100_000_000;
        RpcException silent = await Assert.ThrowsAsync<RpcException>(() => scene.Client.PutAdmissionBatchAsync(lowered, RegistryScene.Operator).ResponseAsync);
        lowered.CorrectionReason = "   ";
        RpcException blank = await Assert.ThrowsAsync<RpcException>(() => scene.Client.PutAdmissionBatchAsync(lowered, RegistryScene.Operator).ResponseAsync);

        Assert.Equal(("BATCH_RULES_FROZEN", "BATCH_RULES_FROZEN"), (IngestCall.Reason(silent), IngestCall.Reason(blank)));
        Assert.Equal(changes, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM registry_history"));
        Assert.Equal(1L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM admission_batch_versions WHERE batch_id = @batch", new { batch = RegistryScene.Batch }));
        await Assert.ThrowsAsync<RpcException>(() => scene.Client.FileApplicationAsync(small, key).ResponseAsync);

        // Made openly, as a correction with its reason, the change is version 2 in the history.
        lowered.CorrectionReason = "The bureau's notice of 2026-11-02 lowers the bar for this batch to 100 PFLOPS.";
        AdmissionBatch corrected = await scene.Client.PutAdmissionBatchAsync(lowered, RegistryScene.SecondOperator);
        Application filed = await scene.Client.FileApplicationAsync(small, key);

        Assert.Equal((2U, 100_000_000L, "operator-two", lowered.CorrectionReason),
            (corrected.RulesVersion, corrected.CapacityMinimumGflops, corrected.RulesRecordedBy, corrected.CorrectionReason));
        Assert.Equal(ApplicationState.AwaitingMaterialReview, filed.State);
        HistoryEntry entry = (await scene.Client.GetHistoryAsync(new GetHistoryRequest { Limit = 1_000 }, RegistryScene.Operator)).Entries
            .First(e => e.Entity == "batch" && e.EntityKey == RegistryScene.Batch);
        using JsonDocument before = JsonDocument.Parse(entry.BeforeJson);
        using JsonDocument after = JsonDocument.Parse(entry.AfterJson);
        Assert.Equal(("correct", "operator-two", scene.Clock.Now.ToUnixTimeMilliseconds()), (entry.Action, entry.Actor, entry.AtUnixMs));
        Assert.Equal((300_000_000L, 1), (before.RootElement.GetProperty("capacity_minimum_gflops").GetInt64(), before.RootElement.GetProperty("rules_version").GetInt32()));
        Assert.Equal((100_000_000L, 2), (after.RootElement.GetProperty("capacity_minimum_gflops").GetInt64(), after.RootElement.GetProperty("rules_version").GetInt32()));
        Assert.Equal(lowered.CorrectionReason, after.RootElement.GetProperty("correction_reason").GetString());
        Assert.Equal([(1, "", 300_000_000L), (2, lowered.CorrectionReason, 100_000_000L)],
            (await scene.Server.QueryAsync<(int, string, long)>(
                "SELECT version, coalesce(reason, ''), (rules ->> 'capacity_minimum_gflops')::bigint FROM admission_batch_versions WHERE batch_id = @batch ORDER BY version",
                new { batch = RegistryScene.Batch })).ToArray());
    }

    [Fact]
    public async Task A_correction_that_moves_the_opening_later_does_not_thaw_the_rules_for_a_quiet_change()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        AdmissionBatch open = (await scene.Client.ListAdmissionBatchesAsync(new ListAdmissionBatchesRequest(), RegistryScene.Operator)).Batches.Single(b => b.BatchId == RegistryScene.Batch);
        AdmissionBatch later = open.Clone();
        later.WindowOpensUnixMs = scene.Clock.Now.AddDays(2).ToUnixTimeMilliseconds();
        later.CorrectionReason = "The window reopens in two days.";
        await scene.Client.PutAdmissionBatchAsync(later, RegistryScene.Operator);

        AdmissionBatch quiet = later.Clone();
        quiet.CorrectionReason = "";
        quiet.CapacityMinimumGflops = 100_000_000;
        RpcException refused = await Assert.ThrowsAsync<RpcException>(() => scene.Client.PutAdmissionBatchAsync(quiet, RegistryScene.Operator).ResponseAsync);

        Assert.Equal(("BATCH_RULES_FROZEN", "capacity_minimum_gflops"), (IngestCall.Reason(refused), IngestCall.Metadata(refused, "fields")));
        Assert.Equal(300_000_000L, await scene.Server.ScalarAsync<long>("SELECT capacity_minimum_gflops FROM admission_batches WHERE batch_id = @batch", new { batch = RegistryScene.Batch }));
    }

    [Fact]
    public async Task A_setting_changes_on_an_open_batch_without_a_new_version_of_its_rules()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        AdmissionBatch open = (await scene.Client.ListAdmissionBatchesAsync(new ListAdmissionBatchesRequest(), RegistryScene.Operator)).Batches.Single(b => b.BatchId == RegistryScene.Batch);
        open.SingleOperatorDecisions = true;

        AdmissionBatch saved = await scene.Client.PutAdmissionBatchAsync(open, RegistryScene.Operator);

        Assert.Equal((true, 1U), (saved.SingleOperatorDecisions, saved.RulesVersion));
        Assert.Equal(["create", "change_setting"], await BatchActionsAsync(scene, RegistryScene.Batch));
    }

    [Fact]
    public async Task Rules_that_do_not_hold_are_refused_with_the_rule_named_and_change_nothing()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        long batches = await scene.Server.ScalarAsync<long>("SELECT count(*) FROM admission_batches");
        long versions = await scene.Server.ScalarAsync<long>("SELECT count(*) FROM admission_batch_versions");
        long changes = await scene.Server.ScalarAsync<long>("SELECT count(*) FROM registry_history");
        var cases = new (string Field, Action<AdmissionBatch> Break)[]
        {
            ("capacity_minimum_gflops", b => b.CapacityMinimumGflops = 0),
            ("capacity_minimum_gflops", b => b.CapacityMinimumGflops = -1),
            ("materials_required", b => b.MaterialsRequired.Clear()),
            ("materials_required", b => b.MaterialsRequired.Add(MaterialKind.Unspecified)),
            ("materials_required", b => b.MaterialsRequired.Add((MaterialKind)99)),
            ("materials_required", b => b.MaterialsRequired.Add(MaterialKind.TaxCertificate)),
            ("audit_report_year", b => b.AuditReportYear = 2026),
            ("voucher_programme_year", b => b.VoucherProgrammeYear = 0),
            ("voucher_programme_year", b => b.VoucherProgrammeYear = 2031),
            ("public_notice_days", b => b.PublicNoticeDays = 31),
        };

        foreach (var (field, breakIt) in cases)
        {
            AdmissionBatch bad = Batch("bad");
            breakIt(bad);
            RpcException refused = await Assert.ThrowsAsync<RpcException>(() => scene.Client.PutAdmissionBatchAsync(bad, RegistryScene.Operator).ResponseAsync);
            Assert.Equal((StatusCode.InvalidArgument, "BATCH_RULES_INVALID", field), (refused.StatusCode, IngestCall.Reason(refused), IngestCall.Metadata(refused, "field")));
        }

        AdmissionBatch reversed = Batch("bad");
        reversed.WindowClosesUnixMs = reversed.WindowOpensUnixMs;
        RpcException period = await Assert.ThrowsAsync<RpcException>(() => scene.Client.PutAdmissionBatchAsync(reversed, RegistryScene.Operator).ResponseAsync);
        Assert.Equal((StatusCode.InvalidArgument, "PERIOD_INVALID"), (period.StatusCode, IngestCall.Reason(period)));

        Assert.Equal(batches, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM admission_batches"));
        Assert.Equal(versions, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM admission_batch_versions"));
        Assert.Equal(changes, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM registry_history"));
    }

    [Fact]
    public async Task Only_an_operator_key_puts_a_batch()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        long changes = await scene.Server.ScalarAsync<long>("SELECT count(*) FROM registry_history");
        AdmissionBatch open = (await scene.Client.ListAdmissionBatchesAsync(new ListAdmissionBatchesRequest(), TestServer.Bearer(TestServer.ProviderKey))).Batches.Single(b => b.BatchId == RegistryScene.Batch);
        open.CapacityMinimumGflops = 1;
        open.CorrectionReason = "a provider would like a lower bar";

        foreach (string key in new[] { TestServer.ProviderKey, TestServer.AuditorKey, TestServer.SettlementKey })
        {
            RpcException refused = await Assert.ThrowsAsync<RpcException>(() => scene.Client.PutAdmissionBatchAsync(open, TestServer.Bearer(key)).ResponseAsync);
            Assert.Equal((StatusCode.PermissionDenied, "ROLE_NOT_ALLOWED"), (refused.StatusCode, IngestCall.Reason(refused)));
        }

        Assert.Equal(changes, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM registry_history"));
        Assert.Equal(300_000_000L, await scene.Server.ScalarAsync<long>("SELECT capacity_minimum_gflops FROM admission_batches WHERE batch_id = @batch", new { batch = RegistryScene.Batch }));
    }

    /// <summary>A batch with the guide's rules and the given bar, open from the scene's window opening unless told otherwise.</summary>
    private static AdmissionBatch Batch(string id, long bar = Admissions.GuideCapacityMinimumGflops, bool capitalVerification = true, bool singleOperator = false, DateTimeOffset? opens = null)
    {
        DateTimeOffset from = opens ?? RegistryScene.WindowOpens;
        AdmissionBatch batch = new AdmissionBatch
        {
            BatchId = id,
            WindowOpensUnixMs = from.ToUnixTimeMilliseconds(),
            WindowClosesUnixMs = from.AddDays(30).ToUnixTimeMilliseconds(),
            ValidityEndsUnixMs = from.AddDays(400).ToUnixTimeMilliseconds(),
            AuditReportYear = 2025,
            SingleOperatorDecisions = singleOperator,
        }.WithGuideRules();
        batch.CapacityMinimumGflops = bar;
        batch.CapitalVerificationForNewEntities = capitalVerification;
        return batch;
    }

    private static async Task<AdmissionBatch> PutAsync(RegistryScene scene, AdmissionBatch batch) =>
        await scene.Client.PutAdmissionBatchAsync(batch, RegistryScene.Operator);

    private static FileApplicationRequest CapitalVerification(string code, string batchId)
    {
        FileApplicationRequest filing = RegistryScene.Filing(code, "gpu-" + batchId);
        filing.BatchId = batchId;
        filing.FinancialReportKind = FinancialReportKind.CapitalVerification;
        filing.AuditReportYear = 0;
        return filing;
    }

    private static async Task<string[]> BatchActionsAsync(RegistryScene scene, string batchId) =>
        [.. await scene.Server.QueryAsync<string>("SELECT action FROM registry_history WHERE entity = 'batch' AND entity_key = @batchId ORDER BY change_id", new { batchId })];
}
