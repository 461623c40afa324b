using System.Globalization;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Ledger;
using Metering.Engine.Registry;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Vouchers;

// Holders: registration, approval and leaving the holder role.
public sealed partial class VoucherBook
{
    public async Task<Holder> RegisterHolderAsync(Actor actor, Holder holder, CancellationToken cancellationToken)
    {
        string code = CheckCode(holder.CreditCode);
        string name = holder.Name.Trim();
        if (name.Length is 0 or > 200)
        {
            throw Invalid("name must be 1 to 200 characters");
        }

        string type = VoucherNames.Of(holder.Type);
        string district = Districts.Normalise(holder.District)
            ?? throw new VoucherRefusedException(VoucherRefusalReason.HolderNotInShenzhen,
                $"district '{holder.District}' is not in Shenzhen; holders are registered in one of: {string.Join(", ", Districts.Keys)}");
        if (!Districts.CodeRegionMatches(code, district))
        {
            throw new VoucherRefusedException(VoucherRefusalReason.HolderNotInShenzhen, $"{code} was registered in region {code.Substring(2, 6)}, which is not Shenzhen (4403xx)");
        }

        DateOnly established = ParseDate("established_on", holder.EstablishedOn);
        DateTimeOffset now = time.GetUtcNow();
        if (established > ShanghaiTime.DateOf(now))
        {
            throw Invalid("established_on lies in the future");
        }

        return await dataSource.InTransactionAsync(async (connection, transaction) =>
        {
            await LockOrganisationIfRegisteredAsync(connection, transaction, code);
            await CheckIntegrityAsync(connection, transaction, code, ShanghaiTime.DateOf(now));
            await CheckNotProviderAsync(connection, transaction, code, now);
            int inserted = await connection.ExecuteAsync("""
                INSERT INTO voucher_holders (holder_code, name, status, registered_at, holder_type, district, established_on, registered_by)
                VALUES (@code, @name, 'applicant', @now, @type, @district, @established, @by)
                ON CONFLICT (holder_code) DO NOTHING
                """, new { code, name, now = now.UtcDateTime, type, district, established, by = actor.Subject }, transaction);
            if (inserted == 0)
            {
                throw new VoucherRefusedException(VoucherRefusalReason.HolderExists, $"{code} is already registered as a voucher holder or applicant");
            }

            return (await ReadHolderAsync(connection, transaction, code, details: false))!;
        }, cancellationToken);
    }

    public async Task<Holder> ApproveHolderAsync(Actor actor, string creditCode, CancellationToken cancellationToken)
    {
        string code = CheckCode(creditCode);
        DateTimeOffset now = time.GetUtcNow();
        return await dataSource.InTransactionAsync(async (connection, transaction) =>
        {
            await LockOrganisationIfRegisteredAsync(connection, transaction, code);
            HolderRow holder = await LockHolderAsync(connection, transaction, code);
            if (holder.Status != "applicant")
            {
                throw new VoucherRefusedException(VoucherRefusalReason.HolderNotApproved, $"{code} is already approved");
            }

            await CheckIntegrityAsync(connection, transaction, code, ShanghaiTime.DateOf(now));
            await CheckNotProviderAsync(connection, transaction, code, now);
            await connection.ExecuteAsync("UPDATE voucher_holders SET status = 'holder', approved_by = @by, approved_at = @now WHERE holder_code = @code",
                new { code, by = actor.Subject, now = now.UtcDateTime }, transaction);
            return (await ReadHolderAsync(connection, transaction, code, details: false))!;
        }, cancellationToken);
    }

    /// <summary>
    /// Ends an organisation's holder role, so that it may apply as a provider: the guide's rule is
    /// "not both at the same time". Nothing of the holder may still run: no contract or voucher
    /// whose last day is today or later (Asia/Shanghai), no claim whose hold is still reserved.
    /// The row stays, marked left, because its contracts, vouchers and claims refer to it.
    /// </summary>
    public async Task<Holder> LeaveHolderRoleAsync(Actor actor, string creditCode, string reason, CancellationToken cancellationToken)
    {
        string code = CheckCode(creditCode);
        string why = reason.Trim();
        if (why.Length is 0 or > 4_000)
        {
            throw Invalid("reason must be 1 to 4000 characters");
        }

        DateTimeOffset now = time.GetUtcNow();
        DateOnly today = ShanghaiTime.DateOf(now);
        return await dataSource.InTransactionAsync(async (connection, transaction) =>
        {
            // The same lock order as a registration: the organisation's registry row, then the
            // holder's, so that a provider filing and this change are ordered.
            await LockOrganisationIfRegisteredAsync(connection, transaction, code);
            HolderRow holder = await LockHolderAsync(connection, transaction, code);
            if (holder.Status == "left")
            {
                throw new VoucherRefusedException(VoucherRefusalReason.HolderNotApproved, $"{code} already left the holder role");
            }

            var contract = await connection.QueryFirstOrDefaultAsync<(long Id, DateTime EndsOn)?>(
                "SELECT contract_id, ends_on FROM contracts WHERE holder_code = @code AND ends_on >= @today ORDER BY contract_id LIMIT 1", new { code, today }, transaction);
            if (contract is { } c)
            {
                throw new VoucherRefusedException(VoucherRefusalReason.HolderStillEngaged, $"contract {c.Id} of {code} runs until {c.EndsOn:yyyy-MM-dd}; the holder role ends once no contract runs",
                    new Dictionary<string, string> { ["contract_id"] = c.Id.ToString(CultureInfo.InvariantCulture) });
            }

            var voucher = await connection.QueryFirstOrDefaultAsync<(long Id, DateTime ValidUntil)?>(
                "SELECT voucher_id, valid_until FROM vouchers WHERE holder_code = @code AND valid_until >= @today ORDER BY voucher_id LIMIT 1", new { code, today }, transaction);
            if (voucher is { } v)
            {
                throw new VoucherRefusedException(VoucherRefusalReason.HolderStillEngaged, $"voucher {v.Id} of {code} is valid until {v.ValidUntil:yyyy-MM-dd}; the holder role ends once no voucher is valid",
                    new Dictionary<string, string> { ["voucher_id"] = v.Id.ToString(CultureInfo.InvariantCulture) });
            }

            long? held = await connection.ExecuteScalarAsync<long?>("""
                SELECT h.claim_id FROM voucher_holds h JOIN vouchers v ON v.provider_id = h.provider_id AND v.voucher_id = h.voucher_id
                WHERE v.holder_code = @code AND h.state = 'reserved' ORDER BY h.claim_id LIMIT 1
                """, new { code }, transaction);
            if (held is { } claim)
            {
                throw new VoucherRefusedException(VoucherRefusalReason.HolderStillEngaged, $"claim {claim} of {code} still holds part of a voucher; the holder role ends once it is posted, voided or expired",
                    new Dictionary<string, string> { ["claim_id"] = claim.ToString(CultureInfo.InvariantCulture) });
            }

            await connection.ExecuteAsync("UPDATE voucher_holders SET status = 'left', left_at = @now, left_by = @by, left_reason = @why WHERE holder_code = @code",
                new { code, now = now.UtcDateTime, by = actor.Subject, why }, transaction);
            return (await ReadHolderAsync(connection, transaction, code, details: false))!;
        }, cancellationToken);
    }

    public async Task<Holder?> GetHolderAsync(string creditCode, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await ReadHolderAsync(connection, null, creditCode, details: true);
    }

    public async Task<IReadOnlyList<Holder>> ListHoldersAsync(int limit, CancellationToken cancellationToken)
    {
        limit = limit == 0 ? ListLimitDefault : Math.Clamp(limit, 1, ListLimitMax);
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var codes = await connection.QueryAsync<string>("SELECT holder_code FROM voucher_holders ORDER BY holder_code LIMIT @limit", new { limit });
        var holders = new List<Holder>();
        foreach (string code in codes)
        {
            holders.Add((await ReadHolderAsync(connection, null, code, details: false))!);
        }

        return holders;
    }
}
