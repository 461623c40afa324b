using Grpc.Core;
using Metering.Engine.Registry;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using static Metering.Server.Fixtures.RegistryScene;
using Metering.Fixtures;
using ApplicationState = Metering.Protocol.V1.ApplicationState;
using ServiceItemAction = Metering.Protocol.V1.ServiceItemAction;
using ServiceItemStatus = Metering.Protocol.V1.ServiceItemStatus;
using HistoryEntry = Metering.Protocol.V1.HistoryEntry;
using ServiceItem = Metering.Protocol.V1.ServiceItem;
using Application = Metering.Protocol.V1.Application;
using FeeUnit = Metering.Protocol.V1.FeeUnit;

namespace Metering.Server.Tests.Registry;

/// <summary>
/// Every 2025 admission ends at 2026-12-31 24:00 Asia/Shanghai. A provider renews its item in a
/// later batch while the admission runs, and ingest sees one continuous admission across that
/// instant; without a renewal, or with one decided too late, usage past the end is refused.
/// The server's clock is the scene's; nothing here depends on the real date.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class RenewalTests(PostgresFixture postgres)
{
    private static readonly TimeSpan Shanghai = TimeSpan.FromHours(8);

    /// <summary>The end of every 2025 admission, as migration 0003 seeds the batch.</summary>
    private static readonly DateTimeOffset End2025 = new(2027, 1, 1, 0, 0, 0, Shanghai);

    private const string NextBatch = "2027";

    [Fact]
    public async Task A_stream_across_the_2025_admission_end_with_a_renewal_in_place_is_taken_on_both_sides_of_midnight()
    {
        await using RegistryScene scene = await StartAsync();
        var (code, key, admitted) = await Admit2025Async(scene);
        scene.Clock.Now = new DateTimeOffset(2026, 11, 10, 9, 0, 0, Shanghai);
        Application renewal = await scene.Client.FileApplicationAsync(Renewal(code, admitted.ApplicationId), key);
        Assert.Equal(admitted.ApplicationId, renewal.RenewsApplicationId);
        Application renewed = await DecideAllAsync(scene, renewal.ApplicationId, code, decideAt: new DateTimeOffset(2026, 11, 20, 10, 0, 0, Shanghai));

        // Admitted on 2026-11-20, the renewal starts where the 2025 admission ends, not at its decision.
        ServiceItem next = await ItemAsync(scene, code, key, renewed.ApplicationId);
        Assert.Equal((End2025.ToUnixTimeMilliseconds(), admitted.ApplicationId, ServiceItemStatus.Active), (next.ValidFromUnixMs, next.RenewsApplicationId, next.Status));
        Assert.Contains("without a gap", renewed.Stages.Single(s => s.Stage_ == "admission_notice").Reasons, StringComparison.Ordinal);
        GetHistoryResponse history = await scene.Client.GetHistoryAsync(new GetHistoryRequest { CreditCode = code }, RegistryScene.Operator);
        HistoryEntry renew = Assert.Single(history.Entries, e => e.Entity == "service_item" && e.Action == "renew");
        Assert.Contains($"\"renews_application_id\": {admitted.ApplicationId}", renew.AfterJson, StringComparison.Ordinal);

        // The stream opens before midnight and carries on after it.
        scene.Clock.Now = End2025.AddMinutes(-20);
        await using IngestCall call = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a", RegistryScene.KeyOf(key));
        Assert.Equal(1UL, (await call.SendAsync([At(1, End2025.AddMinutes(-30), minutes: 10)])).CommittedSequence);
        scene.Clock.Now = End2025.AddMinutes(20);
        Assert.Equal(2UL, (await call.SendAsync([At(2, End2025.AddMinutes(-5), minutes: 10)])).CommittedSequence);
        Assert.Equal(3UL, (await call.SendAsync([At(3, End2025.AddMinutes(5), minutes: 10)])).CommittedSequence);

        List<DateTime> starts = await scene.Server.QueryAsync<DateTime>(
            "SELECT start_at FROM usage_records WHERE provider_id = @code AND stream_id = 'cluster-a' ORDER BY sequence", new { code });
        Assert.Equal([End2025.AddMinutes(-30).UtcDateTime, End2025.AddMinutes(-5).UtcDateTime, End2025.AddMinutes(5).UtcDateTime], starts);
    }

    [Fact]
    public async Task Without_a_renewal_the_stream_is_refused_as_expired_from_the_first_record_past_the_end()
    {
        await using RegistryScene scene = await StartAsync();
        var (code, key, _) = await Admit2025Async(scene);

        scene.Clock.Now = End2025.AddMinutes(-20);
        await using IngestCall call = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a", RegistryScene.KeyOf(key));
        Assert.Equal(1UL, (await call.SendAsync([At(1, End2025.AddMinutes(-30), minutes: 10)])).CommittedSequence);
        scene.Clock.Now = End2025.AddMinutes(20);
        Assert.Equal(2UL, (await call.SendAsync([At(2, End2025.AddMinutes(-10), minutes: 10)])).CommittedSequence);

        RpcException error = await call.SendRefusedAsync([At(3, End2025.AddMinutes(-5), minutes: 10)]);
        Assert.Equal((StatusCode.FailedPrecondition, "ADMISSION_EXPIRED"), (error.StatusCode, IngestCall.Reason(error)));
        Assert.Contains("2027-01-01 00:00:00 Asia/Shanghai", error.Status.Detail, StringComparison.Ordinal);

        await using IngestCall after = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a", RegistryScene.KeyOf(key));
        RpcException wholly = await after.SendRefusedAsync([At(3, End2025.AddMinutes(1), minutes: 10)]);
        Assert.Equal("ADMISSION_EXPIRED", IngestCall.Reason(wholly));
        Assert.Equal(2L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE provider_id = @code AND stream_id = 'cluster-a'", new { code }));
    }

    [Fact]
    public async Task A_renewal_decided_after_the_end_starts_at_its_decision_and_usage_in_the_gap_is_refused()
    {
        await using RegistryScene scene = await StartAsync();
        var (code, key, admitted) = await Admit2025Async(scene);
        scene.Clock.Now = new DateTimeOffset(2026, 12, 10, 9, 0, 0, Shanghai);
        Application renewal = await scene.Client.FileApplicationAsync(Renewal(code, admitted.ApplicationId), key);
        DateTimeOffset decidedAt = new(2027, 1, 3, 10, 0, 0, Shanghai);
        Application renewed = await DecideAllAsync(scene, renewal.ApplicationId, code, decideAt: decidedAt);

        ServiceItem next = await ItemAsync(scene, code, key, renewed.ApplicationId);
        Assert.Equal(decidedAt.ToUnixTimeMilliseconds(), next.ValidFromUnixMs);
        Assert.Contains("whose admission ended at 2027-01-01 00:00", renewed.Stages.Single(s => s.Stage_ == "admission_notice").Reasons, StringComparison.Ordinal);

        scene.Clock.Now = decidedAt.AddDays(1);
        await using IngestCall call = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a", RegistryScene.KeyOf(key));
        Assert.Equal(1UL, (await call.SendAsync([At(1, End2025.AddMinutes(-10), minutes: 10)])).CommittedSequence);
        RpcException gap = await call.SendRefusedAsync([At(2, End2025.AddDays(1), minutes: 10)]);
        Assert.Equal("ADMISSION_EXPIRED", IngestCall.Reason(gap));

        await using IngestCall resumed = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a", RegistryScene.KeyOf(key));
        Assert.Equal(2UL, (await resumed.SendAsync([At(2, decidedAt.AddHours(1), minutes: 10)])).CommittedSequence);
    }

    [Fact]
    public async Task A_renewal_of_another_item_or_of_another_organisations_admission_is_refused_and_changes_nothing()
    {
        await using RegistryScene scene = await StartAsync();
        var (code, key, admitted) = await Admit2025Async(scene);
        var (other, otherKey) = await scene.RegisterAsync();
        scene.Clock.Now = new DateTimeOffset(2026, 11, 10, 9, 0, 0, Shanghai);
        long applications = await scene.Server.ScalarAsync<long>("SELECT count(*) FROM applications");

        FileApplicationRequest otherItem = Renewal(code, admitted.ApplicationId);
        otherItem.ServiceItem = "gpu-inference";
        await AssertRefusedAsync(scene, otherItem, key, StatusCode.FailedPrecondition, "RENEWAL_INVALID", "not 'gpu-inference'");

        // Another organisation cannot step into the slot by naming someone else's admission.
        await AssertRefusedAsync(scene, Renewal(other, admitted.ApplicationId), otherKey, StatusCode.FailedPrecondition, "RENEWAL_INVALID", $"admitted no service item of {other}");

        // An item still admitted is applied for again only as a renewal.
        FileApplicationRequest plain = Renewal(code, admitted.ApplicationId);
        plain.RenewsApplicationId = 0;
        await AssertRefusedAsync(scene, plain, key, StatusCode.AlreadyExists, "SERVICE_ITEM_TAKEN", $"renews_application_id {admitted.ApplicationId}");

        Assert.Equal(applications, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM applications"));
    }

    [Fact]
    public async Task A_renewal_in_the_same_batch_or_one_that_ends_no_later_is_refused()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key, admitted) = await scene.AdmitAsync();

        FileApplicationRequest same = RegistryScene.Filing(code);
        same.RenewsApplicationId = admitted.ApplicationId;
        await AssertRefusedAsync(scene, same, key, StatusCode.FailedPrecondition, "RENEWAL_INVALID", "a renewal is filed in a later batch");

        await scene.Client.PutAdmissionBatchAsync(new AdmissionBatch
        {
            BatchId = "overlapping",
            WindowOpensUnixMs = RegistryScene.WindowOpens.ToUnixTimeMilliseconds(),
            WindowClosesUnixMs = RegistryScene.WindowCloses.ToUnixTimeMilliseconds(),
            ValidityEndsUnixMs = RegistryScene.ValidityEnds.ToUnixTimeMilliseconds(),
            AuditReportYear = 2025,
        }.WithGuideRules(), RegistryScene.Operator);
        same.BatchId = "overlapping";
        await AssertRefusedAsync(scene, same, key, StatusCode.FailedPrecondition, "RENEWAL_INVALID", "a renewal is filed in a later batch");
    }

    [Fact]
    public async Task A_second_renewal_is_refused_while_one_is_in_progress_and_after_one_is_admitted()
    {
        await using RegistryScene scene = await StartAsync();
        var (code, key, admitted) = await Admit2025Async(scene);
        scene.Clock.Now = new DateTimeOffset(2026, 11, 10, 9, 0, 0, Shanghai);
        Application first = await scene.Client.FileApplicationAsync(Renewal(code, admitted.ApplicationId), key);

        await AssertRefusedAsync(scene, Renewal(code, admitted.ApplicationId), key, StatusCode.AlreadyExists, "SERVICE_ITEM_TAKEN", "in progress");

        Application renewed = await DecideAllAsync(scene, first.ApplicationId, code, decideAt: new DateTimeOffset(2026, 11, 20, 10, 0, 0, Shanghai));
        await AssertRefusedAsync(scene, Renewal(code, admitted.ApplicationId), key, StatusCode.AlreadyExists, "SERVICE_ITEM_TAKEN", $"already renewed by application {renewed.ApplicationId}");
    }

    [Fact]
    public async Task Revoking_the_admission_in_force_ends_its_admitted_renewal_so_usage_after_midnight_stays_refused()
    {
        await using RegistryScene scene = await StartAsync();
        var (code, key, admitted) = await Admit2025Async(scene);
        scene.Clock.Now = new DateTimeOffset(2026, 11, 10, 9, 0, 0, Shanghai);
        Application renewal = await scene.Client.FileApplicationAsync(Renewal(code, admitted.ApplicationId), key);
        Application renewed = await DecideAllAsync(scene, renewal.ApplicationId, code, decideAt: new DateTimeOffset(2026, 11, 20, 10, 0, 0, Shanghai));

        scene.Clock.Now = new DateTimeOffset(2026, 12, 20, 10, 0, 0, Shanghai);
        await scene.Client.ChangeServiceItemStatusAsync(Change(code, ServiceItemAction.Revoke, "Usage logs were altered."), RegistryScene.Operator);

        ServiceItem next = await ItemAsync(scene, code, key, renewed.ApplicationId);
        Assert.Equal(ServiceItemStatus.Revoked, next.Status);
        scene.Clock.Now = End2025.AddHours(2);
        await using IngestCall call = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a", RegistryScene.KeyOf(key));
        RpcException error = await call.SendRefusedAsync([At(1, End2025.AddHours(1), minutes: 10)]);
        Assert.Equal("ADMISSION_REVOKED", IngestCall.Reason(error));

        // Nothing is left to reinstate or exit: the revocation took both admissions.
        RpcException again = await Assert.ThrowsAsync<RpcException>(() => scene.Client.ChangeServiceItemStatusAsync(Change(code, ServiceItemAction.Reinstate, ""), RegistryScene.Operator).ResponseAsync);
        Assert.Equal("STATUS_CHANGE_INVALID", IngestCall.Reason(again));
    }

    [Fact]
    public async Task Withdrawing_rejects_a_renewal_in_progress()
    {
        await using RegistryScene scene = await StartAsync();
        var (code, key, admitted) = await Admit2025Async(scene);
        scene.Clock.Now = new DateTimeOffset(2026, 11, 10, 9, 0, 0, Shanghai);
        Application renewal = await scene.Client.FileApplicationAsync(Renewal(code, admitted.ApplicationId), key);

        await scene.Client.ChangeServiceItemStatusAsync(Change(code, ServiceItemAction.Withdraw, "Leaving the programme."), RegistryScene.Operator);

        Application rejected = await scene.Client.GetApplicationAsync(new GetApplicationRequest { ApplicationId = renewal.ApplicationId }, key);
        Assert.Equal(ApplicationState.Rejected, rejected.State);
        Assert.Contains("was withdrawn", rejected.Stages.Single(s => s.Stage_ == "exit").Reasons, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_suspension_in_force_at_midnight_carries_into_the_renewal_until_reinstated()
    {
        await using RegistryScene scene = await StartAsync();
        var (code, key, admitted) = await Admit2025Async(scene);
        scene.Clock.Now = new DateTimeOffset(2026, 11, 10, 9, 0, 0, Shanghai);
        Application renewal = await scene.Client.FileApplicationAsync(Renewal(code, admitted.ApplicationId), key);
        await DecideAllAsync(scene, renewal.ApplicationId, code, decideAt: new DateTimeOffset(2026, 11, 20, 10, 0, 0, Shanghai));
        scene.Clock.Now = new DateTimeOffset(2026, 12, 30, 10, 0, 0, Shanghai);
        await scene.Client.ChangeServiceItemStatusAsync(Change(code, ServiceItemAction.Suspend, "Audit in progress."), RegistryScene.Operator);

        scene.Clock.Now = End2025.AddHours(2);
        await using IngestCall call = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a", RegistryScene.KeyOf(key));
        RpcException error = await call.SendRefusedAsync([At(1, End2025.AddHours(1), minutes: 10)]);
        Assert.Equal("PROVIDER_SUSPENDED", IngestCall.Reason(error));

        await scene.Client.ChangeServiceItemStatusAsync(Change(code, ServiceItemAction.Reinstate, ""), RegistryScene.Operator);
        DateTimeOffset reinstatedAt = scene.Clock.Now;
        scene.Clock.Now = reinstatedAt.AddHours(1);
        await using IngestCall resumed = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a", RegistryScene.KeyOf(key));
        Assert.Equal(1UL, (await resumed.SendAsync([At(1, reinstatedAt.AddMinutes(10), minutes: 10)])).CommittedSequence);
    }

    [Fact]
    public async Task A_contract_across_the_end_is_recorded_only_once_a_renewal_continues_the_admission()
    {
        await using RegistryScene scene = await StartAsync();
        var (code, key, admitted) = await Admit2025Async(scene);
        var (holder, _) = await scene.RegisterAsync();
        scene.Clock.Now = new DateTimeOffset(2026, 11, 10, 9, 0, 0, Shanghai);
        VoucherService.VoucherServiceClient vouchers = new(scene.Server.Channel);
        await vouchers.RegisterHolderAsync(new RegisterHolderRequest
        {
            Holder = new Holder { CreditCode = holder, Name = "Model lab", Type = HolderType.HolderEnterprise, District = "futian", EstablishedOn = "2012-05-01" },
        }, RegistryScene.Operator);
        await vouchers.ApproveHolderAsync(new ApproveHolderRequest { CreditCode = holder }, RegistryScene.Operator);
        RecordContractRequest across = new()
        {
            Contract = new Contract
            {
                HolderCode = holder,
                ProviderId = code,
                ServiceItem = Admissions.ServiceItem,
                ContractNumber = "HT-ACROSS",
                SignedOn = "2026-11-10",
                StartsOn = "2026-12-01",
                EndsOn = "2027-03-31",
                AmountFen = 200_000_000,
                FeeUnit = FeeUnit.PerCardHour,
                NonRelatedParty = true,
                DeclarationRef = "declarations/non-related.pdf",
            },
        };

        RpcException outside = await Assert.ThrowsAsync<RpcException>(() => vouchers.RecordContractAsync(across, RegistryScene.Operator).ResponseAsync);
        Assert.Equal("CONTRACT_OUTSIDE_ADMISSION", IngestCall.Reason(outside));

        Application renewal = await scene.Client.FileApplicationAsync(Renewal(code, admitted.ApplicationId), key);
        await DecideAllAsync(scene, renewal.ApplicationId, code, decideAt: new DateTimeOffset(2026, 11, 20, 10, 0, 0, Shanghai));
        Contract recorded = await vouchers.RecordContractAsync(across, RegistryScene.Operator);
        Assert.Equal(("2026-12-01", "2027-03-31"), (recorded.StartsOn, recorded.EndsOn));
    }

    /// <summary>A scene whose clock stands in the 2025 filing window, with the next batch (2027) open from November 2026.</summary>
    private async Task<RegistryScene> StartAsync()
    {
        RegistryScene scene = await RegistryScene.StartAsync(postgres);
        await scene.Client.PutAdmissionBatchAsync(new AdmissionBatch
        {
            BatchId = NextBatch,
            WindowOpensUnixMs = new DateTimeOffset(2026, 11, 1, 0, 0, 0, Shanghai).ToUnixTimeMilliseconds(),
            WindowClosesUnixMs = new DateTimeOffset(2026, 12, 20, 18, 0, 0, Shanghai).ToUnixTimeMilliseconds(),
            ValidityEndsUnixMs = new DateTimeOffset(2028, 1, 1, 0, 0, 0, Shanghai).ToUnixTimeMilliseconds(),
            PublicNoticeDays = 5,
            AuditReportYear = 2025,
        }.WithGuideRules(), RegistryScene.Operator);
        scene.Clock.Now = new DateTimeOffset(2025, 3, 20, 10, 0, 0, Shanghai);
        return scene;
    }

    /// <summary>Files under the seeded 2025 batch and takes the application through every stage; admitted until 2026-12-31 24:00.</summary>
    private static async Task<(string Code, Metadata Key, Application Admitted)> Admit2025Async(RegistryScene scene)
    {
        var (code, key) = await scene.RegisterAsync();
        FileApplicationRequest filing = Admissions.Filing(code);
        filing.BatchId = "2025";
        filing.AuditReportYear = 2024;
        Application filed = await scene.Client.FileApplicationAsync(filing, key);
        Application admitted = await DecideAllAsync(scene, filed.ApplicationId, code, decideAt: scene.Clock.Now.AddDays(6));
        ServiceItem item = await ItemAsync(scene, code, key, admitted.ApplicationId);
        Assert.Equal(End2025.ToUnixTimeMilliseconds(), item.ValidUntilUnixMs);
        return (code, key, admitted);
    }

    private static FileApplicationRequest Renewal(string code, long renews)
    {
        FileApplicationRequest filing = Admissions.Filing(code);
        filing.BatchId = NextBatch;
        filing.AuditReportYear = 2025;
        filing.RenewsApplicationId = renews;
        return filing;
    }

    /// <summary>Every stage after filing, as Admissions.DecideAllAsync does, with the decision taken at the given moment after public notice.</summary>
    private static async Task<Application> DecideAllAsync(RegistryScene scene, long id, string code, DateTimeOffset decideAt)
    {
        ProviderRegistry registry = scene.Engine;
        CancellationToken none = CancellationToken.None;
        await registry.ReviewMaterialsAsync(Admissions.Operator, new OperatorDecision(id, Pass: true), none);
        var proposed = await registry.RecordVerificationAsync(Admissions.Operator, id, pass: true, verifiedFp16Gflops: 316_608_000, verifierParts: [], reasons: "", none);
        await registry.ApproveProposalAsync(Admissions.SecondOperator, id, proposed.PendingProposal!.ProposalNo, none);
        await registry.OpenPublicNoticeAsync(Admissions.Operator, new OperatorDecision(id, Pass: true), none);
        scene.Clock.Now = decideAt;
        proposed = await registry.DecideAdmissionAsync(Admissions.Operator, new OperatorDecision(id, Pass: true), none);
        await registry.ApproveProposalAsync(Admissions.SecondOperator, id, proposed.PendingProposal!.ProposalNo, none);
        return await scene.Client.IssueAdmissionNoticeAsync(new IssueAdmissionNoticeRequest { ApplicationId = id, NoticeNumber = $"SZ-{code}-{id}" }, RegistryScene.Operator);
    }

    private static async Task<ServiceItem> ItemAsync(RegistryScene scene, string code, Metadata key, long applicationId) =>
        (await scene.Client.GetOrganisationAsync(new GetOrganisationRequest { CreditCode = code }, key)).ServiceItems.Single(i => i.ApplicationId == applicationId);

    private static async Task AssertRefusedAsync(RegistryScene scene, FileApplicationRequest filing, Metadata key, StatusCode status, string reason, string detail)
    {
        RpcException error = await Assert.ThrowsAsync<RpcException>(() => scene.Client.FileApplicationAsync(filing, key).ResponseAsync);
        Assert.Equal((status, reason), (error.StatusCode, IngestCall.Reason(error)));
        Assert.Contains(detail, error.Status.Detail, StringComparison.Ordinal);
    }
}
