using System.Globalization;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Ledger;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Vouchers;

// Issuing vouchers against contracts, with the budget entry in the ledger.
public sealed partial class VoucherBook
{
    public async Task<Voucher> IssueVoucherAsync(Actor actor, VoucherIssue request, CancellationToken cancellationToken)
    {
        int year = (int)request.ProgrammeYear;
        if (year is < 2024 or > 2100)
        {
            throw Invalid("programme_year must be 2024 to 2100");
        }

        var yearStart = new DateOnly(year, 1, 1);
        var yearEnd = new DateOnly(year, 12, 31);
        DateOnly from = request.ValidFrom.Length == 0 ? yearStart : ParseDate("valid_from", request.ValidFrom);
        DateOnly until = request.ValidUntil.Length == 0 ? yearEnd : ParseDate("valid_until", request.ValidUntil);
        if (from < yearStart || until > yearEnd || until < from)
        {
            throw Invalid($"the voucher's validity must lie within {year} and end no earlier than it starts");
        }

        if (request.FaceValueFen is <= 0 or > AmountFenMax)
        {
            throw Invalid($"face_value_fen must be 1 to {AmountFenMax}");
        }

        DateTimeOffset now = time.GetUtcNow();
        return await dataSource.InTransactionAsync(async (connection, transaction) =>
        {
            ContractRow contract = await ReadContractAsync(connection, transaction, request.ContractId)
                ?? throw new VoucherRefusedException(VoucherRefusalReason.ContractUnknown, $"there is no contract {request.ContractId}");
            HolderRow holder = await LockHolderAsync(connection, transaction, contract.HolderCode);
            if (holder.Status != "holder")
            {
                throw new VoucherRefusedException(VoucherRefusalReason.HolderNotApproved,
                    $"{holder.Code} is {(holder.Status == "left" ? "no longer a holder (it left the role)" : "an applicant")}; vouchers are issued to approved holders");
            }

            await CheckIntegrityAsync(connection, transaction, holder.Code, ShanghaiTime.DateOf(now));
            if (contract.StartsOn > yearEnd || contract.EndsOn < yearStart)
            {
                throw Invalid($"contract {contract.ContractId} runs {contract.StartsOn:yyyy-MM-dd} to {contract.EndsOn:yyyy-MM-dd}, not in {year}");
            }

            ParametersRow parameters = await ParametersInForceAsync(connection, transaction, year, now);
            await CheckMinimumRentalAsync(connection, transaction, holder.Code, year, parameters);
            int ratio = parameters.RatioBp(contract.Startup);
            long ratioLimit = Pricing.ShareFen(contract.AmountFen, ratio);
            if (request.FaceValueFen > ratioLimit || request.FaceValueFen > parameters.AnnualCapFen)
            {
                throw new VoucherRefusedException(VoucherRefusalReason.FaceValueOverLimit,
                    $"face value {Pricing.Yuan(request.FaceValueFen)} CNY exceeds {(request.FaceValueFen > ratioLimit ? $"{ratio / 100}% of the contract amount ({Pricing.Yuan(ratioLimit)} CNY)" : $"the annual cap ({Pricing.Yuan(parameters.AnnualCapFen)} CNY)")}");
            }

            long id;
            try
            {
                id = await connection.ExecuteScalarAsync<long>("""
                    INSERT INTO vouchers (provider_id, contract_id, holder_code, programme_year, face_value_fen, valid_from, valid_until, issued_by, issued_at)
                    VALUES (@provider, @contract, @holderCode, @year, @face, @from, @until, @by, @now) RETURNING voucher_id
                    """, new
                {
                    provider = contract.ProviderId,
                    contract = contract.ContractId,
                    holderCode = holder.Code,
                    year,
                    face = request.FaceValueFen,
                    from,
                    until,
                    by = actor.Subject,
                    now = now.UtcDateTime,
                }, transaction);
            }
            catch (PostgresException e) when (e.SqlState == PostgresErrorCodes.UniqueViolation)
            {
                throw new VoucherRefusedException(VoucherRefusalReason.VoucherExists, $"contract {contract.ContractId} already has a voucher for {year}");
            }

            var entry = new LedgerEntry("voucher_issue", $"voucher:{id}", $"voucher {id} for contract {contract.ContractId}, {year}, to {holder.Code}")
                .Debit(Accounts.ProgrammeBudget(year), request.FaceValueFen)
                .Credit(Accounts.VoucherAvailable(id), request.FaceValueFen);
            await LedgerWriter.WriteAsync(connection, transaction, entry, null, now, cancellationToken);
            return (await ReadVoucherAsync(connection, transaction, id))!;
        }, cancellationToken);
    }

    public async Task<Voucher?> GetVoucherAsync(long voucherId, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await ReadVoucherAsync(connection, null, voucherId);
    }
}
