using System.Data;
using System.Globalization;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Ledger;
using Metering.Engine.Time;
using Metering.Engine.Vouchers;
using Metering.Engine.Storage;
using Npgsql;

namespace Metering.Engine.Settlement;

/// <summary>
/// The year-end release: once a programme year has ended by the server's clock, the unused
/// balances of its vouchers go back to its budget. Each voucher's <c>voucher_available</c> is
/// debited and <c>programme_budget:{year}</c> credited, in one transaction with the release's
/// evidence row and the vouchers' <c>released_fen</c>, so the nightly reconciliation's
/// issued − posted − held − released = available keeps holding.
/// </summary>
public sealed class YearEndReleases(NpgsqlDataSource dataSource, TimeProvider time)
{
    // A transaction-scoped advisory lock per programme year orders its releases.
    private const int ReleaseLockSpace = 0x5245_4c00;

    /// <summary>
    /// Returns the unused balance (face − posted − held − released) of every voucher of the
    /// year to the year's budget, once the year has ended by the server's clock. Vouchers are
    /// locked provider by provider (in provider order, then id order), each one's ledger balance is checked against its row before it moves,
    /// and one release row and its entries are written; nothing is written when nothing is left.
    /// </summary>
    public async Task<YearEndReleaseRecord> ReleaseYearEndAsync(Actor actor, int programmeYear, CancellationToken cancellationToken)
    {
        if (programmeYear is < 2024 or > 2100)
        {
            throw Payouts.Invalid($"programme_year must be 2024 to 2100, not {programmeYear}");
        }

        DateTimeOffset now = time.GetUtcNow();
        DateTimeOffset yearEnd = ShanghaiTime.StartOf(new DateOnly(programmeYear + 1, 1, 1));
        if (now < yearEnd)
        {
            throw new PayoutRefusedException(PayoutProblem.YearNotEnded,
                $"programme year {programmeYear} has not ended: its vouchers' unused balances can be released from {ShanghaiTime.Describe(yearEnd)}; the server's clock says {ShanghaiTime.Describe(now)}");
        }

        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(IsolationLevel.ReadCommitted, cancellationToken);
        await connection.ExecuteAsync(new CommandDefinition("SELECT pg_advisory_xact_lock(@space, @year)",
            new { space = ReleaseLockSpace, year = programmeYear }, transaction, cancellationToken: cancellationToken));
        // Writing the coordinator's release and ledger tables after vouchers on several shards
        // needs one connection per worker on Citus; plain PostgreSQL keeps it as a placeholder.
        await Transactions.SequentialOnCitusAsync(connection, transaction, cancellationToken);
        // The vouchers are locked provider by provider, in provider order and then id order, each
        // lock naming provider_id (Citus takes a row lock on one shard only); the ledger balances
        // are read by a statement of their own, not joined to the distributed rows.
        var providers = (await connection.QueryAsync<string>(new CommandDefinition(
            "SELECT DISTINCT provider_id FROM vouchers WHERE programme_year = @year ORDER BY provider_id", new { year = programmeYear }, transaction,
            cancellationToken: cancellationToken))).ToList();
        var locked = new List<(string Provider, long Voucher, long AvailableFen)>();
        foreach (string provider in providers)
        {
            locked.AddRange(await connection.QueryAsync<(string, long, long)>(new CommandDefinition("""
                SELECT provider_id, voucher_id, face_value_fen - held_fen - posted_fen - released_fen FROM vouchers
                WHERE provider_id = @provider AND programme_year = @year ORDER BY voucher_id FOR UPDATE
                """, new { provider, year = programmeYear }, transaction, cancellationToken: cancellationToken)));
        }

        var ledgerFen = (await connection.QueryAsync<(string Account, long Fen)>(new CommandDefinition("""
            SELECT account, sum(credit_fen - debit_fen)::bigint FROM ledger_lines WHERE account = ANY(@accounts) GROUP BY account
            """, new { accounts = locked.Select(l => Accounts.VoucherAvailable(l.Voucher)).ToArray() }, transaction, cancellationToken: cancellationToken)))
            .ToDictionary(b => b.Account, b => b.Fen, StringComparer.Ordinal);
        var unused = locked.OrderBy(l => l.Voucher)
            .Select(l => (l.Provider, l.Voucher, l.AvailableFen, LedgerFen: ledgerFen.GetValueOrDefault(Accounts.VoucherAvailable(l.Voucher)))).ToList();
        var mismatched = unused.FirstOrDefault(u => u.AvailableFen != u.LedgerFen);
        if (mismatched.Voucher != 0)
        {
            throw new LedgerInvariantException($"voucher {mismatched.Voucher}: its row leaves {mismatched.AvailableFen} fen but voucher_available:{mismatched.Voucher} holds {mismatched.LedgerFen} fen");
        }

        var releasing = unused.Where(u => u.AvailableFen > 0).ToList();
        long earlierFen = await connection.ExecuteScalarAsync<long>(new CommandDefinition(
            "SELECT coalesce(sum(released_fen), 0)::bigint FROM year_end_releases WHERE programme_year = @year", new { year = programmeYear }, transaction, cancellationToken: cancellationToken));
        if (releasing.Count == 0)
        {
            throw new PayoutRefusedException(PayoutProblem.NothingToRelease,
                $"no voucher of {programmeYear} has an unused balance left ({unused.Count} voucher(s); {Pricing.Yuan(earlierFen)} CNY released before)",
                new Dictionary<string, string> { ["year_released_fen"] = earlierFen.ToString(CultureInfo.InvariantCulture) });
        }

        DateTimeOffset at = time.GetUtcNow();
        long totalFen = releasing.Sum(u => u.AvailableFen);
        long releaseId = await connection.ExecuteScalarAsync<long>(new CommandDefinition("""
            INSERT INTO year_end_releases (programme_year, vouchers, released_fen, released_by, released_at) VALUES (@year, @count, @total, @by, @at) RETURNING release_id
            """, new { year = programmeYear, count = releasing.Count, total = totalFen, by = actor.Subject, at = at.UtcDateTime }, transaction, cancellationToken: cancellationToken));
        int moved = 0;
        foreach (var provider in releasing.GroupBy(u => u.Provider, StringComparer.Ordinal))
        {
            moved += await connection.ExecuteAsync(new CommandDefinition("""
                UPDATE vouchers v SET released_fen = v.released_fen + r.amount
                FROM unnest(@vouchers, @amounts) AS r(voucher_id, amount)
                WHERE v.provider_id = @provider AND v.voucher_id = r.voucher_id
                """, new
            {
                provider = provider.Key,
                vouchers = provider.Select(u => u.Voucher).ToArray(),
                amounts = provider.Select(u => u.AvailableFen).ToArray(),
            }, transaction, cancellationToken: cancellationToken));
        }

        if (moved != releasing.Count)
        {
            throw new LedgerInvariantException($"release {releaseId} moved {moved} voucher rows, not {releasing.Count}");
        }

        // One credit line to the budget per entry, the rest one debit per voucher.
        int part = 0;
        foreach (var chunk in releasing.Chunk(LedgerEntry.LinesMax - 1))
        {
            part++;
            var entry = new LedgerEntry("year_end_release", $"release:{releaseId}/{part}", $"unused balances of {chunk.Length} voucher(s) of {programmeYear} returned to the budget");
            foreach (var voucher in chunk)
            {
                entry.Debit(Accounts.VoucherAvailable(voucher.Voucher), voucher.AvailableFen);
            }

            entry.Credit(Accounts.ProgrammeBudget(programmeYear), chunk.Sum(u => u.AvailableFen));
            await LedgerWriter.WriteAsync(connection, transaction, entry, null, at, cancellationToken);
        }

        await transaction.CommitAsync(cancellationToken);
        return new YearEndReleaseRecord(releaseId, programmeYear, releasing.Count, totalFen, earlierFen + totalFen, actor.Subject, at);
    }
}
