using System.Data;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Identity;
using Metering.Engine.Registry;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Vouchers;

// Service contracts, and the other public support recorded against them for the stacking cap.
public sealed partial class VoucherBook
{
    public async Task<Contract> RecordContractAsync(Actor actor, Contract contract, CancellationToken cancellationToken)
    {
        string holderCode = CheckCode(contract.HolderCode);
        if (!CreditCode.IsValid(contract.ProviderId))
        {
            throw Invalid($"provider_id '{contract.ProviderId}' is not a valid credit code");
        }

        Names.CheckServiceItem(contract.ServiceItem);
        string number = contract.ContractNumber.Trim();
        string declaration = contract.DeclarationRef.Trim();
        if (number.Length is 0 or > 64)
        {
            throw Invalid("contract_number must be 1 to 64 characters");
        }

        if (!contract.NonRelatedParty || declaration.Length == 0)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.RelatedPartyNotDeclared,
                "the programme pays only for compute rented from a non-related party: set non_related_party and give the signed declaration's declaration_ref");
        }

        if (declaration.Length > 256)
        {
            throw Invalid("declaration_ref must be at most 256 characters");
        }

        DateOnly signed = ParseDate("signed_on", contract.SignedOn);
        DateOnly starts = ParseDate("starts_on", contract.StartsOn);
        DateOnly ends = ParseDate("ends_on", contract.EndsOn);
        if (signed > starts || ends < starts || ends.DayNumber - starts.DayNumber >= ContractDaysMax)
        {
            throw Invalid($"dates must run signed_on ≤ starts_on ≤ ends_on, over at most {ContractDaysMax} days");
        }

        if (contract.AmountFen is <= 0 or > AmountFenMax)
        {
            throw Invalid($"amount_fen must be 1 to {AmountFenMax}");
        }

        string unit = contract.FeeUnit switch
        {
            FeeUnit.PerPflopsHour or FeeUnit.PerCardHour => Names.Of(contract.FeeUnit),
            _ => throw Invalid("fee_unit must be PER_PFLOPS_HOUR or PER_CARD_HOUR"),
        };
        if (holderCode == contract.ProviderId)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.HolderIsProvider, $"{holderCode} cannot contract with itself");
        }

        DateTimeOffset now = time.GetUtcNow();
        DateTimeOffset startsAt = ShanghaiTime.StartOf(starts);
        DateTimeOffset endsBefore = ShanghaiTime.StartOf(ends.AddDays(1));
        return await dataSource.InTransactionAsync(async (connection, transaction) =>
        {
            HolderRow holder = await LockHolderAsync(connection, transaction, holderCode);
            if (holder.Status == "left")
            {
                throw new VoucherRefusedException(VoucherRefusalReason.HolderNotApproved, $"{holderCode} left the holder role; it records no new contract");
            }

            await CheckIntegrityAsync(connection, transaction, holderCode, ShanghaiTime.DateOf(now));

            // The admission of the item in force at the contract's start, net of an early exit;
            // it covers the whole contract alone or with the renewals that continue it without
            // a gap (each starting where the one before ends).
            var items = (await connection.QueryAsync<(long ApplicationId, DateTime From, DateTime Ends, DateTime? Ended)>("""
                SELECT application_id, valid_from, validity_ends_at, ended_at FROM service_items
                WHERE provider_id = @provider AND service_item = @item ORDER BY valid_from
                """, new { provider = contract.ProviderId, item = contract.ServiceItem }, transaction)).ToList();
            var spans = items.Select(i => (i.ApplicationId, From: ShanghaiTime.Instant(i.From), Until: ShanghaiTime.Instant(i.Ended is { } e && e < i.Ends ? e : i.Ends))).ToList();
            var covering = spans.FirstOrDefault(i => i.From <= startsAt && startsAt < i.Until);
            DateTimeOffset coveredUntil = covering == default ? startsAt : covering.Until;
            for (int step = 0; step < spans.Count && coveredUntil < endsBefore; step++)
            {
                var next = spans.FirstOrDefault(i => i.From == coveredUntil && i.Until > coveredUntil);
                if (next == default)
                {
                    break;
                }

                coveredUntil = next.Until;
            }

            if (covering == default || coveredUntil < endsBefore)
            {
                throw new VoucherRefusedException(VoucherRefusalReason.ContractOutsideAdmission, items.Count == 0
                    ? $"{contract.ProviderId} holds no admitted service item '{contract.ServiceItem}'"
                    : $"the contract runs {starts:yyyy-MM-dd} to {ends:yyyy-MM-dd}, outside {contract.ProviderId}'s admission of '{contract.ServiceItem}' ("
                        + string.Join(", ", items.Select(i => $"{ShanghaiTime.Describe(ShanghaiTime.Instant(i.From))} to {ShanghaiTime.Describe(ShanghaiTime.Instant(i.Ended is { } e && e < i.Ends ? e : i.Ends))}")) + ")");
            }

            int version = (int)contract.FeeScheduleVersion;
            var schedules = (await connection.QueryAsync<(int Version, DateTime EffectiveFrom, string Lines)>("""
                SELECT version, effective_from, lines::text FROM fee_schedules WHERE provider_id = @provider AND service_item = @item ORDER BY version
                """, new { provider = contract.ProviderId, item = contract.ServiceItem }, transaction)).ToList();
            var schedule = version == 0
                ? schedules.Where(s => ShanghaiTime.Instant(s.EffectiveFrom) <= startsAt).MaxBy(s => s.Version)
                : schedules.FirstOrDefault(s => s.Version == version);
            if (schedule == default || !ProviderRegistry.ParseFees(schedule.Lines).Any(l => l.Unit == contract.FeeUnit))
            {
                throw new VoucherRefusedException(VoucherRefusalReason.FeeScheduleUnknown,
                    $"{contract.ProviderId} '{contract.ServiceItem}' has no fee schedule {(version == 0 ? "in force" : $"version {version}")} with a {unit} line");
            }

            long? overlapping = await connection.ExecuteScalarAsync<long?>("""
                SELECT contract_id FROM contracts WHERE holder_code = @holderCode AND provider_id = @provider AND starts_on <= @ends AND ends_on >= @starts LIMIT 1
                """, new { holderCode, provider = contract.ProviderId, starts, ends }, transaction);
            if (overlapping is { } other)
            {
                throw new VoucherRefusedException(VoucherRefusalReason.ContractOverlaps,
                    $"contract {other} of {holderCode} with {contract.ProviderId} overlaps {starts:yyyy-MM-dd} to {ends:yyyy-MM-dd}; usage must map to one contract");
            }

            // A start-up is under one year old on the day it signs; the ratio then holds for the contract's life.
            bool startup = holder.EstablishedOn is { } established && established > signed.AddYears(-1);
            long id;
            try
            {
                id = await connection.ExecuteScalarAsync<long>("""
                    INSERT INTO contracts (provider_id, holder_code, service_item, application_id, contract_number, signed_on, starts_on, ends_on, amount_fen,
                        fee_schedule_version, fee_unit, non_related_party, declaration_ref, startup, recorded_by, recorded_at)
                    VALUES (@provider, @holderCode, @item, @application, @number, @signed, @starts, @ends, @amount, @version, @unit, true, @declaration, @startup, @by, @now)
                    RETURNING contract_id
                    """, new
                {
                    provider = contract.ProviderId,
                    holderCode,
                    item = contract.ServiceItem,
                    application = covering.ApplicationId,
                    number,
                    signed,
                    starts,
                    ends,
                    amount = contract.AmountFen,
                    version = schedule.Version,
                    unit,
                    declaration,
                    startup,
                    by = actor.Subject,
                    now = now.UtcDateTime,
                }, transaction);
            }
            catch (PostgresException e) when (e.SqlState == PostgresErrorCodes.UniqueViolation)
            {
                throw new VoucherRefusedException(VoucherRefusalReason.ContractNumberTaken, $"{contract.ProviderId} already has a contract numbered {number}");
            }

            return (await ReadContractRecordAsync(connection, transaction, id))!;
        }, cancellationToken);
    }

    public async Task<Contract?> GetContractAsync(long contractId, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await ReadContractRecordAsync(connection, null, contractId);
    }

    public async Task<Contract> RecordOtherSupportAsync(Actor actor, OtherSupport request, CancellationToken cancellationToken)
    {
        string source = request.Source.Trim();
        if (source.Length is 0 or > 200 || request.AmountFen is <= 0 or > AmountFenMax)
        {
            throw Invalid($"other support needs a source of 1 to 200 characters and an amount_fen of 1 to {AmountFenMax}");
        }

        DateTimeOffset now = time.GetUtcNow();
        return await dataSource.InTransactionAsync(async (connection, transaction) =>
        {
            ContractRow contract = await ReadContractAsync(connection, transaction, request.ContractId)
                ?? throw new VoucherRefusedException(VoucherRefusalReason.ContractUnknown, $"there is no contract {request.ContractId}");
            await LockHolderAsync(connection, transaction, contract.HolderCode);
            await connection.ExecuteAsync("""
                INSERT INTO contract_other_support (provider_id, contract_id, source, amount_fen, recorded_by, recorded_at) VALUES (@provider, @id, @source, @amount, @by, @now)
                """, new { provider = contract.ProviderId, id = contract.ContractId, source, amount = request.AmountFen, by = actor.Subject, now = now.UtcDateTime }, transaction);
            return (await ReadContractRecordAsync(connection, transaction, contract.ContractId))!;
        }, cancellationToken);
    }
}
