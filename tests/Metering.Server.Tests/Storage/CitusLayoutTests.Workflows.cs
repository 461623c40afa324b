using Dapper;
using Grpc.Core;
using Metering.Engine.Fixtures;
using Metering.Engine.Ledger;
using Metering.Fixtures;
using Metering.Protocol.V1;
using Metering.Server.Fixtures;
using Npgsql;
using static Metering.Server.Fixtures.RegistryScene;

namespace Metering.Server.Tests.Storage;

/// <summary>
/// The registry's and the voucher book's workflows that reach the distributed tables through
/// rows found by an id (reconsideration and the exits, a claim's voiding, payouts and the
/// year-end release), each run through the real server on the Citus cluster and on one node:
/// the same outcome on both, and every refusal the named one, not an error of Citus. Each flow
/// uses holders, providers and days of its own, since the cluster's database is shared by the
/// class.
/// </summary>
public sealed partial class CitusLayoutTests
{
    [CitusFact]
    public async Task A_reconsideration_and_the_exits_through_the_registry_on_the_distributed_layout_match_one_node()
    {
        RegistryOutcome single = await ReconsiderAndExitAsync(null, null, TestServer.SecondOperatorKey);
        RegistryOutcome distributed = await ReconsiderAndExitAsync(Cluster.ConnectionString, Cluster.Keys.Operator, Cluster.Keys.SecondOperator);

        Assert.Equal((StatusCode.NotFound, "APPLICATION_UNKNOWN"), distributed.OtherProviderAsks);
        Assert.Equal((ApplicationState.UnderReconsideration, (StatusCode.AlreadyExists, "RECONSIDERATION_ALREADY_REQUESTED")),
            (distributed.Requested, distributed.AskedTwice));
        Assert.Equal((ApplicationState.AwaitingMaterialReview, (StatusCode.Aborted, "ALREADY_DECIDED"), ApplicationState.AwaitingVerification),
            (distributed.Upheld, distributed.DecidedTwice, distributed.Reviewed));
        Assert.Equal(ApplicationState.Rejected, distributed.Dismissed);
        Assert.True(distributed.RefusalsChangedNothing);
        Assert.Equal((ServiceItemStatus.Suspended, ServiceItemStatus.Withdrawn, ServiceItemStatus.Revoked, true),
            (distributed.Suspension, distributed.Withdrawal, distributed.Revocation, distributed.ExitsEndAtTheirInstant));
        Assert.Equal((ServiceItemStatus.Revoked, "integrity_anomaly", ApplicationState.Rejected), distributed.FalseMaterials);
        Assert.Equal("PROVIDER_SUSPENDED,ADMISSION_WITHDRAWN,ADMISSION_REVOKED,ADMISSION_REVOKED", distributed.UsageInsideRefused);
        Assert.Equal((StatusCode.FailedPrecondition, "STATUS_CHANGE_INVALID"), distributed.ReinstateExited);
        Assert.Equal((ServiceItemStatus.Active, 2UL), (distributed.Reinstated, distributed.CommittedAfterReinstatement));
        Assert.Equal(single, distributed);
    }

    [CitusFact]
    public async Task A_claim_voided_claimed_again_settled_and_paid_out_through_the_server_on_the_distributed_layout_matches_one_node()
    {
        ClaimOutcome single = await VoidSettleAndPayAsync(await Postgres.CreateDatabaseAsync(), TestServer.ProviderKey, TestServer.OperatorKey, TestServer.SettlementKey);
        ClaimOutcome distributed = await VoidSettleAndPayAsync(Cluster.ConnectionString, Cluster.Keys.Provider, Cluster.Keys.Operator, Cluster.Keys.Settlement);

        Assert.Equal((HoldState.HoldVoided, distributed.Voided.Subsidy), (distributed.Voided.State, distributed.Reclaimed));
        Assert.True(distributed.Kept > 0 && distributed.Reclaimed > 0);
        Assert.Equal((StatusCode.AlreadyExists, "USAGE_ALREADY_REDEEMED"), distributed.ClaimedTwice);
        Assert.Equal((StatusCode.FailedPrecondition, "CLAIM_NOT_RESERVED"), distributed.VoidedTwice);
        Assert.Equal((StatusCode.FailedPrecondition, "CLAIM_NOT_RESERVED"), distributed.VoidPosted);
        Assert.Equal(StatusCode.NotFound, distributed.VoidUnknown.Status);
        Assert.Equal("CLAIM_UNKNOWN", distributed.VoidUnknown.Reason);
        Assert.Equal(10L, distributed.DayRecords);
        Assert.Equal((0L, distributed.Kept + distributed.Reclaimed), (distributed.Voucher.Held, distributed.Voucher.Posted));
        Assert.Equal((1_000L, distributed.Kept + distributed.Reclaimed - 1_000, true), (distributed.Paid, distributed.Payable, distributed.RetryReturnsTheFirst));
        Assert.Equal((StatusCode.FailedPrecondition, "PAYOUT_OVER_PAYABLE"), distributed.Over);
        Assert.Equal((StatusCode.FailedPrecondition, "PAYEE_NOTHING_PAYABLE"), distributed.Early);
        Assert.Equal(distributed.Payable, distributed.PayableBalance);
        Assert.True(distributed.RefusalsChangedNothing);
        Assert.Equal(single, distributed);
    }

    [CitusFact]
    public async Task The_year_end_release_on_the_distributed_layout_returns_the_vouchers_of_two_providers_once_and_matches_one_node()
    {
        ReleaseOutcome single = await ReleaseYearEndAsync(await Postgres.CreateDatabaseAsync(), TestServer.OperatorKey, TestServer.ProviderKey);
        ReleaseOutcome distributed = await ReleaseYearEndAsync(Cluster.ConnectionString, Cluster.Keys.Operator, Cluster.Keys.Provider);

        Assert.Equal((StatusCode.FailedPrecondition, "PROGRAMME_YEAR_NOT_ENDED"), distributed.NotEnded);
        Assert.Equal(StatusCode.PermissionDenied, distributed.ByProvider);
        Assert.Equal((2u, 50_000_000L, 50_000_000L), (distributed.Vouchers, distributed.ReleasedFen, distributed.YearReleasedFen));
        Assert.Equal((StatusCode.FailedPrecondition, "NOTHING_TO_RELEASE"), distributed.Twice);
        Assert.Equal(((30_000_000L, 0L), (20_000_000L, 0L)), distributed.ReleasedAndRemaining);
        Assert.Equal((0L, 0L), distributed.AvailableAndBudget);
        Assert.True(distributed.RefusalsChangedNothing);
        Assert.Equal(single, distributed);

        // The two providers' vouchers lie on two shards: the release locked and moved rows on each.
        await using var coordinator = new NpgsqlConnection(Cluster.ConnectionString);
        Assert.Equal(2L, await coordinator.ExecuteScalarAsync<long>(
            "SELECT count(DISTINCT get_shard_id_for_distribution_column('vouchers', p)) FROM unnest(@providers) p",
            new { providers = new[] { TestRecords.Provider, TestRecords.OtherProvider } }));
    }

    /// <param name="FalseMaterials">The liar's service item, its listings and its pending application after the finding.</param>
    /// <param name="UsageInsideRefused">The reasons usage across the suspension, the withdrawal, the revocation and the false-materials finding was refused with, in that order.</param>
    private sealed record RegistryOutcome(
        (StatusCode, string) OtherProviderAsks, ApplicationState Requested, (StatusCode, string) AskedTwice, ApplicationState Upheld, (StatusCode, string) DecidedTwice,
        ApplicationState Reviewed, ApplicationState Dismissed, bool RefusalsChangedNothing,
        ServiceItemStatus Suspension, ServiceItemStatus Withdrawal, ServiceItemStatus Revocation, bool ExitsEndAtTheirInstant,
        (ServiceItemStatus Item, string Listings, ApplicationState Pending) FalseMaterials, string UsageInsideRefused,
        (StatusCode, string) ReinstateExited, ServiceItemStatus Reinstated, ulong CommittedAfterReinstatement);

    /// <summary>
    /// In one scene: an application refused at material review, reconsidered at the applicant's
    /// request (another provider asking for it, and the applicant asking twice, refused) and
    /// upheld, decided again by a second operator (refused), reviewed again; a second one
    /// dismissed. Then four admitted providers, one suspended, one withdrawn, one revoked and one
    /// found to have filed false materials (with an application for a second item pending) at
    /// the same instant, each sending usage from just before it (taken) and across it (refused
    /// with the exit named); an exited item reinstated (refused), the suspended one reinstated
    /// and its usage after that taken.
    /// </summary>
    private async Task<RegistryOutcome> ReconsiderAndExitAsync(string? database, string? operatorKey, string secondOperatorKey)
    {
        const string Grounds = "The tax certificate was filed under the wrong kind; the document itself is in the file.";
        await using RegistryScene scene = await RegistryScene.StartAsync(Postgres, database: database, operatorKey: operatorKey);
        Metadata second = TestServer.Bearer(secondOperatorKey);
        Task<long> ChangesAsync() => scene.Server.ScalarAsync<long>("SELECT count(*) FROM registry_history");
        async Task<(string Code, Metadata Key, long Id)> RejectedAtReviewAsync()
        {
            var (code, key) = await scene.RegisterAsync();
            long id = (await scene.Client.FileApplicationAsync(RegistryScene.Filing(code), key)).ApplicationId;
            await scene.Client.ReviewMaterialsAsync(new StageDecision { ApplicationId = id, Pass = false, Reasons = "No tax certificate on file." }, scene.OperatorHeaders);
            return (code, key, id);
        }

        var (_, key, id) = await RejectedAtReviewAsync();
        var (_, otherKey) = await scene.RegisterAsync();
        long before = await ChangesAsync();
        var otherAsks = await RefusedAsync(() => scene.Client.RequestReconsiderationAsync(new RequestReconsiderationRequest { ApplicationId = id, Grounds = Grounds }, otherKey).ResponseAsync);
        bool refusalsChangedNothing = before == await ChangesAsync();
        Reconsideration requested = await scene.Client.RequestReconsiderationAsync(new RequestReconsiderationRequest { ApplicationId = id, Grounds = Grounds }, key);
        before = await ChangesAsync();
        var askedTwice = await RefusedAsync(() => scene.Client.RequestReconsiderationAsync(new RequestReconsiderationRequest { ApplicationId = id, Grounds = "Again." }, key).ResponseAsync);
        refusalsChangedNothing &= before == await ChangesAsync();
        scene.Clock.Advance(TimeSpan.FromDays(1));
        Reconsideration upheld = await scene.Client.DecideReconsiderationAsync(new DecideReconsiderationRequest
        {
            ApplicationId = id,
            Verdict = ReconsiderationVerdict.ReconsiderationUphold,
            Reasons = "The certificate is there; review it again.",
        }, scene.OperatorHeaders);
        before = await ChangesAsync();
        var decidedTwice = await RefusedAsync(() => scene.Client.DecideReconsiderationAsync(new DecideReconsiderationRequest
        {
            ApplicationId = id,
            Verdict = ReconsiderationVerdict.ReconsiderationDismiss,
            Reasons = "I would have dismissed it.",
        }, second).ResponseAsync);
        refusalsChangedNothing &= before == await ChangesAsync();
        Application reviewed = await scene.Client.ReviewMaterialsAsync(new StageDecision { ApplicationId = id, Pass = true }, scene.OperatorHeaders);

        var (_, dismissedKey, dismissedId) = await RejectedAtReviewAsync();
        await scene.Client.RequestReconsiderationAsync(new RequestReconsiderationRequest { ApplicationId = dismissedId, Grounds = Grounds }, dismissedKey);
        Reconsideration dismissed = await scene.Client.DecideReconsiderationAsync(new DecideReconsiderationRequest
        {
            ApplicationId = dismissedId,
            Verdict = ReconsiderationVerdict.ReconsiderationDismiss,
            Reasons = "The certificate filed is for 2023.",
        }, scene.OperatorHeaders);

        // The exits, all at one instant, four hours after the four admissions.
        var (suspended, suspendedKey, _) = await scene.AdmitAsync();
        var (withdrawn, withdrawnKey, _) = await scene.AdmitAsync();
        var (revoked, revokedKey, _) = await scene.AdmitAsync();
        var (liar, liarKey, _) = await scene.AdmitAsync();
        long pending = (await scene.Client.FileApplicationAsync(RegistryScene.Filing(liar, "inference-hosting"), liarKey)).ApplicationId;
        scene.Clock.Advance(TimeSpan.FromHours(4));
        DateTimeOffset exitedAt = scene.Clock.Now;
        ServiceItem suspension = await scene.Client.ChangeServiceItemStatusAsync(Change(suspended, ServiceItemAction.Suspend, "Logs arrive days late."), scene.OperatorHeaders);
        ServiceItem withdrawal = await scene.Client.ChangeServiceItemStatusAsync(Change(withdrawn, ServiceItemAction.Withdraw, "Leaving the programme."), scene.OperatorHeaders);
        ServiceItem revocation = await scene.Client.ChangeServiceItemStatusAsync(Change(revoked, ServiceItemAction.Revoke, "Usage logs were altered."), scene.OperatorHeaders);
        Organisation listed = await scene.Client.RecordFalseMaterialsAsync(new RecordFalseMaterialsRequest { CreditCode = liar, Reasons = "The audit report's QR code is forged." }, scene.OperatorHeaders);
        ApplicationState pendingAfter = (await scene.Client.GetApplicationAsync(new GetApplicationRequest { ApplicationId = pending }, scene.OperatorHeaders)).State;
        scene.Clock.Advance(TimeSpan.FromHours(4));

        var usageInsideRefused = new List<string>();
        foreach (Metadata providerKey in new[] { suspendedKey, withdrawnKey, revokedKey, liarKey })
        {
            await using IngestCall call = await IngestCall.OpenAsync(scene.Server.Client(), "citus-exit", RegistryScene.KeyOf(providerKey));
            Assert.Equal(1UL, (await call.SendAsync([At(1, exitedAt.AddHours(-1), minutes: 30)])).CommittedSequence);
            usageInsideRefused.Add(IngestCall.Reason(await call.SendRefusedAsync([At(2, exitedAt.AddMinutes(-1), minutes: 2)])) ?? "");
        }

        before = await ChangesAsync();
        var reinstateExited = await RefusedAsync(() => scene.Client.ChangeServiceItemStatusAsync(Change(withdrawn, ServiceItemAction.Reinstate, ""), scene.OperatorHeaders).ResponseAsync);
        refusalsChangedNothing &= before == await ChangesAsync();
        ServiceItem reinstated = await scene.Client.ChangeServiceItemStatusAsync(Change(suspended, ServiceItemAction.Reinstate, ""), scene.OperatorHeaders);
        DateTimeOffset reinstatedAt = scene.Clock.Now;
        scene.Clock.Advance(TimeSpan.FromHours(2));
        await using IngestCall resumed = await IngestCall.OpenAsync(scene.Server.Client(), "citus-exit", RegistryScene.KeyOf(suspendedKey));
        ulong committed = (await resumed.SendAsync([At(2, reinstatedAt, minutes: 30)])).CommittedSequence;

        long exitMs = exitedAt.ToUnixTimeMilliseconds();
        return new RegistryOutcome(otherAsks, requested.ApplicationState, askedTwice, upheld.ApplicationState, decidedTwice, reviewed.State, dismissed.ApplicationState,
            refusalsChangedNothing, suspension.Status, withdrawal.Status, revocation.Status, withdrawal.ValidUntilUnixMs == exitMs && revocation.ValidUntilUnixMs == exitMs,
            (Assert.Single(listed.ServiceItems).Status, string.Join(",", listed.Listings.Select(l => l.List)), pendingAfter),
            string.Join(",", usageInsideRefused), reinstateExited, reinstated.Status, committed);
    }

    private static async Task<(StatusCode Status, string Reason)> RefusedAsync(Func<Task> call)
    {
        var (status, reason, _) = await CapacityScene.RefusalAsync(call);
        return (status, reason);
    }

    private sealed record ClaimOutcome(
        long Kept, (StatusCode, string) ClaimedTwice, (HoldState State, long Subsidy) Voided, (StatusCode, string) VoidedTwice, (StatusCode Status, string Reason) VoidUnknown, long Reclaimed,
        long DayRecords, (long Held, long Posted, long Remaining) Voucher, (StatusCode, string) VoidPosted,
        long Paid, long Payable, bool RetryReturnsTheFirst, (StatusCode, string) Over, (StatusCode, string) Early, long PayableBalance, bool RefusalsChangedNothing);

    /// <summary>
    /// A holder of its own with a 2026 voucher on a contract with the test provider, ten of its
    /// jobs ingested on 2026-11-24 (a day no other test of the cluster settles), two of them
    /// claimed and kept, one of those with a fresh one claimed again (refused), two claimed and
    /// voided (twice, the second refused; and a claim that does not exist), then claimed again;
    /// the day settled, the posted claim voided (refused), and the holder paid part of what it
    /// is owed, the payment retried, paid past what is owed and paid before the subsidy was owed.
    /// </summary>
    private async Task<ClaimOutcome> VoidSettleAndPayAsync(string database, string providerKey, string operatorKey, string settlementKey)
    {
        var day = new DateOnly(2026, 11, 24);
        const string ClaimStream = "citus-claims";
        await using TestServer server = await TestServer.StartAsync(Postgres, time: new ManualClock(VoucherScene.Now), database: database);
        var vouchers = new VoucherService.VoucherServiceClient(server.Channel);
        Metadata op = TestServer.Bearer(operatorKey);
        string holder = VoucherScene.NewCode();
        await VoucherRequests.ApprovedHolderAsync(vouchers, op, holder, $"Holder {holder[^5..]}");
        Contract contract = await VoucherRequests.ContractAsync(vouchers, op, holder, TestRecords.Provider, $"HT-CITUS-{holder[^5..]}", 2026);
        Voucher voucher = await vouchers.IssueVoucherAsync(new IssueVoucherRequest { ContractId = contract.ContractId, ProgrammeYear = 2026, FaceValueFen = 50_000_000 }, op);
        await IngestAsync(server, ClaimStream, providerKey, 10, day, holder);
        Task<Claim> FileAsync(params int[] jobs) => vouchers.FileClaimAsync(new FileClaimRequest
        {
            ContractId = contract.ContractId,
            JobIds = { jobs.Select(j => $"{ClaimStream}-{day:MMdd}-{j:D3}") },
            ProgrammeYear = 2026,
        }, op).ResponseAsync;
        Task<string> StateAsync() => server.ScalarAsync<string>("""
            SELECT (SELECT count(*) FROM ledger_entries) || '/' || (SELECT count(*) FROM payouts) || '/'
                || (SELECT held_fen || ':' || posted_fen FROM vouchers WHERE provider_id = @provider AND voucher_id = @voucher) || '/' || (SELECT count(*) FROM redeemed_usage WHERE provider_id = @provider AND stream_id = @stream)
            """, new { voucher = voucher.VoucherId, provider = TestRecords.Provider, stream = ClaimStream });

        Claim kept = await FileAsync(0, 1);
        Claim disputed = await FileAsync(2, 3);
        string state = await StateAsync();
        var claimedTwice = await RefusedAsync(() => FileAsync(1, 4));
        bool refusalsChangedNothing = state == await StateAsync();
        Claim voided = await vouchers.VoidClaimAsync(new VoidClaimRequest { ClaimId = disputed.ClaimId, Reason = "Filed against the wrong contract." }, op);
        state = await StateAsync();
        var voidedTwice = await RefusedAsync(() => vouchers.VoidClaimAsync(new VoidClaimRequest { ClaimId = disputed.ClaimId, Reason = "again" }, op).ResponseAsync);
        var voidUnknown = await RefusedAsync(() => vouchers.VoidClaimAsync(new VoidClaimRequest { ClaimId = disputed.ClaimId + 1_000_000, Reason = "no such claim" }, op).ResponseAsync);
        refusalsChangedNothing &= state == await StateAsync();
        // Voided, its usage is free for another claim.
        Claim reclaimed = await FileAsync(2, 3);

        var settlement = new SettlementService.SettlementServiceClient(server.Channel);
        Protocol.V1.Settlement settled = await settlement.SettleDayAsync(new SettleDayRequest { Day = $"{day:yyyy-MM-dd}" }, TestServer.Bearer(settlementKey));
        Voucher after = await vouchers.GetVoucherAsync(new GetVoucherRequest { VoucherId = voucher.VoucherId }, op);
        state = await StateAsync();
        var voidPosted = await RefusedAsync(() => vouchers.VoidClaimAsync(new VoidClaimRequest { ClaimId = kept.ClaimId, Reason = "too late" }, op).ResponseAsync);
        refusalsChangedNothing &= state == await StateAsync();

        Task<Payout> PayAsync(long amountFen, string reference, string paidOn) => vouchers.RecordPayoutAsync(
            new RecordPayoutRequest { PayeeCode = holder, AmountFen = amountFen, BankReference = reference, PaidOn = paidOn }, op).ResponseAsync;
        string reference = $"CITUS-{holder[^5..]}";
        Payout paid = await PayAsync(1_000, reference, "2026-11-26");
        Payout retry = await PayAsync(1_000, reference, "2026-11-26");
        state = await StateAsync();
        var over = await RefusedAsync(() => PayAsync(paid.PayableFen + 1, reference + "-2", "2026-11-26"));
        var early = await RefusedAsync(() => PayAsync(100, reference + "-3", "2026-11-23"));
        refusalsChangedNothing &= state == await StateAsync();
        long balance = await server.ScalarAsync<long>("SELECT coalesce(sum(credit_fen - debit_fen), 0)::bigint FROM ledger_lines WHERE account = @account",
            new { account = Accounts.PayeePayable(holder) });

        return new ClaimOutcome(kept.SubsidyFen, claimedTwice, (voided.HoldState, disputed.SubsidyFen), voidedTwice, voidUnknown, reclaimed.SubsidyFen,
            settled.DayRecords, (after.HeldFen, after.PostedFen, after.RemainingFen), voidPosted,
            paid.AmountFen, paid.PayableFen, (retry.PayoutId, retry.AlreadyRecorded) == (paid.PayoutId, true), over, early, balance, refusalsChangedNothing);
    }

    /// <param name="ReleasedAndRemaining">Each voucher's released and remaining balance after the release, the test provider's first.</param>
    private sealed record ReleaseOutcome(
        (StatusCode, string) NotEnded, StatusCode ByProvider, uint Vouchers, long ReleasedFen, long YearReleasedFen, (StatusCode, string) Twice,
        ((long, long), (long, long)) ReleasedAndRemaining, (long, long) AvailableAndBudget, bool RefusalsChangedNothing);

    /// <summary>
    /// A holder of its own with 2025 contracts and vouchers at both test providers (so, on the
    /// cluster, rows of two providers' shards), 2025 being a programme year no other test of the
    /// cluster issues in; 2026 released too early and 2025 by a provider (both refused), 2025
    /// released, and released again (refused).
    /// </summary>
    private async Task<ReleaseOutcome> ReleaseYearEndAsync(string database, string operatorKey, string providerKey)
    {
        await using TestServer server = await TestServer.StartAsync(Postgres, time: new ManualClock(VoucherScene.Now), database: database);
        var vouchers = new VoucherService.VoucherServiceClient(server.Channel);
        Metadata op = TestServer.Bearer(operatorKey);
        string holder = VoucherScene.NewCode();
        await VoucherRequests.ApprovedHolderAsync(vouchers, op, holder, $"Holder {holder[^5..]}");
        var issued = new List<Voucher>();
        foreach (var (provider, faceFen) in new[] { (TestRecords.Provider, 30_000_000L), (TestRecords.OtherProvider, 20_000_000L) })
        {
            Contract contract = await VoucherRequests.ContractAsync(vouchers, op, holder, provider, $"HT-2025-{holder[^5..]}", 2025);
            issued.Add(await vouchers.IssueVoucherAsync(new IssueVoucherRequest { ContractId = contract.ContractId, ProgrammeYear = 2025, FaceValueFen = faceFen }, op));
        }

        Task<string> StateAsync() => server.ScalarAsync<string>("""
            SELECT (SELECT count(*) FROM ledger_entries) || '/' || (SELECT count(*) FROM year_end_releases) || '/'
                || (SELECT string_agg(voucher_id || ':' || released_fen, ',' ORDER BY voucher_id) FROM vouchers WHERE holder_code = @holder)
            """, new { holder });
        string state = await StateAsync();
        var notEnded = await RefusedAsync(() => vouchers.ReleaseYearEndAsync(new ReleaseYearEndRequest { ProgrammeYear = 2026 }, op).ResponseAsync);
        var (byProvider, _) = await RefusedAsync(() => vouchers.ReleaseYearEndAsync(new ReleaseYearEndRequest { ProgrammeYear = 2025 }, TestServer.Bearer(providerKey)).ResponseAsync);
        bool refusalsChangedNothing = state == await StateAsync();

        YearEndRelease released = await vouchers.ReleaseYearEndAsync(new ReleaseYearEndRequest { ProgrammeYear = 2025 }, op);
        state = await StateAsync();
        var twice = await RefusedAsync(() => vouchers.ReleaseYearEndAsync(new ReleaseYearEndRequest { ProgrammeYear = 2025 }, op).ResponseAsync);
        refusalsChangedNothing &= state == await StateAsync();

        var after = new List<(long, long)>();
        foreach (Voucher voucher in issued)
        {
            Voucher read = await vouchers.GetVoucherAsync(new GetVoucherRequest { VoucherId = voucher.VoucherId }, op);
            after.Add((read.ReleasedFen, read.RemainingFen));
        }

        var (available, budget) = (await server.QueryAsync<(long, long)>("""
            SELECT coalesce(sum(credit_fen - debit_fen) FILTER (WHERE account = ANY(@available)), 0)::bigint,
                   coalesce(sum(credit_fen - debit_fen) FILTER (WHERE account = @budget), 0)::bigint
            FROM ledger_lines
            """, new
        {
            available = issued.Select(v => Accounts.VoucherAvailable(v.VoucherId)).ToArray(),
            budget = Accounts.ProgrammeBudget(2025),
        })).Single();
        return new ReleaseOutcome(notEnded, byProvider, released.Vouchers, released.ReleasedFen, released.YearReleasedFen, twice, (after[0], after[1]), (available, budget),
            refusalsChangedNothing);
    }
}
