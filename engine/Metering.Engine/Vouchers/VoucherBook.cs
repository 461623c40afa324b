using System.Data;
using System.Globalization;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Identity;
using Metering.Engine.Ledger;
using Metering.Engine.Registry;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Metering.Protocol.V1;
using Npgsql;

namespace Metering.Engine.Vouchers;

/// <summary>One version of a programme year's parameters, as stored.</summary>
public sealed record ParametersRow(int Year, int Version, DateTimeOffset EffectiveFrom, int SupportRatioBp, int StartupRatioBp, long AnnualCapFen,
    int StackingCapBp, long MinAnnualRentalFen, string PayeeMode, int HoldDays)
{
    public int RatioBp(bool startup) => startup ? StartupRatioBp : SupportRatioBp;

    public ProgrammeParameters ToMessage() => new()
    {
        ProgrammeYear = (uint)Year,
        Version = (uint)Version,
        EffectiveFromUnixMs = EffectiveFrom.ToUnixTimeMilliseconds(),
        SupportRatioBp = (uint)SupportRatioBp,
        StartupRatioBp = (uint)StartupRatioBp,
        AnnualCapFen = AnnualCapFen,
        StackingCapBp = (uint)StackingCapBp,
        MinAnnualRentalFen = MinAnnualRentalFen,
        PayeeMode = VoucherNames.PayeeModeOf(PayeeMode),
        HoldDays = (uint)HoldDays,
    };
}

/// <summary>A contract as stored, with the instants its dates span.</summary>
public sealed record ContractRow(long ContractId, string ProviderId, string HolderCode, string ServiceItem, string ContractNumber, DateOnly SignedOn,
    DateOnly StartsOn, DateOnly EndsOn, long AmountFen, int FeeScheduleVersion, string FeeUnit, bool Startup)
{
    /// <summary>The first instant of starts_on, Asia/Shanghai.</summary>
    public DateTimeOffset StartsAt => ShanghaiTime.StartOf(StartsOn);

    /// <summary>The first instant after ends_on, Asia/Shanghai.</summary>
    public DateTimeOffset EndsBefore => ShanghaiTime.StartOf(EndsOn.AddDays(1));
}

/// <summary>
/// The voucher book: holders, programme-year parameters, contracts, other support and vouchers.
/// Each write runs in one transaction that first locks the holder's row, so that everything
/// decided about one holder (contract overlaps, caps, exclusivity) is decided one at a time.
/// A refusal throws <see cref="VoucherRefusedException"/> before anything is written. Who may
/// call what is the server's access policy.
/// </summary>
public sealed class VoucherBook(NpgsqlDataSource dataSource, TimeProvider time)
{
    public const int ListLimitDefault = 100;
    public const int ListLimitMax = 1_000;

    /// <summary>Largest contract amount: 100 billion CNY, far above any real contract and far below overflow.</summary>
    public const long AmountFenMax = 10_000_000_000_000;

    /// <summary>Longest contract: five years.</summary>
    public const int ContractDaysMax = 5 * 366;

    // ---------------------------------------------------------------- holders

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

    // ---------------------------------------------------------------- programme parameters

    public async Task<ProgrammeParameters> PutParametersAsync(Actor actor, ProgrammeParameters parameters, CancellationToken cancellationToken)
    {
        if (parameters.ProgrammeYear is < 2024 or > 2100)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.ParametersInvalid, "programme_year must be 2024 to 2100");
        }

        if (parameters.SupportRatioBp is 0 or > Pricing.BasisPointsWhole || parameters.StartupRatioBp is 0 or > Pricing.BasisPointsWhole
            || parameters.StackingCapBp is 0 or > Pricing.BasisPointsWhole)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.ParametersInvalid, "support_ratio_bp, startup_ratio_bp and stacking_cap_bp must be 1 to 10000 basis points");
        }

        if (parameters.AnnualCapFen <= 0 || parameters.AnnualCapFen > AmountFenMax || parameters.MinAnnualRentalFen < 0 || parameters.MinAnnualRentalFen > AmountFenMax)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.ParametersInvalid, $"annual_cap_fen must be 1 to {AmountFenMax} and min_annual_rental_fen 0 to {AmountFenMax}");
        }

        if (parameters.HoldDays is 0 or > 400)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.ParametersInvalid, "hold_days must be 1 to 400");
        }

        string mode = VoucherNames.Of(parameters.PayeeMode);
        DateTimeOffset now = time.GetUtcNow();
        DateTimeOffset effective = parameters.EffectiveFromUnixMs == 0 ? now : DateTimeOffset.FromUnixTimeMilliseconds(parameters.EffectiveFromUnixMs);
        return await dataSource.InTransactionAsync(async (connection, transaction) =>
        {
            // Versions of one year are numbered under a lock so that two operators cannot both take the same number.
            await connection.ExecuteAsync("SELECT pg_advisory_xact_lock(@key)", new { key = 0x5041_5241_4d00_0000L + parameters.ProgrammeYear }, transaction);
            var latest = await connection.QueryFirstOrDefaultAsync<(int Version, DateTime EffectiveFrom)?>(
                "SELECT version, effective_from FROM programme_parameters WHERE programme_year = @year ORDER BY version DESC LIMIT 1",
                new { year = (int)parameters.ProgrammeYear }, transaction);
            if (latest is { } l && effective.UtcDateTime < l.EffectiveFrom)
            {
                throw new VoucherRefusedException(VoucherRefusalReason.ParametersInvalid,
                    $"a new version takes effect no earlier than version {l.Version} ({ShanghaiTime.Describe(ShanghaiTime.Instant(l.EffectiveFrom))}); versions are not back-dated");
            }

            int version = (latest?.Version ?? 0) + 1;
            await connection.ExecuteAsync("""
                INSERT INTO programme_parameters (programme_year, version, effective_from, support_ratio_bp, startup_ratio_bp, annual_cap_fen, stacking_cap_bp,
                    min_annual_rental_fen, payee_mode, hold_days, recorded_by, recorded_at)
                VALUES (@year, @version, @effective, @ratio, @startup, @cap, @stacking, @minimum, @mode, @holdDays, @by, @now)
                """, new
            {
                year = (int)parameters.ProgrammeYear,
                version,
                effective = effective.UtcDateTime,
                ratio = (int)parameters.SupportRatioBp,
                startup = (int)parameters.StartupRatioBp,
                cap = parameters.AnnualCapFen,
                stacking = (int)parameters.StackingCapBp,
                minimum = parameters.MinAnnualRentalFen,
                mode,
                holdDays = (int)parameters.HoldDays,
                by = actor.Subject,
                now = now.UtcDateTime,
            }, transaction);
            return (await ReadParametersAsync(connection, transaction, (int)parameters.ProgrammeYear)).Single(p => p.Version == version).ToMessage();
        }, cancellationToken);
    }

    public async Task<IReadOnlyList<ProgrammeParameters>> ListParametersAsync(int year, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return (await ReadParametersAsync(connection, null, year == 0 ? null : year)).Select(p => p.ToMessage()).ToList();
    }

    /// <summary>The version of a year's parameters in force at an instant.</summary>
    internal static async Task<ParametersRow> ParametersInForceAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, int year, DateTimeOffset at) =>
        (await ReadParametersAsync(connection, transaction, year)).Where(p => p.EffectiveFrom <= at).MaxBy(p => p.Version)
        ?? throw new VoucherRefusedException(VoucherRefusalReason.ParametersUnknown, $"no programme parameters for {year} are in force at {ShanghaiTime.Describe(at)}");

    private static async Task<IReadOnlyList<ParametersRow>> ReadParametersAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, int? year) =>
        (await connection.QueryAsync<(int Year, int Version, DateTime From, int Ratio, int Startup, long Cap, int Stacking, long Minimum, string Mode, int HoldDays)>("""
            SELECT programme_year, version, effective_from, support_ratio_bp, startup_ratio_bp, annual_cap_fen, stacking_cap_bp, min_annual_rental_fen, payee_mode, hold_days
            FROM programme_parameters WHERE @year::integer IS NULL OR programme_year = @year ORDER BY programme_year, version
            """, new { year }, transaction))
        .Select(r => new ParametersRow(r.Year, r.Version, ShanghaiTime.Instant(r.From), r.Ratio, r.Startup, r.Cap, r.Stacking, r.Minimum, r.Mode, r.HoldDays)).ToList();

    // ---------------------------------------------------------------- contracts

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

            return (await ReadContractMessageAsync(connection, transaction, id))!;
        }, cancellationToken);
    }

    public async Task<Contract?> GetContractAsync(long contractId, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await ReadContractMessageAsync(connection, null, contractId);
    }

    public async Task<Contract> RecordOtherSupportAsync(Actor actor, RecordOtherSupportRequest request, CancellationToken cancellationToken)
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
            return (await ReadContractMessageAsync(connection, transaction, contract.ContractId))!;
        }, cancellationToken);
    }

    // ---------------------------------------------------------------- vouchers

    public async Task<Voucher> IssueVoucherAsync(Actor actor, IssueVoucherRequest request, CancellationToken cancellationToken)
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

    // ---------------------------------------------------------------- shared checks and reads

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
        if (details)
        {
            foreach (long id in await connection.QueryAsync<long>("SELECT contract_id FROM contracts WHERE holder_code = @code ORDER BY contract_id", new { code }, transaction))
            {
                holder.Contracts.Add((await ReadContractMessageAsync(connection, transaction, id))!);
            }

            foreach (long id in await connection.QueryAsync<long>("SELECT voucher_id FROM vouchers WHERE holder_code = @code ORDER BY voucher_id", new { code }, transaction))
            {
                holder.Vouchers.Add((await ReadVoucherAsync(connection, transaction, id))!);
            }
        }

        return holder;
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

    private static async Task<Contract?> ReadContractMessageAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, long contractId)
    {
        ContractRow? row = await ReadContractAsync(connection, transaction, contractId);
        if (row is null)
        {
            return null;
        }

        var (other, vouchers) = await ContractSupportAsync(connection, transaction, row);
        string declaration = await connection.ExecuteScalarAsync<string>("SELECT declaration_ref FROM contracts WHERE contract_id = @contractId", new { contractId }, transaction) ?? "";
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


    internal static string CheckCode(string code) =>
        CreditCode.IsValid(code)
            ? code
            : throw new VoucherRefusedException(VoucherRefusalReason.HolderCreditCodeInvalid, $"'{code}' is not a valid unified social credit code (18 characters, GB 32100-2015 check character)");

    internal static VoucherRefusedException Invalid(string message) => new(VoucherRefusalReason.VoucherFieldInvalid, message);

    public static DateOnly ParseDate(string field, string text) =>
        DateOnly.TryParseExact(text, "yyyy-MM-dd", CultureInfo.InvariantCulture, DateTimeStyles.None, out DateOnly date)
            ? date
            : throw Invalid($"{field} must be a date as yyyy-MM-dd, not '{text}'");
}
