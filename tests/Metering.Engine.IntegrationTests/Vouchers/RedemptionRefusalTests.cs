using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Ingest;
using Metering.Engine.Registry;
using Metering.Engine.Time;
using Metering.Engine.Vouchers;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Fixtures;
using Npgsql;
using Claim = Metering.Engine.Vouchers.Claim;
using Contract = Metering.Engine.Vouchers.Contract;
using Holder = Metering.Engine.Vouchers.Holder;
using Voucher = Metering.Engine.Vouchers.Voucher;
using ServiceItemAction = Metering.Engine.Registry.ServiceItemAction;
using IntegrityListing = Metering.Engine.Registry.IntegrityListing;

namespace Metering.Engine.IntegrationTests.Vouchers;

/// <summary>Every refusal of a claim, each with its reason, and a refused claim changes nothing.</summary>
[Collection(PostgresCollection.Name)]
public sealed class RedemptionRefusalTests(PostgresFixture postgres)
{
    private static readonly DateOnly Day = VoucherScene.Day;

    /// <summary>An approved holder with a 2026 contract at the first test provider, a voucher of 1,000,000 CNY and ten records on the day.</summary>
    private sealed record Ready(VoucherScene Scene, string Holder, Contract Contract, Voucher Voucher) : IAsyncDisposable
    {
        public ValueTask DisposeAsync() => Scene.DisposeAsync();
    }

    private static async Task<Ready> ReadyAsync(PostgresFixture postgres, string contractStarts = "2026-01-01", string voucherUntil = "")
    {
        VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();
        Contract contract = await scene.ContractAsync(holder, starts: contractStarts);
        Voucher voucher = await scene.VoucherAsync(contract.ContractId, 100_000_000, until: voucherUntil);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, Day, 10));
        return new Ready(scene, holder, contract, voucher);
    }

    private static async Task<VoucherRefusedException> RefusedAsync(VoucherScene scene, Func<Task> claim, VoucherRefusalReason reason)
    {
        long entriesBefore = await scene.ScalarAsync<long>("SELECT count(*) FROM ledger_entries");
        var refused = await Assert.ThrowsAsync<VoucherRefusedException>(claim);
        Assert.Equal(reason, refused.Reason);
        Assert.Equal(entriesBefore, await scene.ScalarAsync<long>("SELECT count(*) FROM ledger_entries"));
        return refused;
    }

    [Fact]
    public async Task Usage_already_redeemed_is_refused_naming_the_claim_that_has_it()
    {
        await using Ready ready = await ReadyAsync(postgres);
        var (scene, holder, contract) = (ready.Scene, ready.Holder, ready.Contract);
        Claim first = await scene.ClaimJobsAsync(contract.ContractId, "job-1120-003");

        var refused = await RefusedAsync(scene, () => scene.ClaimDayAsync(contract.ContractId, Day), VoucherRefusalReason.UsageAlreadyRedeemed);

        Assert.Equal(first.ClaimId.ToString(System.Globalization.CultureInfo.InvariantCulture), refused.Metadata["claim_id"]);
        Assert.Equal(1L, await scene.ScalarAsync<long>("SELECT count(*) FROM redeemed_usage"));
    }

    [Fact]
    public async Task Usage_outside_the_contract_dates_is_refused()
    {
        await using Ready ready = await ReadyAsync(postgres, contractStarts: "2026-11-21");
        var (scene, contract) = (ready.Scene, ready.Contract);

        var refused = await RefusedAsync(scene, () => scene.ClaimDayAsync(contract.ContractId, Day), VoucherRefusalReason.UsageOutsideContract);

        Assert.Contains("outside contract", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Usage_outside_the_voucher_validity_is_refused()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();
        Contract contract = await scene.ContractAsync(holder);
        await scene.VoucherAsync(contract.ContractId, 100_000_000, from: "2026-11-21");
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, Day, 10));

        await RefusedAsync(scene, () => scene.ClaimDayAsync(contract.ContractId, Day), VoucherRefusalReason.UsageOutsideVoucherValidity);
    }

    [Fact]
    public async Task Usage_while_the_provider_was_suspended_is_refused_with_the_gate_reason()
    {
        await using Ready ready = await ReadyAsync(postgres);
        var (scene, holder, contract) = (ready.Scene, ready.Holder, ready.Contract);
        // The provider is suspended from 12:00 to 14:00 on the day; a record of 12:30 reached the
        // store past the ingest gate.
        scene.Clock.Now = ShanghaiTime.StartOf(Day).AddHours(12);
        await scene.Registry.ChangeServiceItemStatusAsync(Admissions.Operator,
            new ServiceItemStatusChange(TestRecords.Provider, Admissions.ServiceItem, ServiceItemAction.Suspend, "Metering logs arrive late."), CancellationToken.None);
        scene.Clock.Now = ShanghaiTime.StartOf(Day).AddHours(14);
        await scene.Registry.ChangeServiceItemStatusAsync(Admissions.Operator,
            new ServiceItemStatusChange(TestRecords.Provider, Admissions.ServiceItem, ServiceItemAction.Reinstate), CancellationToken.None);
        scene.Clock.Now = VoucherScene.Now;
        await scene.WriteUngatedAsync("side-path", [VoucherScene.Usage(holder, Day, slot: 150, job: "job-suspended")]);

        var refused = await RefusedAsync(scene, () => scene.ClaimDayAsync(contract.ContractId, Day), VoucherRefusalReason.ProviderNotAdmittedAtUsage);

        Assert.Equal("PROVIDER_SUSPENDED", refused.Metadata["ingest_reason"]);
        Assert.Equal("job-suspended", refused.Metadata["job_id"]);
    }

    [Fact]
    public async Task Usage_whose_stored_row_no_longer_matches_its_chain_hash_is_refused()
    {
        await using Ready ready = await ReadyAsync(postgres);
        var (scene, contract) = (ready.Scene, ready.Contract);
        // Someone with the database's superuser edits a committed row past the append-only trigger.
        await using (NpgsqlConnection connection = await scene.DataSource.OpenConnectionAsync())
        {
            await connection.ExecuteAsync("""
                ALTER TABLE usage_records DISABLE TRIGGER usage_records_append_only;
                UPDATE usage_records SET device_count = 64 WHERE stream_id = 'cluster-a' AND sequence = 4;
                ALTER TABLE usage_records ENABLE TRIGGER usage_records_append_only;
                """);
        }

        var refused = await RefusedAsync(scene, () => scene.ClaimDayAsync(contract.ContractId, Day), VoucherRefusalReason.UsageChainBroken);

        Assert.Equal("4", refused.Metadata["sequence"]);
        Assert.Contains("stored hash", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_row_rewritten_with_a_fresh_hash_is_caught_by_its_successor()
    {
        await using Ready ready = await ReadyAsync(postgres);
        var (scene, contract) = (ready.Scene, ready.Contract);
        // Record 4's job is renamed and its hash recomputed from record 3's, so that its own link
        // holds; only the link from it to record 5 can give it away.
        UsageRecord forged = VoucherScene.Jobs(ready.Holder, Day, 10)[3];
        forged.Sequence = 4;
        forged.JobId = "job-forged";
        byte[] previous = await scene.ScalarAsync<byte[]>("SELECT chain_hash FROM usage_records WHERE stream_id = 'cluster-a' AND sequence = 3");
        byte[] hash = new byte[CanonicalEncoding.HashBytes];
        CanonicalEncoding.ChainHash(previous, RecordFields.From(TestRecords.Provider, "cluster-a", EngineRecords.Of(forged)), new byte[4096], hash);
        await using (NpgsqlConnection connection = await scene.DataSource.OpenConnectionAsync())
        {
            await connection.ExecuteAsync("""
                ALTER TABLE usage_records DISABLE TRIGGER usage_records_append_only;
                UPDATE usage_records SET job_id = 'job-forged', chain_hash = @hash WHERE stream_id = 'cluster-a' AND sequence = 4;
                ALTER TABLE usage_records ENABLE TRIGGER usage_records_append_only;
                """, new { hash });
        }

        var refused = await RefusedAsync(scene, () => scene.ClaimJobsAsync(contract.ContractId, "job-forged"), VoucherRefusalReason.UsageChainBroken);

        Assert.Equal("5", refused.Metadata["sequence"]);
    }

    [Fact]
    public async Task A_claim_after_the_voucher_has_expired_is_refused()
    {
        await using Ready ready = await ReadyAsync(postgres, voucherUntil: "2026-11-30");
        var (scene, contract) = (ready.Scene, ready.Contract);

        await RefusedAsync(scene, () => scene.ClaimDayAsync(contract.ContractId, Day), VoucherRefusalReason.VoucherExpired);
    }

    [Fact]
    public async Task A_holder_whose_annual_cap_is_used_up_is_refused()
    {
        await using Ready ready = await ReadyAsync(postgres);
        var (scene, holder, contract) = (ready.Scene, ready.Holder, ready.Contract);
        await scene.ParametersAsync(p => p with { AnnualCapFen = 6_000 });
        await scene.ClaimJobsAsync(contract.ContractId, "job-1120-000", "job-1120-001", "job-1120-002", "job-1120-003", "job-1120-004",
            "job-1120-005", "job-1120-006", "job-1120-007", "job-1120-008", "job-1120-009");
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, Day, 1, firstSlot: 100));

        var refused = await RefusedAsync(scene, () => scene.ClaimJobsAsync(contract.ContractId, "job-1120-100"), VoucherRefusalReason.HolderOverCap);

        Assert.Contains("whole 2026 cap", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_model_the_fee_schedule_does_not_price_is_refused()
    {
        await using Ready ready = await ReadyAsync(postgres);
        var (scene, holder, contract) = (ready.Scene, ready.Holder, ready.Contract);
        await scene.IngestAsync("cluster-a", [VoucherScene.Usage(holder, Day, 200, "job-a100", model: "A100-SXM")]);

        var refused = await RefusedAsync(scene, () => scene.ClaimJobsAsync(contract.ContractId, "job-a100"), VoucherRefusalReason.NoFiledPrice);

        Assert.Equal("A100-SXM", refused.Metadata["device_model"]);
    }

    [Fact]
    public async Task A_named_job_without_usage_is_refused()
    {
        await using Ready ready = await ReadyAsync(postgres);
        var (scene, contract) = (ready.Scene, ready.Contract);

        var refused = await RefusedAsync(scene, () => scene.ClaimJobsAsync(contract.ContractId, "job-1120-001", "job-nowhere"), VoucherRefusalReason.UsageNotFound);

        Assert.Equal("job-nowhere", refused.Metadata["job_id"]);
    }

    [Fact]
    public async Task Proof_stream_records_are_never_claimable()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();
        Contract contract = await scene.ContractAsync(holder);
        await scene.VoucherAsync(contract.ContractId, 100_000_000);
        await scene.IngestAsync("proof:second", VoucherScene.Jobs(holder, Day, 3));

        await RefusedAsync(scene, () => scene.ClaimDayAsync(contract.ContractId, Day), VoucherRefusalReason.UsageNotFound);
    }

    [Fact]
    public async Task A_period_that_spans_two_programme_years_is_refused()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        scene.Clock.Now = new DateTimeOffset(2027, 1, 5, 10, 0, 0, TimeSpan.FromHours(8));
        string holder = await scene.HolderAsync();
        Contract contract = await scene.ContractAsync(holder, starts: "2026-06-01", ends: "2027-06-30");
        await scene.VoucherAsync(contract.ContractId, 100_000_000);
        await scene.IngestAsync("cluster-a", [.. VoucherScene.Jobs(holder, new DateOnly(2026, 12, 31), 2, firstSlot: 280), .. VoucherScene.Jobs(holder, new DateOnly(2027, 1, 1), 2)]);

        await RefusedAsync(scene, () => scene.Claims.FileClaimAsync(VoucherScene.Operator, new ClaimFiling(contract.ContractId, [],
            ShanghaiTime.StartOf(new DateOnly(2026, 12, 31)).ToUnixTimeMilliseconds(), ShanghaiTime.StartOf(new DateOnly(2027, 1, 2)).ToUnixTimeMilliseconds()), CancellationToken.None), VoucherRefusalReason.ClaimSpansYears);
    }

    [Fact]
    public async Task A_claim_naming_both_jobs_and_a_period_is_refused_as_malformed()
    {
        await using Ready ready = await ReadyAsync(postgres);
        var (scene, contract) = (ready.Scene, ready.Contract);

        await RefusedAsync(scene, () => scene.Claims.FileClaimAsync(VoucherScene.Operator, new ClaimFiling(contract.ContractId, ["job-1120-001"], PeriodFromUnixMs: 1, PeriodUntilUnixMs: 2), CancellationToken.None), VoucherRefusalReason.VoucherFieldInvalid);
    }

    [Fact]
    public async Task A_holder_below_the_minimum_annual_rental_gets_no_voucher()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();
        Contract contract = await scene.ContractAsync(holder, amountFen: 49_999_999);

        var refused = await Assert.ThrowsAsync<VoucherRefusedException>(() => scene.VoucherAsync(contract.ContractId, 1_000_000));

        Assert.Equal(VoucherRefusalReason.BelowMinimumAnnualRental, refused.Reason);
        Assert.Contains("499,999.99 CNY", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_applicant_not_yet_approved_gets_no_voucher()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync(approve: false);
        Contract contract = await scene.ContractAsync(holder);

        var refused = await Assert.ThrowsAsync<VoucherRefusedException>(() => scene.VoucherAsync(contract.ContractId, 1_000_000));

        Assert.Equal(VoucherRefusalReason.HolderNotApproved, refused.Reason);
    }

    [Fact]
    public async Task A_claim_by_a_holder_listed_for_dishonesty_since_the_voucher_was_issued_is_refused()
    {
        await using Ready ready = await ReadyAsync(postgres);
        var (scene, holder, contract) = (ready.Scene, ready.Holder, ready.Contract);
        await scene.Registry.AddIntegrityListingAsync(Admissions.Operator, new IntegrityListing
        {
            CreditCode = holder,
            List = "serious_dishonesty",
            ListedFrom = "2026-11-25",
            Reason = "Listed by the credit authority.",
        }, CancellationToken.None);

        await RefusedAsync(scene, () => scene.ClaimDayAsync(contract.ContractId, Day), VoucherRefusalReason.HolderOnIntegrityList);
    }

    [Fact]
    public async Task The_claim_records_who_filed_it()
    {
        await using Ready ready = await ReadyAsync(postgres);
        var (scene, contract) = (ready.Scene, ready.Contract);

        Claim claim = await scene.Claims.FileClaimAsync(new Actor(Role.Operator, "desk-7"), new ClaimFiling(contract.ContractId, ["job-1120-001"], ProgrammeYear: 2026),
            CancellationToken.None);

        Assert.Equal("desk-7", await scene.ScalarAsync<string>("SELECT filed_by FROM claims WHERE claim_id = @id", new { id = claim.ClaimId }));
    }
}
