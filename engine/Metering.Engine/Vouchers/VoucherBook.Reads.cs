using System.Globalization;
using Dapper;
using Metering.Engine.Identity;
using Metering.Engine.Ledger;
using Metering.Engine.Registry;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Vouchers;

// Reads of holders, contracts and vouchers as the book returns them.
public sealed partial class VoucherBook
{
    private static async Task<Holder?> ReadHolderAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string code, bool details)
    {
        var row = await connection.QueryFirstOrDefaultAsync<(string Code, string Name, string Status, string? Type, string? District, DateTime? Established)?>("""
            SELECT holder_code, name, status, holder_type, district, established_on FROM voucher_holders WHERE holder_code = @code
            """, new { code }, transaction);
        if (row is not { } r)
        {
            return null;
        }

        var holder = new Holder
        {
            CreditCode = r.Code,
            Name = r.Name,
            Type = VoucherNames.HolderTypeOf(r.Type),
            District = r.District ?? "",
            EstablishedOn = r.Established is { } e ? ShanghaiTime.IsoDate(DateOnly.FromDateTime(e)) : "",
            Status = VoucherNames.HolderStatusOf(r.Status),
        };
        if (!details)
        {
            return holder;
        }

        var contracts = new List<Contract>();
        foreach (long id in await connection.QueryAsync<long>("SELECT contract_id FROM contracts WHERE holder_code = @code ORDER BY contract_id", new { code }, transaction))
        {
            contracts.Add((await ReadContractRecordAsync(connection, transaction, id))!);
        }

        var vouchers = new List<Voucher>();
        foreach (long id in await connection.QueryAsync<long>("SELECT voucher_id FROM vouchers WHERE holder_code = @code ORDER BY voucher_id", new { code }, transaction))
        {
            vouchers.Add((await ReadVoucherAsync(connection, transaction, id))!);
        }

        return holder with { Contracts = contracts, Vouchers = vouchers };
    }

    internal static async Task<ContractRow?> ReadContractAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, long contractId)
    {
        var row = await connection.QueryFirstOrDefaultAsync<(long Id, string Provider, string Holder, string Item, string Number, DateTime Signed, DateTime Starts, DateTime Ends,
            long Amount, int Version, string Unit, bool Startup)?>("""
            SELECT contract_id, provider_id, holder_code, service_item, contract_number, signed_on, starts_on, ends_on, amount_fen, fee_schedule_version, fee_unit, startup
            FROM contracts WHERE contract_id = @contractId
            """, new { contractId }, transaction);
        return row is { } r
            ? new ContractRow(r.Id, r.Provider, r.Holder, r.Item, r.Number, DateOnly.FromDateTime(r.Signed), DateOnly.FromDateTime(r.Starts), DateOnly.FromDateTime(r.Ends),
                r.Amount, r.Version, r.Unit, r.Startup)
            : null;
    }

    /// <summary>Other public support and voucher subsidy held or posted against a contract.</summary>
    internal static async Task<(long OtherFen, long VoucherFen)> ContractSupportAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, ContractRow contract) =>
        await connection.QuerySingleAsync<(long, long)>("""
            SELECT (SELECT coalesce(sum(amount_fen), 0)::bigint FROM contract_other_support WHERE provider_id = @provider AND contract_id = @id),
                   (SELECT coalesce(sum(h.amount_fen), 0)::bigint FROM voucher_holds h JOIN claims c ON c.provider_id = h.provider_id AND c.claim_id = h.claim_id
                    WHERE c.provider_id = @provider AND c.contract_id = @id AND h.state IN ('reserved', 'posted'))
            """, new { provider = contract.ProviderId, id = contract.ContractId }, transaction);

    private static async Task<Contract?> ReadContractRecordAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, long contractId)
    {
        ContractRow? row = await ReadContractAsync(connection, transaction, contractId);
        if (row is null)
        {
            return null;
        }

        var (other, vouchers) = await ContractSupportAsync(connection, transaction, row);
        string declaration = await connection.ExecuteScalarAsync<string>("SELECT declaration_ref FROM contracts WHERE provider_id = @provider AND contract_id = @contractId", new { provider = row.ProviderId, contractId }, transaction) ?? "";
        return new Contract
        {
            ContractId = row.ContractId,
            HolderCode = row.HolderCode,
            ProviderId = row.ProviderId,
            ServiceItem = row.ServiceItem,
            ContractNumber = row.ContractNumber,
            SignedOn = ShanghaiTime.IsoDate(row.SignedOn),
            StartsOn = ShanghaiTime.IsoDate(row.StartsOn),
            EndsOn = ShanghaiTime.IsoDate(row.EndsOn),
            AmountFen = row.AmountFen,
            FeeScheduleVersion = (uint)row.FeeScheduleVersion,
            FeeUnit = Names.FeeUnitOf(row.FeeUnit),
            NonRelatedParty = true,
            DeclarationRef = declaration,
            Startup = row.Startup,
            OtherSupportFen = other,
            VoucherSupportFen = vouchers,
        };
    }

    internal static async Task<Voucher?> ReadVoucherAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, long voucherId)
    {
        var row = await connection.QueryFirstOrDefaultAsync<(long Id, long Contract, string Holder, string Provider, int Year, long Face, DateTime From, DateTime Until, long Held, long Posted, long Released)?>("""
            SELECT voucher_id, contract_id, holder_code, provider_id, programme_year, face_value_fen, valid_from, valid_until, held_fen, posted_fen, released_fen
            FROM vouchers WHERE voucher_id = @voucherId
            """, new { voucherId }, transaction);
        return row is { } r
            ? new Voucher
            {
                VoucherId = r.Id,
                ContractId = r.Contract,
                HolderCode = r.Holder,
                ProviderId = r.Provider,
                ProgrammeYear = (uint)r.Year,
                FaceValueFen = r.Face,
                ValidFrom = ShanghaiTime.IsoDate(DateOnly.FromDateTime(r.From)),
                ValidUntil = ShanghaiTime.IsoDate(DateOnly.FromDateTime(r.Until)),
                HeldFen = r.Held,
                PostedFen = r.Posted,
                RemainingFen = r.Face - r.Held - r.Posted - r.Released,
                ReleasedFen = r.Released,
            }
            : null;
    }
}
