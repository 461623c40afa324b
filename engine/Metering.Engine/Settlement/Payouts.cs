using System.Data;
using System.Text.RegularExpressions;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Identity;
using Metering.Engine.Ledger;
using Metering.Engine.Time;
using Metering.Engine.Vouchers;
using Metering.Engine.Storage;
using Npgsql;

namespace Metering.Engine.Settlement;

/// <summary>Why a payout or a year-end release was refused; the server maps each to its wire reason.</summary>
public enum PayoutProblem
{
    /// <summary>A field is missing or malformed: the payee's code, the amount, the reference, the date or the year.</summary>
    FieldInvalid,

    /// <summary>The amount is more than the payee may be paid on that date.</summary>
    OverPayable,

    /// <summary>Nothing is owed to the payee that a transfer on that date could pay.</summary>
    NothingPayable,

    /// <summary>The bank reference is recorded already for a different transfer.</summary>
    ReferenceTaken,

    /// <summary>The programme year has not ended by the server's clock.</summary>
    YearNotEnded,

    /// <summary>No voucher of the year has an unused balance left.</summary>
    NothingToRelease,
}

/// <summary>A payout or a year-end release was refused; nothing was written.</summary>
public sealed class PayoutRefusedException(PayoutProblem problem, string message, IReadOnlyDictionary<string, string>? metadata = null) : Exception(message)
{
    public PayoutProblem Problem { get; } = problem;

    /// <summary>Details a client can act on: how much may be paid, or the payout that holds a reference.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; } = metadata ?? new Dictionary<string, string>();
}

/// <summary>A bank transfer to record.</summary>
public sealed record PayoutOrder(string PayeeCode, long AmountFen, string BankReference, DateOnly PaidOn);

/// <summary>A recorded payout; <see cref="PayableFen"/> is what the payee is still owed when it was read.</summary>
public sealed record PayoutRecord(long PayoutId, string PayeeCode, long AmountFen, string BankReference, DateOnly PaidOn, long LedgerEntryId, string RecordedBy,
    DateTimeOffset RecordedAt, long PayableFen, bool AlreadyRecorded);

/// <summary>What one year-end release returned to the budget.</summary>
public sealed record YearEndReleaseRecord(long ReleaseId, int ProgrammeYear, int Vouchers, long ReleasedFen, long YearReleasedFen, string ReleasedBy, DateTimeOffset ReleasedAt);

/// <summary>
/// A party's payee account as at the end of a statement's day: subsidies posted to it by the
/// settlement runs of days up to that day, the payouts dated up to that day, and what is still
/// owed. For the programme, the same over every payee.
/// </summary>
public sealed record PayeePosition(DateOnly Day, long PostedFen, long PaidFen, IReadOnlyList<PayoutRecord> PayoutsOfDay)
{
    public long OutstandingFen => PostedFen - PaidFen;
}

/// <summary>
/// Payouts: bank transfers that clear what the programme owes a payee, one of the two ledger
/// movements outside a settlement run (the other is <see cref="YearEndReleases"/>). A payout
/// debits <c>payee_payable:{payee}</c> and credits <c>programme_paid:{year of the payment}</c>
/// in one transaction with its evidence row, and is refused rather than let the payable go
/// negative.
/// </summary>
public sealed partial class Payouts(NpgsqlDataSource dataSource, TimeProvider time)
{
    /// <summary>Largest payout, in fen: 10¹³ fen, the contracts' own limit.</summary>
    public const long AmountFenMax = VoucherBook.AmountFenMax;

    /// <summary>Most payouts one list returns.</summary>
    public const int ListLimitMax = 1_000;

    /// <summary>Most payouts of one day a statement shows; the totals count them all.</summary>
    public const int StatementPayoutsMax = 1_000;

    // A transaction-scoped advisory lock per payee orders its payouts.
    private const int PayeeLockSpace = 0x5041_5900;

    [GeneratedRegex("^[0-9A-Za-z][0-9A-Za-z._/:-]{0,63}$")]
    private static partial Regex BankReferencePattern();

    /// <summary>
    /// Records a transfer. The payee may be paid at most what settlement runs of days before the
    /// payment date posted to it, less every payout recorded so far: a transfer cannot pay a
    /// subsidy that was not yet owed on its date, so a statement's outstanding figure never goes
    /// below zero on any day. An identical retry of a recorded reference returns the first payout.
    /// </summary>
    public async Task<PayoutRecord> RecordAsync(Actor actor, PayoutOrder order, CancellationToken cancellationToken)
    {
        Check(order);
        try
        {
            return await RecordOnceAsync(actor, order, cancellationToken);
        }
        catch (PostgresException race) when (race.SqlState == PostgresErrorCodes.UniqueViolation && race.ConstraintName == "payouts_bank_reference_key")
        {
            // Another call recorded the reference between our look and our insert: its payout is
            // now visible, and the look decides as for any retry.
            return await RecordOnceAsync(actor, order, cancellationToken);
        }
    }

    private void Check(PayoutOrder order)
    {
        if (!CreditCode.IsValid(order.PayeeCode))
        {
            throw Invalid($"payee_code '{order.PayeeCode}' is not a valid unified social credit code (18 characters, GB 32100-2015 check character)");
        }

        if (order.AmountFen is <= 0 or > AmountFenMax)
        {
            throw Invalid($"amount_fen must be 1 to {AmountFenMax}, not {order.AmountFen}");
        }

        if (!BankReferencePattern().IsMatch(order.BankReference))
        {
            throw Invalid($"bank_reference must be 1 to 64 characters of A-Z, a-z, 0-9 and . _ / : -, starting with a letter or digit, not '{order.BankReference}'");
        }

        DateOnly today = ShanghaiTime.DateOf(time.GetUtcNow());
        if (order.PaidOn > today || order.PaidOn < DailySettlement.FirstDay)
        {
            throw Invalid($"paid_on {ShanghaiTime.IsoDate(order.PaidOn)} must lie from {ShanghaiTime.IsoDate(DailySettlement.FirstDay)} to today, {ShanghaiTime.IsoDate(today)} (Asia/Shanghai)");
        }
    }

    private async Task<PayoutRecord> RecordOnceAsync(Actor actor, PayoutOrder order, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(IsolationLevel.ReadCommitted, cancellationToken);
        await Transactions.SequentialOnCitusAsync(connection, transaction, cancellationToken);
        await connection.ExecuteAsync(new CommandDefinition("SELECT pg_advisory_xact_lock(@space, hashtext(@payee))",
            new { space = PayeeLockSpace, payee = order.PayeeCode }, transaction, cancellationToken: cancellationToken));

        PayoutRecord? earlier = await ReadByReferenceAsync(connection, transaction, order.BankReference, cancellationToken);
        if (earlier is not null)
        {
            if (earlier.PayeeCode == order.PayeeCode && earlier.AmountFen == order.AmountFen && earlier.PaidOn == order.PaidOn)
            {
                return earlier with { AlreadyRecorded = true };
            }

            throw new PayoutRefusedException(PayoutProblem.ReferenceTaken,
                $"bank reference {order.BankReference} is recorded already as payout {earlier.PayoutId}: {earlier.AmountFen} fen to {earlier.PayeeCode} on {ShanghaiTime.IsoDate(earlier.PaidOn)}",
                new Dictionary<string, string> { ["payout_id"] = earlier.PayoutId.ToString(System.Globalization.CultureInfo.InvariantCulture) });
        }

        string account = Accounts.PayeePayable(order.PayeeCode);
        var owed = await connection.QuerySingleAsync<(long PostedBefore, long Paid, long Balance)>(new CommandDefinition("""
            SELECT (SELECT coalesce(sum(l.credit_fen - l.debit_fen), 0)::bigint FROM ledger_lines l JOIN ledger_entries e USING (entry_id)
                    JOIN settlement_runs r ON r.run_id = e.run_id WHERE l.account = @account AND r.day < @paidOn),
                   (SELECT coalesce(sum(amount_fen), 0)::bigint FROM payouts WHERE payee_code = @payee),
                   (SELECT coalesce(sum(credit_fen - debit_fen), 0)::bigint FROM ledger_lines WHERE account = @account)
            """, new { account, paidOn = order.PaidOn, payee = order.PayeeCode }, transaction, cancellationToken: cancellationToken));
        long payable = owed.PostedBefore - owed.Paid;
        if (payable <= 0)
        {
            throw new PayoutRefusedException(PayoutProblem.NothingPayable, owed.Balance > 0
                ? $"{order.PayeeCode} is owed {Pricing.Yuan(owed.Balance)} CNY, but what is unpaid was posted by settlement runs of {ShanghaiTime.IsoDate(order.PaidOn)} or later, which a transfer dated {ShanghaiTime.IsoDate(order.PaidOn)} cannot pay"
                : $"the programme owes {order.PayeeCode} nothing: no subsidy was posted to it, or it was paid in full");
        }

        if (order.AmountFen > payable)
        {
            throw new PayoutRefusedException(PayoutProblem.OverPayable,
                $"{order.AmountFen} fen is more than the {payable} fen the programme owes {order.PayeeCode} for subsidies posted before {ShanghaiTime.IsoDate(order.PaidOn)}",
                new Dictionary<string, string> { ["payable_fen"] = payable.ToString(System.Globalization.CultureInfo.InvariantCulture) });
        }

        DateTimeOffset at = time.GetUtcNow();
        var entry = new LedgerEntry("payout", $"payout:{order.BankReference}", $"transfer {order.BankReference} of {ShanghaiTime.IsoDate(order.PaidOn)} to {order.PayeeCode}")
            .Debit(account, order.AmountFen)
            .Credit(Accounts.ProgrammePaid(order.PaidOn.Year), order.AmountFen);
        long entryId = await LedgerWriter.WriteAsync(connection, transaction, entry, null, at, cancellationToken)
            ?? throw new LedgerInvariantException($"payout {order.BankReference} wrote no ledger entry");
        long payoutId = await connection.ExecuteScalarAsync<long>(new CommandDefinition("""
            INSERT INTO payouts (payee_code, bank_reference, amount_fen, paid_on, entry_id, recorded_by, recorded_at)
            VALUES (@payee, @reference, @amount, @paidOn, @entryId, @by, @at) RETURNING payout_id
            """, new { payee = order.PayeeCode, reference = order.BankReference, amount = order.AmountFen, paidOn = order.PaidOn, entryId, by = actor.Subject, at = at.UtcDateTime },
            transaction, cancellationToken: cancellationToken));

        long balance = owed.Balance - order.AmountFen;
        if (balance < 0)
        {
            throw new LedgerInvariantException($"{account} would go negative: {balance} fen");
        }

        await transaction.CommitAsync(cancellationToken);
        return new PayoutRecord(payoutId, order.PayeeCode, order.AmountFen, order.BankReference, order.PaidOn, entryId, actor.Subject, at, balance, AlreadyRecorded: false);
    }

    /// <summary>Payouts, newest first: all of them or one payee's, each with its payee's current payable.</summary>
    public async Task<IReadOnlyList<PayoutRecord>> ListAsync(string? payeeCode, int limit, CancellationToken cancellationToken)
    {
        if (payeeCode is not null && !CreditCode.IsValid(payeeCode))
        {
            throw Invalid($"payee_code '{payeeCode}' is not a valid unified social credit code");
        }

        limit = limit == 0 ? 100 : Math.Clamp(limit, 1, ListLimitMax);
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var rows = await connection.QueryAsync<PayoutRow>(new CommandDefinition(PayoutSelect + """
             WHERE @payee::text IS NULL OR p.payee_code = @payee ORDER BY p.payout_id DESC LIMIT @limit
            """, new { payee = payeeCode, limit }, cancellationToken: cancellationToken));
        return rows.Select(r => r.ToRecord()).ToList();
    }

    /// <summary>
    /// A statement party's payee account as at the end of <paramref name="day"/>: what settlement
    /// runs of days up to it posted to its payable, what payouts dated up to it paid, and the
    /// payouts dated that day. The programme's is the same over every payee.
    /// </summary>
    public async Task<PayeePosition> PositionAsync(string partyKind, string party, DateOnly day, CancellationToken cancellationToken)
    {
        bool programme = partyKind == StatementFormats.Programme;
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var totals = await connection.QuerySingleAsync<(long Posted, long Paid)>(new CommandDefinition("""
            SELECT (SELECT coalesce(sum(l.credit_fen - l.debit_fen), 0)::bigint FROM ledger_lines l JOIN ledger_entries e USING (entry_id)
                    JOIN settlement_runs r ON r.run_id = e.run_id
                    WHERE r.day <= @day AND (CASE WHEN @programme THEN l.account LIKE 'payee_payable:%' ELSE l.account = @account END)),
                   (SELECT coalesce(sum(amount_fen), 0)::bigint FROM payouts WHERE paid_on <= @day AND (@programme OR payee_code = @party))
            """, new { day, programme, party, account = Accounts.PayeePayable(party) }, cancellationToken: cancellationToken));
        var ofDay = await connection.QueryAsync<PayoutRow>(new CommandDefinition(PayoutSelect + """
             WHERE p.paid_on = @day AND (@programme OR p.payee_code = @party) ORDER BY p.payout_id LIMIT @limit
            """, new { day, programme, party, limit = StatementPayoutsMax }, cancellationToken: cancellationToken));
        return new PayeePosition(day, totals.Posted, totals.Paid, ofDay.Select(r => r.ToRecord()).ToList());
    }

    private static async Task<PayoutRecord?> ReadByReferenceAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string reference, CancellationToken cancellationToken)
    {
        PayoutRow? row = await connection.QueryFirstOrDefaultAsync<PayoutRow>(new CommandDefinition(PayoutSelect + " WHERE p.bank_reference = @reference",
            new { reference }, transaction, cancellationToken: cancellationToken));
        return row?.ToRecord();
    }

    private const string PayoutSelect = """
        SELECT p.payout_id AS PayoutId, p.payee_code AS PayeeCode, p.amount_fen AS AmountFen, p.bank_reference AS BankReference, p.paid_on AS PaidOn,
               p.entry_id AS EntryId, p.recorded_by AS RecordedBy, p.recorded_at AS RecordedAt,
               (SELECT coalesce(sum(credit_fen - debit_fen), 0)::bigint FROM ledger_lines WHERE account = 'payee_payable:' || p.payee_code) AS PayableFen
        FROM payouts p
        """;

    private sealed class PayoutRow
    {
        public long PayoutId { get; init; }
        public string PayeeCode { get; init; } = "";
        public long AmountFen { get; init; }
        public string BankReference { get; init; } = "";
        public DateTime PaidOn { get; init; }
        public long EntryId { get; init; }
        public string RecordedBy { get; init; } = "";
        public DateTime RecordedAt { get; init; }
        public long PayableFen { get; init; }

        public PayoutRecord ToRecord() =>
            new(PayoutId, PayeeCode, AmountFen, BankReference, DateOnly.FromDateTime(PaidOn), EntryId, RecordedBy, ShanghaiTime.Instant(RecordedAt), PayableFen, AlreadyRecorded: false);
    }

    internal static PayoutRefusedException Invalid(string message) => new(PayoutProblem.FieldInvalid, message);
}
