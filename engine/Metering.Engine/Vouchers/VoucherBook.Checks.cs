using System.Globalization;
using Dapper;
using Metering.Engine.Identity;
using Metering.Engine.Ledger;
using Metering.Engine.Registry;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Vouchers;

// Checks the book and redemptions share, each taken under the holder's row lock.
public sealed partial class VoucherBook
{
    internal sealed record HolderRow(string Code, string Name, string Status, string? Type, string? District, DateOnly? EstablishedOn);

    /// <summary>Locks the holder's row: every decision about one holder is taken under it.</summary>
    internal static async Task<HolderRow> LockHolderAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code)
    {
        var row = await connection.QueryFirstOrDefaultAsync<(string Code, string Name, string Status, string? Type, string? District, DateTime? Established)?>("""
            SELECT holder_code, name, status, holder_type, district, established_on FROM voucher_holders WHERE holder_code = @code FOR UPDATE
            """, new { code }, transaction);
        return row is { } r
            ? new HolderRow(r.Code, r.Name, r.Status, r.Type, r.District, r.Established is { } e ? DateOnly.FromDateTime(e) : null)
            : throw new VoucherRefusedException(VoucherRefusalReason.HolderUnknown, $"no voucher holder {code} is registered");
    }

    /// <summary>Refuses a holder on an integrity list on the given day. The lists are keyed by credit code, registered or not.</summary>
    internal static async Task CheckIntegrityAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code, DateOnly day)
    {
        var listed = await connection.QueryFirstOrDefaultAsync<(string List, DateTime From, DateTime? Until, string Reason)?>("""
            SELECT list_name, listed_from, listed_until, reason FROM integrity_listings
            WHERE provider_id = @code AND listed_from <= @day AND (listed_until IS NULL OR listed_until >= @day) ORDER BY listing_id LIMIT 1
            """, new { code, day }, transaction);
        if (listed is { } l)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.HolderOnIntegrityList,
                $"{code} is on the {l.List} list from {l.From:yyyy-MM-dd}{(l.Until is { } u ? $" to {u:yyyy-MM-dd}" : "")}: {l.Reason}",
                new Dictionary<string, string> { ["list"] = l.List });
        }
    }

    /// <summary>The holder's contracts running in the year must total at least the programme's minimum annual rented compute.</summary>
    internal static async Task CheckMinimumRentalAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code, int year, ParametersRow parameters)
    {
        long contracted = await connection.ExecuteScalarAsync<long>("""
            SELECT coalesce(sum(amount_fen), 0)::bigint FROM contracts WHERE holder_code = @code AND starts_on <= @yearEnd AND ends_on >= @yearStart
            """, new { code, yearStart = new DateOnly(year, 1, 1), yearEnd = new DateOnly(year, 12, 31) }, transaction);
        if (contracted < parameters.MinAnnualRentalFen)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.BelowMinimumAnnualRental,
                $"{code}'s contracts running in {year} total {Pricing.Yuan(contracted)} CNY; the programme asks for at least {Pricing.Yuan(parameters.MinAnnualRentalFen)} CNY of rented compute a year");
        }
    }

    /// <summary>
    /// An organisation that is an admitted provider (an item not ended or expired) or has a
    /// provider application in progress cannot hold vouchers. The registry refuses the reverse.
    /// </summary>
    private static async Task CheckNotProviderAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code, DateTimeOffset now)
    {
        string? pending = await connection.ExecuteScalarAsync<string?>("""
            SELECT state FROM applications WHERE provider_id = @code AND state NOT IN ('admitted', 'rejected') ORDER BY application_id LIMIT 1
            """, new { code }, transaction);
        if (pending is not null)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.HolderIsProvider, $"{code} has a provider application in progress ({pending}); an organisation cannot both provide compute and hold vouchers");
        }

        string? admitted = await connection.ExecuteScalarAsync<string?>("""
            SELECT service_item FROM service_items WHERE provider_id = @code AND validity_ends_at > @now AND (ended_at IS NULL OR ended_at > @now) LIMIT 1
            """, new { code, now = now.UtcDateTime }, transaction);
        if (admitted is not null)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.HolderIsProvider, $"{code} is an admitted provider (service item '{admitted}'); an organisation cannot both provide compute and hold vouchers");
        }
    }

    /// <summary>
    /// Takes the organisation's registry row lock when the organisation is registered, the lock a
    /// provider filing takes before it reads voucher_holders: so a filing and a holder
    /// registration of the same organisation are ordered and one of them sees the other.
    /// </summary>
    private static Task LockOrganisationIfRegisteredAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code) =>
        connection.ExecuteAsync("SELECT 1 FROM organisations WHERE provider_id = @code FOR UPDATE", new { code }, transaction);
}
