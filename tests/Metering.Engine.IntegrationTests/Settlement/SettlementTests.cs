using System.Text;
using Metering.Engine.Ledger;
using Metering.Engine.Registry;
using Metering.Engine.Settlement;
using Metering.Engine.Vouchers;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Fixtures;
using Claim = Metering.Engine.Vouchers.Claim;
using Contract = Metering.Engine.Vouchers.Contract;
using HoldState = Metering.Engine.Vouchers.HoldState;
using PayeeMode = Metering.Engine.Vouchers.PayeeMode;
using Voucher = Metering.Engine.Vouchers.Voucher;

namespace Metering.Engine.IntegrationTests.Settlement;

/// <summary>
/// Nightly settlement against a real PostgreSQL: pricing, the ledger in both payee modes, holds
/// posted and expired, late data, reruns, a run cancelled midway, and the reconciliation.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class SettlementTests(PostgresFixture postgres)
{
    private static readonly DateOnly Day = VoucherScene.Day;
    private static readonly DateOnly NextDay = Day.AddDays(1);

    /// <summary>A holder with usage but no contract; fixed so that twin databases produce identical statements.</summary>
    private static readonly string OtherHolder = Metering.Engine.Identity.CreditCode.Complete("91440300MA5K00001");

    /// <summary>
    /// Tencent holds a per-card-hour contract with the first provider and a 1,000,000 CNY voucher,
    /// and used ten records on the day (12,000 fen); a second holder without a contract used three;
    /// the provider's proof stream has two records on the day; a claim covers five of Tencent's
    /// records (6,000 fen eligible, 3,000 fen held).
    /// </summary>
    private static async Task<(VoucherScene Scene, string Other, Contract Contract, Voucher Voucher, Claim Claim)> SeedAsync(PostgresFixture postgres, PayeeMode mode = PayeeMode.HolderReimbursement)
    {
        VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();
        string other = OtherHolder;
        Contract contract = await scene.ContractAsync(holder);
        Voucher voucher = await scene.VoucherAsync(contract.ContractId, 100_000_000);
        if (mode == PayeeMode.ProviderDeduction)
        {
            await scene.ParametersAsync(p => p with { PayeeMode = PayeeMode.ProviderDeduction });
        }

        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, Day, 10));
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(other, Day, 3, firstSlot: 50, prefix: "other"));
        await scene.IngestAsync("proof:nightly", VoucherScene.Jobs(holder, Day, 2, firstSlot: 100, prefix: "proof"));
        Claim claim = await scene.ClaimJobsAsync(contract.ContractId, "job-1120-000", "job-1120-001", "job-1120-002", "job-1120-003", "job-1120-004");
        return (scene, other, contract, voucher, claim);
    }

    private static StatementRow Total(SettlementOutcome outcome, string kind, string party) =>
        outcome.Statements.Single(s => s.PartyKind == kind && s.Party == party).Parse().Rows.Single(r => r.Record == "total");

    [Fact]
    public async Task A_line_is_priced_by_the_fee_schedule_version_its_contract_names_when_the_provider_has_filed_a_newer_one()
    {
        var (scene, _, contract, _, _) = await SeedAsync(postgres);
        await using var owned = scene;
        // The run reads every schedule of the contracted providers in one statement: a later
        // version of the same item, with another price, must not be the one it prices by.
        int filed = await scene.ScalarAsync<int>("""
            INSERT INTO fee_schedules (provider_id, service_item, version, effective_from, filed_at, lines)
            SELECT provider_id, service_item, version + 1, effective_from + interval '1 day', filed_at + interval '1 day',
                   '[{"deviceModel": "H100-SXM", "unit": "per_card_hour", "priceFen": 9999}]'::jsonb
            FROM fee_schedules WHERE provider_id = @provider AND service_item = @item AND version = @version
            RETURNING version
            """, new { provider = contract.ProviderId, item = contract.ServiceItem, version = (int)contract.FeeScheduleVersion });

        SettlementOutcome outcome = await scene.SettleAsync(Day);

        StatementRow priced = outcome.Statements.Single(s => s.PartyKind == "provider").Parse().Rows.Single(r => r.Record == "usage" && r.Holder == TestRecords.Holder);
        Assert.Equal((contract.ContractId, 1_800L, 12_000L), (priced.Contract!.Value, priced.PriceFen!.Value, priced.FeeFen!.Value));
        Assert.Equal((int)contract.FeeScheduleVersion + 1, filed);
    }

    [Fact]
    public async Task A_day_is_priced_per_contract_line_with_usage_outside_contracts_counted_but_unpriced_and_proof_streams_left_out()
    {
        var (scene, other, contract, _, _) = await SeedAsync(postgres);
        await using var owned = scene;

        SettlementOutcome outcome = await scene.SettleAsync(Day);

        Assert.False(outcome.AlreadyClosed);
        Assert.Equal(13, outcome.DayRecords);
        Assert.Equal(13 * 659_600_000L, outcome.DayUsageNpfh);
        Assert.Equal(12_000, outcome.FeeFen);
        Assert.Equal(["programme", "provider", "holder", "holder"], outcome.Statements.Select(s => s.PartyKind));
        PartyStatement provider = outcome.Statements.Single(s => s.PartyKind == "provider").Parse();
        StatementRow priced = provider.Rows.Single(r => r.Record == "usage" && r.Holder == TestRecords.Holder);
        Assert.Equal((contract.ContractId, 10L, 24_000_000L, 1_800L, 12_000L, ""), (priced.Contract!.Value, priced.Records!.Value, priced.CardMs!.Value, priced.PriceFen!.Value, priced.FeeFen!.Value, priced.Note));
        StatementRow outside = provider.Rows.Single(r => r.Holder == other);
        Assert.Equal((3L, (long?)null, 0L, "no_contract"), (outside.Records!.Value, outside.PriceFen, outside.FeeFen!.Value, outside.Note));
        Assert.Equal((13L, 12_000L, 12_000L, 0L), (Total(outcome, "provider", TestRecords.Provider).Records!.Value, Total(outcome, "provider", TestRecords.Provider).FeeFen!.Value,
            Total(outcome, "provider", TestRecords.Provider).HolderPaysFen!.Value, Total(outcome, "provider", TestRecords.Provider).ProgrammePaysFen!.Value));
        Assert.Equal(-12_000, await scene.CreditBalanceAsync(Accounts.HolderDue(TestRecords.Holder)));
        Assert.Equal(12_000, await scene.CreditBalanceAsync(Accounts.ProviderReceivable(TestRecords.Provider)));
        Assert.Equal(0, await scene.ScalarAsync<long>("SELECT sum(debit_fen - credit_fen)::bigint FROM ledger_lines"));
    }

    [Fact]
    public async Task A_claim_is_posted_by_the_run_that_closes_its_last_usage_day_and_reimburses_the_holder()
    {
        var (scene, _, contract, voucher, _) = await SeedAsync(postgres);
        await using var owned = scene;
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(TestRecords.Holder, NextDay, 2));
        Claim spanning = await scene.ClaimJobsAsync(contract.ContractId, "job-1120-005", "job-1121-000", "job-1121-001");

        SettlementOutcome first = await scene.SettleAsync(Day);
        SettlementOutcome second = await scene.SettleAsync(NextDay);

        // The five-record claim's only day closed with the first run; the spanning claim waited for the second.
        Assert.Equal(3_000, first.SubsidyFen);
        Assert.Equal(1_800, second.SubsidyFen);
        Assert.Equal(HoldState.HoldPosted, (await scene.Claims.GetClaimAsync(spanning.ClaimId, CancellationToken.None))!.HoldState);
        Voucher after = (await scene.Book.GetVoucherAsync(voucher.VoucherId, CancellationToken.None))!;
        Assert.Equal((0L, 4_800L, 100_000_000L - 4_800L), (after.HeldFen, after.PostedFen, after.RemainingFen));
        Assert.Equal(4_800, await scene.CreditBalanceAsync(Accounts.PayeePayable(TestRecords.Holder)));
        StatementRow holderTotal = Total(first, "holder", TestRecords.Holder);
        Assert.Equal((12_000L, 3_000L, 12_000L, 3_000L), (holderTotal.FeeFen!.Value, holderTotal.SubsidyFen!.Value, holderTotal.HolderPaysFen!.Value, holderTotal.ProgrammePaysFen!.Value));
        StatementRow providerTotal = Total(first, "provider", TestRecords.Provider);
        Assert.Equal((12_000L, 0L), (providerTotal.HolderPaysFen!.Value, providerTotal.ProgrammePaysFen!.Value));
        StatementRow subsidy = first.Statements.Single(s => s.PartyKind == "holder" && s.Party == TestRecords.Holder).Parse().Rows.Single(r => r.Record == "subsidy");
        Assert.Equal((TestRecords.Holder, 3_000L, "holder_reimbursement"), (subsidy.Payee, subsidy.SubsidyFen!.Value, subsidy.Note));
    }

    [Fact]
    public async Task In_provider_deduction_mode_the_provider_collects_the_subsidy_from_the_programme_and_the_holder_pays_the_rest()
    {
        var (scene, _, _, _, claim) = await SeedAsync(postgres, PayeeMode.ProviderDeduction);
        await using var owned = scene;

        SettlementOutcome outcome = await scene.SettleAsync(Day);

        Assert.Equal(PayeeMode.ProviderDeduction, claim.PayeeMode);
        StatementRow provider = Total(outcome, "provider", TestRecords.Provider);
        Assert.Equal((12_000L, 3_000L, 9_000L, 3_000L), (provider.FeeFen!.Value, provider.SubsidyFen!.Value, provider.HolderPaysFen!.Value, provider.ProgrammePaysFen!.Value));
        StatementRow holder = Total(outcome, "holder", TestRecords.Holder);
        Assert.Equal((12_000L, 9_000L, 0L), (holder.FeeFen!.Value, holder.HolderPaysFen!.Value, holder.ProgrammePaysFen!.Value));
        Assert.Equal(3_000, await scene.CreditBalanceAsync(Accounts.PayeePayable(TestRecords.Provider)));
        Assert.Equal(0, await scene.CreditBalanceAsync(Accounts.PayeePayable(TestRecords.Holder)));
        Assert.Equal(9_000, await scene.CreditBalanceAsync(Accounts.ProviderReceivable(TestRecords.Provider)));
        Assert.Equal(-9_000, await scene.CreditBalanceAsync(Accounts.HolderDue(TestRecords.Holder)));
    }

    [Fact]
    public async Task Rerunning_a_closed_day_returns_the_same_hash_and_writes_nothing()
    {
        var (scene, _, _, _, _) = await SeedAsync(postgres);
        await using var owned = scene;
        SettlementOutcome first = await scene.SettleAsync(Day);
        string counts = await CountsAsync(scene);

        SettlementOutcome again = await scene.SettleAsync(Day);

        Assert.True(again.AlreadyClosed);
        Assert.Equal(first.SettlementHex, again.SettlementHex);
        Assert.Equal(first.Statements.Select(s => s.CanonicalCsv), again.Statements.Select(s => s.CanonicalCsv));
        Assert.Equal(counts, await CountsAsync(scene));
    }

    [Fact]
    public async Task Two_runs_of_one_day_at_once_close_it_once()
    {
        var (scene, _, _, _, _) = await SeedAsync(postgres);
        await using var owned = scene;

        SettlementOutcome[] runs = await Task.WhenAll(Task.Run(() => scene.SettleAsync(Day)), Task.Run(() => scene.SettleAsync(Day)));

        Assert.Single(runs, r => !r.AlreadyClosed);
        Assert.Single(runs, r => r.AlreadyClosed);
        Assert.Equal(runs[0].SettlementHex, runs[1].SettlementHex);
        Assert.Equal(1L, await scene.ScalarAsync<long>("SELECT count(*) FROM settlement_runs"));
    }

    [Theory]
    [InlineData("aggregate")]
    [InlineData("ledger")]
    public async Task A_run_cancelled_midway_leaves_nothing_and_its_rerun_matches_an_uninterrupted_run_byte_for_byte(string stage)
    {
        var (interrupted, _, _, voucher, _) = await SeedAsync(postgres);
        await using var ownedInterrupted = interrupted;
        var (clean, _, _, _, _) = await SeedAsync(postgres);
        await using var ownedClean = clean;
        string before = await CountsAsync(interrupted);

        using var cancel = new CancellationTokenSource();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => interrupted.SettleAsync(Day, p =>
        {
            if (p.Stage == stage)
            {
                cancel.Cancel();
            }
        }, cancel.Token));

        Assert.Equal(before, await CountsAsync(interrupted));
        Assert.Equal(3_000, (await interrupted.Book.GetVoucherAsync(voucher.VoucherId, CancellationToken.None))!.HeldFen);
        SettlementOutcome rerun = await interrupted.SettleAsync(Day);
        SettlementOutcome uninterrupted = await clean.SettleAsync(Day);
        Assert.False(rerun.AlreadyClosed);
        Assert.Equal(uninterrupted.SettlementHex, rerun.SettlementHex);
        Assert.Equal(uninterrupted.Statements.Select(s => s.CanonicalCsv), rerun.Statements.Select(s => s.CanonicalCsv));
    }

    [Fact]
    public async Task Late_records_for_a_closed_day_are_settled_as_an_adjustment_by_the_next_run_and_the_closed_day_is_never_rewritten()
    {
        var (scene, _, contract, _, _) = await SeedAsync(postgres);
        await using var owned = scene;
        SettlementOutcome closed = await scene.SettleAsync(Day);
        // Two records of the closed day arrive late, in a new stream and in the old one, with a day of new usage.
        await scene.IngestAsync("cluster-a", [VoucherScene.Usage(TestRecords.Holder, Day, 200, "late-1")]);
        await scene.IngestAsync("cluster-late", [VoucherScene.Usage(TestRecords.Holder, Day, 201, "late-2")]);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(TestRecords.Holder, NextDay, 4));

        SettlementOutcome next = await scene.SettleAsync(NextDay);
        SettlementOutcome reread = (await scene.Settlement().GetAsync(Day, CancellationToken.None))!;
        SettlementOutcome rerun = await scene.SettleAsync(Day);
        SettlementOutcome third = await scene.SettleAsync(NextDay.AddDays(1));

        Assert.Equal((4L, 2L), (next.DayRecords, next.AdjustmentRecords));
        PartyStatement provider = next.Statements.Single(s => s.PartyKind == "provider").Parse();
        StatementRow adjustment = provider.Rows.Single(r => r.Record == "adjustment");
        Assert.Equal((Day, contract.ContractId, 2L, 2_400L), (adjustment.UsageDay!.Value, adjustment.Contract!.Value, adjustment.Records!.Value, adjustment.FeeFen!.Value));
        Assert.Equal(4_800 + 2_400, next.FeeFen);
        Assert.Equal(closed.SettlementHex, reread.SettlementHex);
        Assert.Equal(closed.SettlementHex, rerun.SettlementHex);
        Assert.Equal(0, third.AdjustmentRecords);
        Assert.Equal(12_000 + 4_800 + 2_400, -await scene.CreditBalanceAsync(Accounts.HolderDue(TestRecords.Holder)));
    }

    [Fact]
    public async Task A_hold_whose_usage_is_not_settled_before_it_expires_is_released_by_the_run_of_its_expiry_day()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();
        Contract contract = await scene.ContractAsync(holder);
        Voucher voucher = await scene.VoucherAsync(contract.ContractId, 100_000_000);
        await scene.ParametersAsync(p => p with { HoldDays = 1 });
        await scene.IngestAsync("cluster-a", [.. VoucherScene.Jobs(holder, Day, 1), .. VoucherScene.Jobs(holder, NextDay, 1)]);
        Claim claim = await scene.ClaimJobsAsync(contract.ContractId, "job-1120-000", "job-1121-000");
        scene.Clock.Now = VoucherScene.Now.AddDays(3);

        await scene.SettleAsync(Day);
        SettlementOutcome expiry = await scene.SettleAsync(new DateOnly(2026, 12, 2));

        Assert.Equal(HoldState.HoldExpired, (await scene.Claims.GetClaimAsync(claim.ClaimId, CancellationToken.None))!.HoldState);
        Assert.Equal(0, (await scene.Book.GetVoucherAsync(voucher.VoucherId, CancellationToken.None))!.HeldFen);
        Assert.Equal(0L, await scene.ScalarAsync<long>("SELECT count(*) FROM redeemed_usage"));
        StatementRow expired = expiry.Statements.Single(s => s.PartyKind == "holder").Parse().Rows.Single(r => r.Record == "hold_expired");
        Assert.Equal((claim.ClaimId, 1_200L), (expired.Claim!.Value, expired.SubsidyFen!.Value));
    }

    [Fact]
    public async Task A_mismatch_found_by_the_reconciliation_fails_the_run_loudly_and_writes_nothing()
    {
        var (scene, _, _, voucher, _) = await SeedAsync(postgres);
        await using var owned = scene;
        // A voucher row that disagrees with its holds and its ledger accounts.
        await scene.ScalarAsync<int>("UPDATE vouchers SET held_fen = held_fen + 1 WHERE voucher_id = @id RETURNING 1", new { id = voucher.VoucherId });
        string before = await CountsAsync(scene);

        var failed = await Assert.ThrowsAsync<SettlementRefusedException>(() => scene.SettleAsync(Day));

        Assert.Equal(SettlementRefusalReason.ReconciliationFailed, failed.Reason);
        Assert.Contains($"voucher {voucher.VoucherId}", failed.Message, StringComparison.Ordinal);
        Assert.Equal(before, await CountsAsync(scene));
    }

    [Fact]
    public async Task A_ledger_that_disagrees_with_a_voucher_fails_the_reconciliation_and_writes_nothing()
    {
        var (scene, _, _, voucher, _) = await SeedAsync(postgres);
        await using var owned = scene;
        // A balanced entry, booked around the voucher book, that takes 1 fen from the voucher's
        // available account: the ledger, read apart from the voucher rows, must still be checked
        // against them.
        await scene.ScalarAsync<int>("""
            WITH e AS (INSERT INTO ledger_entries (kind, reference, booked_at, memo) VALUES ('voucher_issue', 'stray', now(), 'stray') RETURNING entry_id)
            INSERT INTO ledger_lines (entry_id, line_no, account, debit_fen, credit_fen)
            SELECT e.entry_id, l.n, l.account, l.debit, l.credit FROM e,
                (VALUES (1, 'voucher_available:' || @id, 1::bigint, 0::bigint), (2, 'programme_budget:2026', 0::bigint, 1::bigint)) AS l(n, account, debit, credit)
            RETURNING 1
            """, new { id = voucher.VoucherId });
        string before = await CountsAsync(scene);

        var failed = await Assert.ThrowsAsync<SettlementRefusedException>(() => scene.SettleAsync(Day));

        Assert.Equal(SettlementRefusalReason.ReconciliationFailed, failed.Reason);
        Assert.Contains($"voucher {voucher.VoucherId}", failed.Message, StringComparison.Ordinal);
        Assert.Contains("the ledger says available", failed.Message, StringComparison.Ordinal);
        Assert.Equal(before, await CountsAsync(scene));
    }

    [Fact]
    public async Task A_day_that_has_not_ended_in_Shanghai_cannot_be_settled()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        scene.Clock.Now = new DateTimeOffset(2026, 11, 20, 23, 59, 0, TimeSpan.FromHours(8));

        var refused = await Assert.ThrowsAsync<SettlementRefusedException>(() => scene.SettleAsync(Day));

        Assert.Equal(SettlementRefusalReason.DayNotEnded, refused.Reason);
    }

    [Fact]
    public async Task Statements_are_canonical_csv_with_json_and_text_renderings_of_the_same_rows()
    {
        var (scene, _, contract, voucher, claim) = await SeedAsync(postgres);
        await using var owned = scene;

        SettlementOutcome outcome = await scene.SettleAsync(Day);

        StoredStatement stored = outcome.Statements.Single(s => s.PartyKind == "holder" && s.Party == TestRecords.Holder);
        string csv = Encoding.UTF8.GetString(stored.CanonicalCsv);
        string expected =
            "day,party_kind,party,record,usage_day,provider,holder,contract,device_model,fee_unit,records,usage_npfh,card_ms,price_fen,fee_fen,claim,voucher,payee,subsidy_fen,holder_pays_fen,programme_pays_fen,note\n"
            + $"2026-11-20,holder,{TestRecords.Holder},usage,2026-11-20,{TestRecords.Provider},{TestRecords.Holder},{contract.ContractId},H100-SXM,per_card_hour,10,6596000000,24000000,1800,12000,,,,,,,\n"
            + $"2026-11-20,holder,{TestRecords.Holder},subsidy,,{TestRecords.Provider},{TestRecords.Holder},{contract.ContractId},,,,,,,,{claim.ClaimId},{voucher.VoucherId},{TestRecords.Holder},3000,,,holder_reimbursement\n"
            + $"2026-11-20,holder,{TestRecords.Holder},total,,,,,,,10,6596000000,24000000,,12000,,,,3000,12000,3000,\n";
        Assert.Equal(expected, csv);
        Assert.Equal(System.Security.Cryptography.SHA256.HashData(stored.CanonicalCsv), stored.Sha256);
        Assert.Equal(StatementFormats.SettlementHash(outcome.Statements.Select(s => s.CanonicalCsv)), outcome.SettlementSha256);

        string json = StatementFormats.Json(stored.Parse(), stored.Sha256);
        using var document = System.Text.Json.JsonDocument.Parse(json);
        Assert.Equal(12_000, document.RootElement.GetProperty("rows")[0].GetProperty("feeFen").GetInt64());
        Assert.Equal(Convert.ToHexStringLower(stored.Sha256), document.RootElement.GetProperty("sha256").GetString());
        string text = StatementRendering.Text(stored.Parse(), new StatementContext(stored.Sha256, outcome.SettlementHex, outcome.FinishedAt, PartyNames.None));
        Assert.Matches(@"\n  合同内费用（元）\s+120\.00\n", text);
        Assert.Matches(@"\n  计划支付（元）\s+30\.00\n", text);
    }

    /// <summary>What a run writes, counted: equal before and after means nothing was written.</summary>
    private static async Task<string> CountsAsync(VoucherScene scene) =>
        string.Join(", ", await scene.QueryAsync<string>("""
            SELECT 'runs=' || (SELECT count(*) FROM settlement_runs) UNION ALL
            SELECT 'marks=' || (SELECT count(*) FROM settlement_stream_marks) UNION ALL
            SELECT 'lines=' || (SELECT count(*) FROM settlement_lines) UNION ALL
            SELECT 'statements=' || (SELECT count(*) FROM settlement_statements) UNION ALL
            SELECT 'entries=' || (SELECT count(*) FROM ledger_entries) UNION ALL
            SELECT 'ledger_lines=' || (SELECT count(*) FROM ledger_lines) UNION ALL
            SELECT 'holds=' || (SELECT string_agg(state, ',' ORDER BY hold_id) FROM voucher_holds) UNION ALL
            SELECT 'vouchers=' || (SELECT string_agg(held_fen || '/' || posted_fen, ',' ORDER BY voucher_id) FROM vouchers)
            """));
}
