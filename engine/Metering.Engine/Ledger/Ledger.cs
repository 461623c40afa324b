using Dapper;
using Npgsql;

namespace Metering.Engine.Ledger;

/// <summary>
/// A ledger invariant does not hold: an entry does not balance, a balance would go negative, or
/// a reconciliation found a mismatch. Checked in Release builds too; the transaction that met it
/// is rolled back and the caller fails loudly.
/// </summary>
internal sealed class LedgerInvariantException(string message) : Exception(message);

/// <summary>
/// The chart of accounts. An account is named kind:key, where the key is a programme year, a
/// voucher id or a credit code. Balances are in fen; "debit-normal" accounts carry a debit
/// balance and "credit-normal" ones a credit balance. The ledger is the clearing view of the
/// programme; settlement.md explains each account and the entries that move it.
/// </summary>
internal static class Accounts
{
    /// <summary>Debit-normal: funds of a programme year committed to vouchers.</summary>
    public static string ProgrammeBudget(int year) => $"programme_budget:{year}";

    /// <summary>Credit-normal: a voucher's unreserved balance.</summary>
    public static string VoucherAvailable(long voucherId) => $"voucher_available:{voucherId}";

    /// <summary>Credit-normal: a voucher's balance reserved by claims not yet settled.</summary>
    public static string VoucherHeld(long voucherId) => $"voucher_held:{voucherId}";

    /// <summary>Credit-normal: subsidy the programme owes a payee (a holder or a provider).</summary>
    public static string PayeePayable(string code) => $"payee_payable:{code}";

    /// <summary>Credit-normal: what the programme paid out to payees in a calendar year (payouts, by their payment date).</summary>
    public static string ProgrammePaid(int year) => $"programme_paid:{year}";

    /// <summary>Debit-normal: what a holder owes providers for metered usage, net of deductions.</summary>
    public static string HolderDue(string code) => $"holder_due:{code}";

    /// <summary>Credit-normal: what a provider is to receive from holders, net of deductions.</summary>
    public static string ProviderReceivable(string code) => $"provider_receivable:{code}";
}

/// <summary>One line of an entry: exactly one of debit and credit is positive.</summary>
internal readonly record struct LedgerLine(string Account, long DebitFen, long CreditFen);

/// <summary>
/// A double-entry ledger entry being built. Lines of zero are left out; <see cref="AssertBalanced"/>
/// throws when debits and credits differ, in every build.
/// </summary>
internal sealed class LedgerEntry(string kind, string reference, string memo)
{
    /// <summary>Most lines one entry may have; a settlement groups its billing per provider.</summary>
    public const int LinesMax = 100_000;

    private readonly List<LedgerLine> _lines = [];

    public string Kind { get; } = kind;

    public string Reference { get; } = reference;

    public string Memo { get; } = memo;

    public IReadOnlyList<LedgerLine> Lines => _lines;

    public LedgerEntry Debit(string account, long fen) => Add(account, fen, 0);

    public LedgerEntry Credit(string account, long fen) => Add(account, 0, fen);

    public long DebitsFen => _lines.Sum(l => l.DebitFen);

    public long CreditsFen => _lines.Sum(l => l.CreditFen);

    public void AssertBalanced()
    {
        long debits = DebitsFen;
        long credits = CreditsFen;
        if (debits != credits)
        {
            throw new LedgerInvariantException($"ledger entry {Kind} {Reference} does not balance: debits {debits} fen, credits {credits} fen");
        }
    }

    private LedgerEntry Add(string account, long debitFen, long creditFen)
    {
        if (debitFen < 0 || creditFen < 0)
        {
            throw new LedgerInvariantException($"ledger entry {Kind} {Reference}: a line of {account} has a negative amount");
        }

        if (debitFen == 0 && creditFen == 0)
        {
            return this;
        }

        if (_lines.Count == LinesMax)
        {
            throw new LedgerInvariantException($"ledger entry {Kind} {Reference} would exceed {LinesMax} lines");
        }

        _lines.Add(new LedgerLine(account, debitFen, creditFen));
        return this;
    }
}

/// <summary>Writes entries: the entry row, then all its lines in one INSERT so that the database's balance trigger sees the whole entry.</summary>
internal static class LedgerWriter
{
    /// <summary>Writes a balanced entry and returns its id, or null when every line was zero.</summary>
    public static async Task<long?> WriteAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, LedgerEntry entry, long? runId, DateTimeOffset bookedAt, CancellationToken cancellationToken)
    {
        entry.AssertBalanced();
        if (entry.Lines.Count == 0)
        {
            return null;
        }

        long id = await connection.ExecuteScalarAsync<long>(new CommandDefinition("""
            INSERT INTO ledger_entries (kind, run_id, reference, booked_at, memo) VALUES (@kind, @runId, @reference, @at, @memo) RETURNING entry_id
            """, new { kind = entry.Kind, runId, reference = entry.Reference, at = bookedAt.UtcDateTime, memo = entry.Memo }, transaction, cancellationToken: cancellationToken));
        await connection.ExecuteAsync(new CommandDefinition("""
            INSERT INTO ledger_lines (entry_id, line_no, account, debit_fen, credit_fen)
            SELECT @id, n, account, debit, credit FROM unnest(@accounts, @debits, @credits) WITH ORDINALITY AS l(account, debit, credit, n)
            """, new
        {
            id,
            accounts = entry.Lines.Select(l => l.Account).ToArray(),
            debits = entry.Lines.Select(l => l.DebitFen).ToArray(),
            credits = entry.Lines.Select(l => l.CreditFen).ToArray(),
        }, transaction, cancellationToken: cancellationToken));
        return id;
    }
}
