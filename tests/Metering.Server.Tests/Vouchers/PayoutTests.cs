using System.Text.Json;
using Dapper;
using Grpc.Core;
using Metering.Engine.Ledger;
using Metering.Engine.Sandbox;
using Metering.Engine.Settlement;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;
using Npgsql;

namespace Metering.Server.Tests.Vouchers;

/// <summary>
/// Payouts and the year-end release through the real server and database: a payout clears what
/// the programme owes a payee, the statements and the ledger show it, and every way of paying
/// too much, twice or too early, or releasing too early or twice, is refused and changes nothing.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class PayoutTests(PostgresFixture postgres)
{
    private static Metadata Operator => TestServer.Bearer(TestServer.OperatorKey);

    /// <summary>A server on a manual clock (2026-12-01 10:00 Asia/Shanghai) with the engine over its database.</summary>
    private sealed class Setting : IAsyncDisposable
    {
        public required TestServer Server { get; init; }
        public required VoucherScene Scene { get; init; }
        public required ManualClock Clock { get; init; }
        public VoucherService.VoucherServiceClient Vouchers => new(Server.Channel);
        public SettlementService.SettlementServiceClient Settlement => new(Server.Channel);

        public async ValueTask DisposeAsync()
        {
            await Scene.DisposeAsync();
            await Server.DisposeAsync();
        }
    }

    private async Task<Setting> StartAsync()
    {
        var clock = new ManualClock(VoucherScene.Now);
        TestServer server = await TestServer.StartAsync(postgres, time: clock);
        return new Setting { Server = server, Scene = VoucherScene.Over(server.ConnectionString, clock), Clock = clock };
    }

    /// <summary>
    /// A holder with a 2026 voucher of 500,000 CNY, ten jobs on 2026-11-20 of which two are
    /// claimed (1,200 fen of subsidy), and 2026-11-20 settled: the programme owes the holder
    /// 1,200 fen (Shenzhen's holder reimbursement). Returns the holder and the voucher.
    /// </summary>
    private static async Task<(string Holder, Metering.Engine.Vouchers.Voucher Voucher)> OwedAsync(VoucherScene scene)
    {
        string holder = await scene.HolderAsync();
        var contract = await scene.ContractAsync(holder);
        var voucher = await scene.VoucherAsync(contract.ContractId, 50_000_000);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, VoucherScene.Day, 10));
        var claim = await scene.ClaimJobsAsync(contract.ContractId, "job-1120-000", "job-1120-001");
        Assert.Equal(1_200L, claim.SubsidyFen);
        await scene.SettleAsync(VoucherScene.Day);
        return (holder, voucher);
    }

    private static Task<Payout> PayAsync(Setting setting, string payee, long amountFen, string reference, string paidOn, string? key = null) =>
        setting.Vouchers.RecordPayoutAsync(new RecordPayoutRequest { PayeeCode = payee, AmountFen = amountFen, BankReference = reference, PaidOn = paidOn },
            TestServer.Bearer(key ?? TestServer.OperatorKey)).ResponseAsync;

    /// <summary>Everything a refused call must leave as it was: ledger entries and lines, payouts, releases and voucher rows.</summary>
    private static Task<string> LedgerStateAsync(VoucherScene scene) => scene.ScalarAsync<string>("""
        SELECT (SELECT count(*) FROM ledger_entries) || '/' || (SELECT count(*) FROM ledger_lines) || '/' || (SELECT count(*) FROM payouts) || '/'
            || (SELECT count(*) FROM year_end_releases) || '/' || (SELECT coalesce(string_agg(voucher_id || ':' || held_fen || ':' || posted_fen || ':' || released_fen, ',' ORDER BY voucher_id), '') FROM vouchers)
        """);

    [Fact]
    public async Task A_payout_clears_the_holders_payable_and_the_ledger_and_the_statement_of_its_day_show_it()
    {
        await using Setting setting = await StartAsync();
        VoucherScene scene = setting.Scene;
        (string holder, _) = await OwedAsync(scene);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, new DateOnly(2026, 11, 22), 2));
        Statement before = await setting.Settlement.GetStatementAsync(new GetStatementRequest { Day = "2026-11-20", PartyKind = PartyKind.PartyHolder, Party = holder }, Operator);

        Payout payout = await PayAsync(setting, holder, 1_000, "CMB-20261122-0001", "2026-11-22");
        await scene.SettleAsync(new DateOnly(2026, 11, 22));
        Statement text = await setting.Settlement.GetStatementAsync(new GetStatementRequest
        {
            Day = "2026-11-22", PartyKind = PartyKind.PartyHolder, Party = holder, Format = StatementFormat.StatementText,
        }, Operator);
        Statement json = await setting.Settlement.GetStatementAsync(new GetStatementRequest
        {
            Day = "2026-11-22", PartyKind = PartyKind.PartyHolder, Party = holder, Format = StatementFormat.StatementJson,
        }, Operator);
        Statement earlier = await setting.Settlement.GetStatementAsync(new GetStatementRequest
        {
            Day = "2026-11-20", PartyKind = PartyKind.PartyHolder, Party = holder, Format = StatementFormat.StatementText,
        }, Operator);
        Statement afterCsv = await setting.Settlement.GetStatementAsync(new GetStatementRequest { Day = "2026-11-20", PartyKind = PartyKind.PartyHolder, Party = holder }, Operator);
        var lines = await scene.QueryAsync<(string Account, long Debit, long Credit)>(
            "SELECT account, debit_fen, credit_fen FROM ledger_lines WHERE entry_id = @id ORDER BY line_no", new { id = payout.LedgerEntryId });

        Assert.Equal((1_000L, 200L, false), (payout.AmountFen, payout.PayableFen, payout.AlreadyRecorded));
        Assert.Equal(200L, await scene.CreditBalanceAsync(Accounts.PayeePayable(holder)));
        Assert.Equal("payout", await scene.ScalarAsync<string>("SELECT kind FROM ledger_entries WHERE entry_id = @id", new { id = payout.LedgerEntryId }));
        Assert.Equal([(Accounts.PayeePayable(holder), 1_000L, 0L), (Accounts.ProgrammePaid(2026), 0L, 1_000L)], lines);
        Assert.Matches(@"截至当日已入账（元）\s+12\.00\n\s+截至当日已支付（元）\s+10\.00\n\s+尚欠（元）\s+2\.00\n", text.Content);
        Assert.Contains("CMB-20261122-0001", text.Content, StringComparison.Ordinal);
        using (JsonDocument document = JsonDocument.Parse(json.Content))
        {
            JsonElement payable = document.RootElement.GetProperty("payable");
            Assert.Equal((1_200L, 1_000L, 200L), (payable.GetProperty("postedFen").GetInt64(), payable.GetProperty("paidFen").GetInt64(), payable.GetProperty("outstandingFen").GetInt64()));
            Assert.Equal("CMB-20261122-0001", payable.GetProperty("payoutsOfDay")[0].GetProperty("bankReference").GetString());
        }

        // The statement of a day before the payment shows the subsidy still owed, and its hashed form did not move.
        Assert.Matches(@"截至当日已支付（元）\s+0\.00\n\s+尚欠（元）\s+12\.00\n", earlier.Content);
        Assert.Equal((before.Sha256, before.Content), (afterCsv.Sha256, afterCsv.Content));
    }

    [Fact]
    public async Task Over_payment_a_payment_before_the_subsidy_was_owed_a_payee_owed_nothing_bad_fields_and_a_provider_key_are_refused_and_change_nothing()
    {
        await using Setting setting = await StartAsync();
        VoucherScene scene = setting.Scene;
        (string holder, _) = await OwedAsync(scene);
        string state = await LedgerStateAsync(scene);

        var over = await Assert.ThrowsAsync<RpcException>(() => PayAsync(setting, holder, 1_201, "OVER-1", "2026-11-25"));
        var early = await Assert.ThrowsAsync<RpcException>(() => PayAsync(setting, holder, 100, "EARLY-1", "2026-11-20"));
        var provider = await Assert.ThrowsAsync<RpcException>(() => PayAsync(setting, TestRecords.Provider, 100, "PROVIDER-1", "2026-11-25"));
        var stranger = await Assert.ThrowsAsync<RpcException>(() => PayAsync(setting, VoucherScene.NewCode(), 100, "STRANGER-1", "2026-11-25"));
        var zero = await Assert.ThrowsAsync<RpcException>(() => PayAsync(setting, holder, 0, "ZERO-1", "2026-11-25"));
        var negative = await Assert.ThrowsAsync<RpcException>(() => PayAsync(setting, holder, -500, "NEGATIVE-1", "2026-11-25"));
        var future = await Assert.ThrowsAsync<RpcException>(() => PayAsync(setting, holder, 100, "FUTURE-1", "2026-12-02"));
        var malformed = await Assert.ThrowsAsync<RpcException>(() => PayAsync(setting, "91440300NOTACODE00", 100, "BAD-CODE-1", "2026-11-25"));
        var reference = await Assert.ThrowsAsync<RpcException>(() => PayAsync(setting, holder, 100, "has spaces", "2026-11-25"));
        var byProvider = await Assert.ThrowsAsync<RpcException>(() => PayAsync(setting, holder, 100, "SELF-1", "2026-11-25", TestServer.ProviderKey));

        Assert.Equal((StatusCode.FailedPrecondition, "PAYOUT_OVER_PAYABLE"), (over.StatusCode, IngestCall.Reason(over)));
        Assert.Equal("1200", over.GetRpcStatus()!.GetDetail<Google.Rpc.ErrorInfo>()!.Metadata["payable_fen"]);
        Assert.Equal((StatusCode.FailedPrecondition, "PAYEE_NOTHING_PAYABLE"), (early.StatusCode, IngestCall.Reason(early)));
        Assert.Equal((StatusCode.FailedPrecondition, "PAYEE_NOTHING_PAYABLE"), (provider.StatusCode, IngestCall.Reason(provider)));
        Assert.Equal((StatusCode.FailedPrecondition, "PAYEE_NOTHING_PAYABLE"), (stranger.StatusCode, IngestCall.Reason(stranger)));
        foreach (RpcException invalid in new[] { zero, negative, future, malformed, reference })
        {
            Assert.Equal((StatusCode.InvalidArgument, "VOUCHER_FIELD_INVALID"), (invalid.StatusCode, IngestCall.Reason(invalid)));
        }

        Assert.Equal(StatusCode.PermissionDenied, byProvider.StatusCode);
        Assert.Equal(state, await LedgerStateAsync(scene));
        Assert.Equal(1_200L, await scene.CreditBalanceAsync(Accounts.PayeePayable(holder)));
    }

    [Fact]
    public async Task A_bank_reference_pays_once_an_identical_retry_returns_the_first_payout_and_paying_past_what_is_owed_is_refused()
    {
        await using Setting setting = await StartAsync();
        VoucherScene scene = setting.Scene;
        (string holder, _) = await OwedAsync(scene);

        Payout first = await PayAsync(setting, holder, 1_000, "ICBC-0001", "2026-11-25");
        string afterFirst = await LedgerStateAsync(scene);
        Payout retry = await PayAsync(setting, holder, 1_000, "ICBC-0001", "2026-11-25");
        var changed = await Assert.ThrowsAsync<RpcException>(() => PayAsync(setting, holder, 200, "ICBC-0001", "2026-11-25"));
        var otherDay = await Assert.ThrowsAsync<RpcException>(() => PayAsync(setting, holder, 1_000, "ICBC-0001", "2026-11-26"));
        var pastOwed = await Assert.ThrowsAsync<RpcException>(() => PayAsync(setting, holder, 201, "ICBC-0002", "2026-11-25"));
        string afterRefusals = await LedgerStateAsync(scene);
        Payout rest = await PayAsync(setting, holder, 200, "ICBC-0003", "2026-11-26");
        var paidUp = await Assert.ThrowsAsync<RpcException>(() => PayAsync(setting, holder, 1, "ICBC-0004", "2026-11-26"));
        ListPayoutsResponse listed = await setting.Vouchers.ListPayoutsAsync(new ListPayoutsRequest { PayeeCode = holder }, TestServer.Bearer(TestServer.AuditorKey));

        Assert.Equal((first.PayoutId, first.LedgerEntryId, true), (retry.PayoutId, retry.LedgerEntryId, retry.AlreadyRecorded));
        Assert.Equal((StatusCode.AlreadyExists, "PAYOUT_REFERENCE_TAKEN"), (changed.StatusCode, IngestCall.Reason(changed)));
        Assert.Equal(first.PayoutId.ToString(System.Globalization.CultureInfo.InvariantCulture), changed.GetRpcStatus()!.GetDetail<Google.Rpc.ErrorInfo>()!.Metadata["payout_id"]);
        Assert.Equal((StatusCode.AlreadyExists, "PAYOUT_REFERENCE_TAKEN"), (otherDay.StatusCode, IngestCall.Reason(otherDay)));
        Assert.Equal((StatusCode.FailedPrecondition, "PAYOUT_OVER_PAYABLE"), (pastOwed.StatusCode, IngestCall.Reason(pastOwed)));
        Assert.Equal(afterFirst, afterRefusals);
        Assert.Equal(0L, rest.PayableFen);
        Assert.Equal((StatusCode.FailedPrecondition, "PAYEE_NOTHING_PAYABLE"), (paidUp.StatusCode, IngestCall.Reason(paidUp)));
        Assert.Equal(["ICBC-0003", "ICBC-0001"], listed.Payouts.Select(p => p.BankReference));
        Assert.Equal(1_200L, await scene.ScalarAsync<long>("SELECT sum(amount_fen)::bigint FROM payouts WHERE payee_code = @holder", new { holder }));
        Assert.Equal(0L, await scene.CreditBalanceAsync(Accounts.PayeePayable(holder)));
    }

    [Fact]
    public async Task Two_clerks_paying_the_same_debt_at_once_under_different_references_pay_it_once()
    {
        await using Setting setting = await StartAsync();
        VoucherScene scene = setting.Scene;
        (string holder, _) = await OwedAsync(scene);

        // Eight transfers of 1,000 fen race for 1,200 owed: the payee's lock lets exactly one through.
        Task<Payout>[] racing = Enumerable.Range(0, 8).Select(i => PayAsync(setting, holder, 1_000, $"RACE-{i}", "2026-11-25")).ToArray();
        await Task.WhenAll(racing.Select(t => t.ContinueWith(_ => { }, TaskScheduler.Default)));
        var refused = racing.Where(t => t.IsFaulted).Select(t => (RpcException)t.Exception!.InnerException!).ToList();

        Assert.Equal(1, racing.Count(t => t.IsCompletedSuccessfully));
        Assert.Equal(7, refused.Count);
        Assert.All(refused, e => Assert.Equal("PAYOUT_OVER_PAYABLE", IngestCall.Reason(e)));
        Assert.Equal(200L, await scene.CreditBalanceAsync(Accounts.PayeePayable(holder)));
        Assert.Equal(1L, await scene.ScalarAsync<long>("SELECT count(*) FROM payouts"));
    }

    [Fact]
    public async Task Not_even_the_database_owner_rewrites_or_deletes_a_recorded_payout_or_release()
    {
        await using Setting setting = await StartAsync();
        VoucherScene scene = setting.Scene;
        (string holder, _) = await OwedAsync(scene);
        await PayAsync(setting, holder, 1_000, "ABC-0001", "2026-11-25");
        setting.Clock.Now = new DateTimeOffset(2027, 1, 2, 9, 0, 0, TimeSpan.FromHours(8));
        await setting.Vouchers.ReleaseYearEndAsync(new ReleaseYearEndRequest { ProgrammeYear = 2026 }, Operator);

        var refusals = new List<PostgresException>();
        foreach (string sql in new[]
        {
            "UPDATE payouts SET amount_fen = 1", "DELETE FROM payouts", "TRUNCATE payouts CASCADE",
            "UPDATE year_end_releases SET released_fen = 1", "DELETE FROM year_end_releases",
        })
        {
            refusals.Add(await Assert.ThrowsAsync<PostgresException>(() => setting.Server.ExecuteAsync(sql)));
        }

        Assert.All(refusals, e => Assert.Equal(PostgresErrorCodes.InsufficientPrivilege, e.SqlState));
        Assert.Equal(1_000L, await scene.ScalarAsync<long>("SELECT amount_fen FROM payouts WHERE bank_reference = 'ABC-0001'"));
        Assert.Equal(1L, await scene.ScalarAsync<long>("SELECT count(*) FROM year_end_releases"));
    }

    [Fact]
    public async Task The_year_end_release_is_refused_before_the_year_ends_returns_unused_balances_once_and_the_ledger_balances_in_every_account()
    {
        await using Setting setting = await StartAsync();
        VoucherScene scene = setting.Scene;
        (string holder, var voucher) = await OwedAsync(scene);
        var other = await scene.ContractAsync(await scene.HolderAsync(VoucherScene.NewCode()), TestRecords.OtherProvider);
        var untouched = await scene.VoucherAsync(other.ContractId, 20_000_000);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, new DateOnly(2026, 11, 25), 2, prefix: "held"));
        var held = await scene.ClaimJobsAsync(voucher.ContractId, "held-1125-000", "held-1125-001");
        await PayAsync(setting, holder, 700, "BOC-0001", "2026-11-30");
        string state = await LedgerStateAsync(scene);

        var early = await Assert.ThrowsAsync<RpcException>(() => setting.Vouchers.ReleaseYearEndAsync(new ReleaseYearEndRequest { ProgrammeYear = 2026 }, Operator).ResponseAsync);
        setting.Clock.Now = new DateTimeOffset(2026, 12, 31, 23, 59, 59, TimeSpan.FromHours(8));
        var lastSecond = await Assert.ThrowsAsync<RpcException>(() => setting.Vouchers.ReleaseYearEndAsync(new ReleaseYearEndRequest { ProgrammeYear = 2026 }, Operator).ResponseAsync);
        var byProvider = await Assert.ThrowsAsync<RpcException>(() => setting.Vouchers.ReleaseYearEndAsync(new ReleaseYearEndRequest { ProgrammeYear = 2026 },
            TestServer.Bearer(TestServer.ProviderKey)).ResponseAsync);
        string stateAfterRefusals = await LedgerStateAsync(scene);

        setting.Clock.Now = new DateTimeOffset(2027, 1, 1, 0, 0, 0, TimeSpan.FromHours(8));
        YearEndRelease first = await setting.Vouchers.ReleaseYearEndAsync(new ReleaseYearEndRequest { ProgrammeYear = 2026 }, Operator);
        string afterFirst = await LedgerStateAsync(scene);
        var twice = await Assert.ThrowsAsync<RpcException>(() => setting.Vouchers.ReleaseYearEndAsync(new ReleaseYearEndRequest { ProgrammeYear = 2026 }, Operator).ResponseAsync);
        string afterTwice = await LedgerStateAsync(scene);
        // The hold reserved at year end is voided afterwards: its amount comes free, and only that is released next.
        await setting.Vouchers.VoidClaimAsync(new VoidClaimRequest { ClaimId = held.ClaimId, Reason = "usage disputed" }, Operator);
        YearEndRelease second = await setting.Vouchers.ReleaseYearEndAsync(new ReleaseYearEndRequest { ProgrammeYear = 2026 }, Operator);
        Voucher after = await setting.Vouchers.GetVoucherAsync(new GetVoucherRequest { VoucherId = voucher.VoucherId }, Operator);
        // A settlement run after the release reconciles every voucher with its released part.
        await scene.SettleAsync(new DateOnly(2026, 12, 31));

        Assert.Equal((StatusCode.FailedPrecondition, "PROGRAMME_YEAR_NOT_ENDED"), (early.StatusCode, IngestCall.Reason(early)));
        Assert.Equal((StatusCode.FailedPrecondition, "PROGRAMME_YEAR_NOT_ENDED"), (lastSecond.StatusCode, IngestCall.Reason(lastSecond)));
        Assert.Equal(StatusCode.PermissionDenied, byProvider.StatusCode);
        Assert.Equal(state, stateAfterRefusals);
        Assert.Equal((2u, 50_000_000L - 1_200 - held.SubsidyFen + 20_000_000), (first.Vouchers, first.ReleasedFen));
        Assert.Equal((StatusCode.FailedPrecondition, "NOTHING_TO_RELEASE"), (twice.StatusCode, IngestCall.Reason(twice)));
        Assert.Equal(afterFirst, afterTwice);
        Assert.Equal((1u, held.SubsidyFen, first.ReleasedFen + held.SubsidyFen), (second.Vouchers, second.ReleasedFen, second.YearReleasedFen));
        Assert.Equal((0L, 1_200L, 50_000_000L - 1_200, 0L), (after.HeldFen, after.PostedFen, after.ReleasedFen, after.RemainingFen));

        // Every account, summed: the ledger balances, and each account says what the rows say.
        var balances = (await scene.QueryAsync<(string Account, long Debit, long Credit)>(
            "SELECT account, sum(debit_fen)::bigint, sum(credit_fen)::bigint FROM ledger_lines GROUP BY account")).ToDictionary(b => b.Account, b => b.Credit - b.Debit);
        Assert.Equal(0L, balances.Values.Sum());
        Assert.Equal(-1_200L, balances[Accounts.ProgrammeBudget(2026)]);
        Assert.Equal(0L, balances[Accounts.VoucherAvailable(voucher.VoucherId)]);
        Assert.Equal(0L, balances[Accounts.VoucherAvailable(untouched.VoucherId)]);
        Assert.Equal(0L, balances[Accounts.VoucherHeld(voucher.VoucherId)]);
        Assert.Equal(500L, balances[Accounts.PayeePayable(holder)]);
        Assert.Equal(700L, balances[Accounts.ProgrammePaid(2026)]);
        Assert.Equal(first.ReleasedFen + second.ReleasedFen, await scene.ScalarAsync<long>("SELECT sum(released_fen)::bigint FROM vouchers WHERE programme_year = 2026"));
    }

    [Fact]
    public async Task The_year_end_gate_reads_the_sandbox_clock_and_opens_when_an_operator_advances_it()
    {
        // A sandbox database on the real clock plus its offset, as `db migrate --sandbox` and
        // `serve --clock simulated` make one; set-up marks it past the empty-only trigger.
        string database = await postgres.CreateDatabaseAsync();
        await using (NpgsqlDataSource owner = Database.CreateDataSource(database))
        await using (NpgsqlConnection connection = await owner.OpenConnectionAsync())
        {
            await connection.ExecuteAsync("""
                ALTER TABLE sandbox_clock DISABLE TRIGGER sandbox_clock_mark_empty_only;
                INSERT INTO sandbox_clock DEFAULT VALUES ON CONFLICT DO NOTHING;
                ALTER TABLE sandbox_clock ENABLE TRIGGER sandbox_clock_mark_empty_only;
                """);
        }

        await using TestServer server = await TestServer.StartAsync(postgres, time: new SimulatedClock(0), database: database);
        var vouchers = new VoucherService.VoucherServiceClient(server.Channel);
        var sandbox = new SandboxService.SandboxServiceClient(server.Channel);
        DateTimeOffset now = DateTimeOffset.UtcNow;
        int year = ShanghaiYear(now);

        var before = await Assert.ThrowsAsync<RpcException>(() => vouchers.ReleaseYearEndAsync(new ReleaseYearEndRequest { ProgrammeYear = (uint)year }, Operator).ResponseAsync);
        DateTimeOffset yearEnd = new(year + 1, 1, 1, 0, 0, 0, TimeSpan.FromHours(8));
        await sandbox.AdvanceClockAsync(new AdvanceClockRequest { ByMs = (long)(yearEnd - now).TotalMilliseconds + 60_000 }, Operator);
        var after = await Assert.ThrowsAsync<RpcException>(() => vouchers.ReleaseYearEndAsync(new ReleaseYearEndRequest { ProgrammeYear = (uint)year }, Operator).ResponseAsync);

        Assert.Equal("PROGRAMME_YEAR_NOT_ENDED", IngestCall.Reason(before));
        // Past the gate: the test database holds no voucher of the year, so there is nothing to release.
        Assert.Equal("NOTHING_TO_RELEASE", IngestCall.Reason(after));
    }

    private static int ShanghaiYear(DateTimeOffset instant) => instant.ToOffset(TimeSpan.FromHours(8)).Year;

    [Fact]
    public async Task The_payout_and_year_end_commands_record_list_and_refuse_through_the_server()
    {
        await using Setting setting = await StartAsync();
        (string holder, _) = await OwedAsync(setting.Scene);
        string[] record = ["voucher", "payout", "record", "--payee", holder, "--amount-fen", "800", "--reference", "SPDB-7788", "--paid-on", "2026-11-28"];

        var recorded = await CliProcess.RunAsAsync(setting.Server, TestServer.OperatorKey, record);
        var again = await CliProcess.RunAsAsync(setting.Server, TestServer.OperatorKey, record);
        var over = await CliProcess.RunAsAsync(setting.Server, TestServer.OperatorKey,
            "voucher", "payout", "record", "--payee", holder, "--amount-fen", "401", "--reference", "SPDB-7789", "--paid-on", "2026-11-28");
        var list = await CliProcess.RunAsAsync(setting.Server, TestServer.AuditorKey, "voucher", "payout", "list", "--payee", holder);
        var release = await CliProcess.RunAsAsync(setting.Server, TestServer.OperatorKey, "voucher", "year-end", "release", "--year", "2026");

        Assert.True(recorded.ExitCode == 0, recorded.Output);
        Assert.Contains("Recorded payout", recorded.Output, StringComparison.Ordinal);
        Assert.Contains("is still owed 4.00 CNY", recorded.Output, StringComparison.Ordinal);
        Assert.True(again.ExitCode == 0, again.Output);
        Assert.Contains("recorded already; nothing was paid again", again.Output, StringComparison.Ordinal);
        Assert.Equal(4, over.ExitCode);
        Assert.Contains("PAYOUT_OVER_PAYABLE", over.Output, StringComparison.Ordinal);
        Assert.True(list.ExitCode == 0, list.Output);
        Assert.Contains("SPDB-7788", list.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("SPDB-7789", list.Output, StringComparison.Ordinal);
        Assert.Equal(4, release.ExitCode);
        Assert.Contains("PROGRAMME_YEAR_NOT_ENDED", release.Output, StringComparison.Ordinal);
        Assert.Equal(1L, await setting.Scene.ScalarAsync<long>("SELECT count(*) FROM payouts"));
    }
}
