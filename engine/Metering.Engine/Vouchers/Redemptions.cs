using System.Data;
using System.Globalization;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Ingest;
using Metering.Engine.Ledger;
using Metering.Engine.Registry;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Npgsql;
using FeeUnit = Metering.Protocol.V1.FeeUnit;

namespace Metering.Engine.Vouchers;

/// <summary>
/// Redemption claims: the metered usage of a contract's holder at its provider, priced with the
/// contract's fee schedule, and the subsidy reserved for it on the contract's voucher for the
/// usage's year, with
/// subsidy = min(ratio × eligible fee, voucher remaining, annual cap remaining, stacking room).
///
/// A claim runs in one transaction under the holder's row lock and then the voucher's, so that
/// concurrent claims of one holder are decided one after the other against exact balances; the
/// voucher's CHECK and the unique key on redeemed usage are the database's last word on "never
/// negative" and "redeemed at most once". The checks run in the order the refusals are listed in
/// vouchers.proto's FileClaim comment; the first that fails is reported.
/// </summary>
public sealed class Redemptions(NpgsqlDataSource dataSource, TimeProvider time)
{
    /// <summary>Most usage records one claim may cover.</summary>
    public const int ClaimRecordsMax = 100_000;

    /// <summary>Most job ids one claim may name.</summary>
    public const int JobIdsMax = 1_000;

    public const int JobIdLengthMax = 128;

    public const int ReasonLengthMax = 4_000;

    /// <summary>A claimed record, as the claim reads it.</summary>
    private sealed record ClaimedRecord(string StreamId, long Sequence, string JobId, string DeviceModel, uint DeviceCount, uint ShareNumerator, uint ShareDenominator,
        long StartMs, long EndMs, long UsageNpfh);

    public async Task<Claim> FileClaimAsync(Actor actor, ClaimFiling request, CancellationToken cancellationToken)
    {
        string[]? jobIds = CheckSelector(request);
        DateTimeOffset now = time.GetUtcNow();
        DateOnly today = ShanghaiTime.DateOf(now);

        // The contract (which never changes once recorded) and the provider's admission snapshot
        // are read first, each on a connection returned at once: a claim holds one pooled
        // connection at a time, so as many claims can queue on a holder's lock as the pool has
        // connections without starving the one that holds it.
        ContractRow contract;
        await using (NpgsqlConnection reader = await dataSource.OpenConnectionAsync(cancellationToken))
        {
            contract = await VoucherBook.ReadContractAsync(reader, null, request.ContractId)
                ?? throw new VoucherRefusedException(VoucherRefusalReason.ContractUnknown, $"there is no contract {request.ContractId}");
        }

        AdmissionSnapshot admission = await new AdmissionGate(dataSource).LoadAsync(contract.ProviderId, cancellationToken);

        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(IsolationLevel.ReadCommitted, cancellationToken);
        VoucherBook.HolderRow holder = await VoucherBook.LockHolderAsync(connection, transaction, contract.HolderCode);
        if (holder.Status != "holder")
        {
            throw new VoucherRefusedException(VoucherRefusalReason.HolderNotApproved, $"{holder.Code} is an applicant; only approved holders redeem vouchers");
        }

        await VoucherBook.CheckIntegrityAsync(connection, transaction, holder.Code, today);

        // The usage searched: a period as given, or a programme year for named jobs.
        int searchYear = jobIds is null ? ShanghaiTime.DateOf(DateTimeOffset.FromUnixTimeMilliseconds(request.PeriodFromUnixMs)).Year
            : request.ProgrammeYear == 0 ? today.Year : (int)request.ProgrammeYear;
        DateTimeOffset from = jobIds is null ? DateTimeOffset.FromUnixTimeMilliseconds(request.PeriodFromUnixMs) : ShanghaiTime.StartOf(new DateOnly(searchYear, 1, 1));
        DateTimeOffset until = jobIds is null ? DateTimeOffset.FromUnixTimeMilliseconds(request.PeriodUntilUnixMs) : ShanghaiTime.StartOf(new DateOnly(searchYear + 1, 1, 1));
        List<ClaimedRecord> records = await SelectUsageAsync(connection, transaction, contract, jobIds, from, until, cancellationToken);
        if (records.Count == 0)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.UsageNotFound,
                $"no metered usage of {holder.Code} at {contract.ProviderId} {(jobIds is null ? $"starts between {ShanghaiTime.Describe(from)} and {ShanghaiTime.Describe(until)}" : $"has the named job ids in {searchYear}")}");
        }

        if (records.Count > ClaimRecordsMax)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.ClaimTooLarge, $"the claim covers more than {ClaimRecordsMax} records; split it into smaller periods");
        }

        if (jobIds is not null && jobIds.Except(records.Select(r => r.JobId), StringComparer.Ordinal).FirstOrDefault() is { } missing)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.UsageNotFound, $"job '{missing}' has no metered usage of {holder.Code} at {contract.ProviderId} in {searchYear}",
                new Dictionary<string, string> { ["job_id"] = missing });
        }

        int[] years = records.Select(r => DayOf(r.StartMs).Year).Distinct().ToArray();
        if (years.Length > 1)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.ClaimSpansYears, $"the claimed usage falls in {string.Join(" and ", years.Order())}; claim each programme year separately");
        }

        int year = years[0];
        var voucher = await connection.QueryFirstOrDefaultAsync<(long Id, DateTime From, DateTime Until)?>("""
            SELECT voucher_id, valid_from, valid_until FROM vouchers WHERE provider_id = @provider AND contract_id = @contract AND programme_year = @year
            """, new { provider = contract.ProviderId, contract = contract.ContractId, year }, transaction)
            ?? throw new VoucherRefusedException(VoucherRefusalReason.VoucherUnknown, $"contract {contract.ContractId} has no voucher for {year}");
        DateOnly validFrom = DateOnly.FromDateTime(voucher.From);
        DateOnly validUntil = DateOnly.FromDateTime(voucher.Until);
        if (today > validUntil)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.VoucherExpired, $"voucher {voucher.Id} was valid until {validUntil:yyyy-MM-dd}; claims are filed by then");
        }

        ParametersRow parameters = await VoucherBook.ParametersInForceAsync(connection, transaction, year, now);

        await CheckNotRedeemedAsync(connection, transaction, contract.ProviderId, records);
        ClaimedRecord? outside = records.FirstOrDefault(r => r.StartMs < contract.StartsAt.ToUnixTimeMilliseconds() || r.EndMs > contract.EndsBefore.ToUnixTimeMilliseconds());
        if (outside is not null)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.UsageOutsideContract,
                $"{Describe(outside)} runs {Time(outside.StartMs)} to {Time(outside.EndMs)}, outside contract {contract.ContractId} ({contract.StartsOn:yyyy-MM-dd} to {contract.EndsOn:yyyy-MM-dd})",
                Identify(outside));
        }

        outside = records.FirstOrDefault(r => DayOf(r.StartMs) < validFrom || DayOf(r.EndMs - 1) > validUntil);
        if (outside is not null)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.UsageOutsideVoucherValidity,
                $"{Describe(outside)} runs {Time(outside.StartMs)} to {Time(outside.EndMs)}, outside voucher {voucher.Id}'s validity ({validFrom:yyyy-MM-dd} to {validUntil:yyyy-MM-dd})",
                Identify(outside));
        }

        foreach (ClaimedRecord record in records)
        {
            Refusal refusal = admission.Check((ulong)record.Sequence, record.StartMs, record.EndMs);
            if (refusal.IsRefused)
            {
                var metadata = Identify(record);
                metadata["ingest_reason"] = ProtocolNames.Of(refusal.Reason);
                throw new VoucherRefusedException(VoucherRefusalReason.ProviderNotAdmittedAtUsage, $"stream {record.StreamId} {refusal.Message}", metadata);
            }
        }

        foreach (IGrouping<string, ClaimedRecord> stream in records.GroupBy(r => r.StreamId, StringComparer.Ordinal))
        {
            var broken = await RecordLinks.FirstBrokenAsync(connection, transaction, contract.ProviderId, stream.Key, stream.Select(r => r.Sequence).ToList(), cancellationToken);
            if (broken is { } b)
            {
                throw new VoucherRefusedException(VoucherRefusalReason.UsageChainBroken, $"the claimed usage does not verify against its hash chain: {b.Evidence}",
                    new Dictionary<string, string> { ["stream_id"] = stream.Key, ["sequence"] = b.Sequence.ToString(CultureInfo.InvariantCulture) });
            }
        }

        List<ClaimLine> lines = await PriceAsync(connection, transaction, contract, records);
        long eligibleFen = lines.Sum(l => l.FeeFen);

        await VoucherBook.CheckMinimumRentalAsync(connection, transaction, holder.Code, year, parameters);

        var balance = await connection.QuerySingleAsync<(long Face, long Held, long Posted)>(
            "SELECT face_value_fen, held_fen, posted_fen + released_fen FROM vouchers WHERE provider_id = @provider AND voucher_id = @id FOR UPDATE",
            new { provider = contract.ProviderId, id = voucher.Id }, transaction);
        // A year-end release takes the unused balance as posting does: neither is left to hold.
        long voucherRemaining = balance.Face - balance.Held - balance.Posted;
        if (voucherRemaining <= 0)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.VoucherExhausted, $"voucher {voucher.Id} has nothing left ({Pricing.Yuan(balance.Held)} CNY held, {Pricing.Yuan(balance.Posted)} CNY posted)");
        }

        long usedThisYear = await connection.ExecuteScalarAsync<long>("""
            SELECT coalesce(sum(h.amount_fen), 0)::bigint FROM voucher_holds h JOIN claims c ON c.provider_id = h.provider_id AND c.claim_id = h.claim_id
            WHERE c.holder_code = @holder AND c.programme_year = @year AND h.state IN ('reserved', 'posted')
            """, new { holder = holder.Code, year }, transaction);
        long capRemaining = parameters.AnnualCapFen - usedThisYear;
        if (capRemaining <= 0)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.HolderOverCap,
                $"{holder.Code} has used its whole {year} cap of {Pricing.Yuan(parameters.AnnualCapFen)} CNY ({Pricing.Yuan(usedThisYear)} CNY held or posted)");
        }

        var (otherFen, voucherSupportFen) = await VoucherBook.ContractSupportAsync(connection, transaction, contract);
        long stackingRoom = Pricing.StackingRoomFen(contract.AmountFen, parameters.StackingCapBp, otherFen, voucherSupportFen);
        if (stackingRoom <= 0)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.StackingCapReached,
                $"public support for contract {contract.ContractId} has reached {parameters.StackingCapBp / 100}% of its amount ({Pricing.Yuan(otherFen)} CNY from other sources, {Pricing.Yuan(voucherSupportFen)} CNY from vouchers)");
        }

        int ratioBp = parameters.RatioBp(contract.Startup);
        SubsidyDecision decision = Pricing.Subsidy(eligibleFen, ratioBp, voucherRemaining, capRemaining, stackingRoom);
        if (decision.SubsidyFen <= 0)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.SubsidyZero, $"an eligible fee of {eligibleFen} fen at {ratioBp} basis points gives no whole fen of subsidy");
        }

        string payee = parameters.PayeeMode == "provider_deduction" ? contract.ProviderId : holder.Code;
        long claimId = await connection.ExecuteScalarAsync<long>("""
            INSERT INTO claims (provider_id, contract_id, voucher_id, holder_code, job_ids, period_from, period_until, programme_year, parameters_version, payee_mode,
                ratio_bp, records, usage_npfh, card_ms, eligible_fee_fen, ratio_subsidy_fen, voucher_remaining_fen, annual_cap_remaining_fen, stacking_room_fen,
                subsidy_fen, limited_by, usage_days, filed_by, filed_at)
            VALUES (@provider, @contract, @voucher, @holder, @jobs, @from, @until, @year, @version, @mode, @ratio, @records, @npfh, @cardMs, @eligible, @ratioSubsidy,
                @voucherRemaining, @capRemaining, @stackingRoom, @subsidy, @limitedBy, @days, @by, @now)
            RETURNING claim_id
            """, new
        {
            provider = contract.ProviderId,
            contract = contract.ContractId,
            voucher = voucher.Id,
            holder = holder.Code,
            jobs = jobIds,
            from = jobIds is null ? from.UtcDateTime : (DateTime?)null,
            until = jobIds is null ? until.UtcDateTime : (DateTime?)null,
            year,
            version = parameters.Version,
            mode = parameters.PayeeMode,
            ratio = ratioBp,
            records = (long)records.Count,
            npfh = lines.Sum(l => l.UsageNpfh),
            cardMs = lines.Sum(l => l.CardMs),
            eligible = eligibleFen,
            ratioSubsidy = decision.RatioSubsidyFen,
            voucherRemaining,
            capRemaining,
            stackingRoom,
            subsidy = decision.SubsidyFen,
            limitedBy = VoucherNames.Of(decision.LimitedBy),
            days = records.Select(r => DayOf(r.StartMs)).Distinct().Order().ToArray(),
            by = actor.Subject,
            now = now.UtcDateTime,
        }, transaction);

        foreach (ClaimLine line in lines)
        {
            await connection.ExecuteAsync("""
                INSERT INTO claim_lines (provider_id, claim_id, device_model, fee_unit, records, usage_npfh, card_ms, price_fen, fee_fen)
                VALUES (@provider, @claimId, @model, @unit, @records, @npfh, @cardMs, @price, @fee)
                """, new { provider = contract.ProviderId, claimId, model = line.DeviceModel, unit = Names.Of(line.FeeUnit), records = line.Records, npfh = line.UsageNpfh, cardMs = line.CardMs, price = line.PriceFen, fee = line.FeeFen }, transaction);
        }

        try
        {
            await connection.ExecuteAsync("""
                INSERT INTO redeemed_usage (provider_id, stream_id, sequence, claim_id) SELECT @provider, s, q, @claimId FROM unnest(@streams, @sequences) AS u(s, q)
                """, new { provider = contract.ProviderId, claimId, streams = records.Select(r => r.StreamId).ToArray(), sequences = records.Select(r => r.Sequence).ToArray() }, transaction);
        }
        catch (PostgresException e) when (e.SqlState == PostgresErrorCodes.UniqueViolation)
        {
            // Claims of one holder are serialised by its row lock, so this is a record claimed by
            // a claim that committed between our check and our insert under another holder lock:
            // a record of one holder cannot be, but the key says the last word.
            throw new VoucherRefusedException(VoucherRefusalReason.UsageAlreadyRedeemed, "a record of the claim was redeemed by another claim at the same moment");
        }

        await connection.ExecuteAsync("""
            INSERT INTO voucher_holds (provider_id, voucher_id, claim_id, amount_fen, state, reserved_at, expires_at) VALUES (@provider, @voucher, @claimId, @amount, 'reserved', @now, @expires)
            """, new { provider = contract.ProviderId, voucher = voucher.Id, claimId, amount = decision.SubsidyFen, now = now.UtcDateTime, expires = now.AddDays(parameters.HoldDays).UtcDateTime }, transaction);
        int moved = await connection.ExecuteAsync(
            "UPDATE vouchers SET held_fen = held_fen + @amount WHERE provider_id = @provider AND voucher_id = @voucher AND held_fen + posted_fen + released_fen + @amount <= face_value_fen",
            new { provider = contract.ProviderId, voucher = voucher.Id, amount = decision.SubsidyFen }, transaction);
        if (moved != 1)
        {
            throw new LedgerInvariantException($"voucher {voucher.Id} would go negative holding {decision.SubsidyFen} fen; the claim is rolled back");
        }

        var entry = new LedgerEntry("hold_reserve", $"claim:{claimId}", $"claim {claimId} reserves {decision.SubsidyFen} fen on voucher {voucher.Id} for {payee}")
            .Debit(Accounts.VoucherAvailable(voucher.Id), decision.SubsidyFen)
            .Credit(Accounts.VoucherHeld(voucher.Id), decision.SubsidyFen);
        await LedgerWriter.WriteAsync(connection, transaction, entry, null, now, cancellationToken);
        Claim claim = (await ReadClaimAsync(connection, transaction, claimId))!;
        await transaction.CommitAsync(cancellationToken);
        return claim;
    }

    /// <summary>Voids a claim whose hold is reserved: the subsidy returns to the voucher and its usage can be claimed again.</summary>
    public async Task<Claim> VoidClaimAsync(Actor actor, ClaimVoid request, CancellationToken cancellationToken)
    {
        string reason = request.Reason.Trim();
        if (reason.Length is 0 or > ReasonLengthMax)
        {
            throw VoucherBook.Invalid($"a void needs its reason, 1 to {ReasonLengthMax} characters");
        }

        DateTimeOffset now = time.GetUtcNow();
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(IsolationLevel.ReadCommitted, cancellationToken);
        var claim = await connection.QueryFirstOrDefaultAsync<(string Provider, string Holder)?>(
            "SELECT provider_id, holder_code FROM claims WHERE claim_id = @id", new { id = request.ClaimId }, transaction)
            ?? throw new VoucherRefusedException(VoucherRefusalReason.ClaimUnknown, $"there is no claim {request.ClaimId}");
        await VoucherBook.LockHolderAsync(connection, transaction, claim.Holder);
        var hold = await connection.QuerySingleAsync<(long Voucher, long Amount, string State)>(
            "SELECT voucher_id, amount_fen, state FROM voucher_holds WHERE provider_id = @provider AND claim_id = @id FOR UPDATE",
            new { provider = claim.Provider, id = request.ClaimId }, transaction);
        if (hold.State != "reserved")
        {
            throw new VoucherRefusedException(VoucherRefusalReason.ClaimNotReserved, $"claim {request.ClaimId}'s hold is {hold.State}; only a reserved hold can be voided");
        }

        await ReleaseHoldAsync(connection, transaction, claim.Provider, request.ClaimId, hold.Voucher, hold.Amount, "voided", $"voided by {actor.Subject}: {reason}", null, now, cancellationToken);
        Claim result = (await ReadClaimAsync(connection, transaction, request.ClaimId))!;
        await transaction.CommitAsync(cancellationToken);
        return result;
    }

    /// <summary>
    /// Ends a reserved hold without posting it (voided or expired): the amount returns from held
    /// to available, and the claim's records are released for another claim.
    /// </summary>
    internal static async Task ReleaseHoldAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string providerId, long claimId, long voucherId, long amountFen,
        string state, string reason, long? runId, DateTimeOffset at, CancellationToken cancellationToken)
    {
        await connection.ExecuteAsync("""
            UPDATE voucher_holds SET state = @state, closed_at = @at, closed_by_run = @runId, close_reason = @reason WHERE provider_id = @provider AND claim_id = @claimId
            """, new { state, at = at.UtcDateTime, runId, reason, provider = providerId, claimId }, transaction);
        int moved = await connection.ExecuteAsync(
            "UPDATE vouchers SET held_fen = held_fen - @amount WHERE provider_id = @provider AND voucher_id = @voucherId AND held_fen >= @amount",
            new { amount = amountFen, provider = providerId, voucherId }, transaction);
        if (moved != 1)
        {
            throw new LedgerInvariantException($"voucher {voucherId} holds less than claim {claimId}'s {amountFen} fen");
        }

        await connection.ExecuteAsync("DELETE FROM redeemed_usage WHERE provider_id = @provider AND claim_id = @claimId", new { provider = providerId, claimId }, transaction);
        var entry = new LedgerEntry(state == "voided" ? "hold_void" : "hold_expire", $"claim:{claimId}", $"claim {claimId} {state}: {amountFen} fen back to voucher {voucherId}")
            .Debit(Accounts.VoucherHeld(voucherId), amountFen)
            .Credit(Accounts.VoucherAvailable(voucherId), amountFen);
        await LedgerWriter.WriteAsync(connection, transaction, entry, runId, at, cancellationToken);
    }

    public async Task<Claim?> GetClaimAsync(long claimId, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await ReadClaimAsync(connection, null, claimId);
    }

    /// <summary>Claims, newest first; of one contract when given.</summary>
    public async Task<IReadOnlyList<Claim>> ListClaimsAsync(long? contractId, int limit, CancellationToken cancellationToken)
    {
        limit = limit == 0 ? VoucherBook.ListLimitDefault : Math.Clamp(limit, 1, VoucherBook.ListLimitMax);
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var ids = await connection.QueryAsync<long>(
            "SELECT claim_id FROM claims WHERE @contractId::bigint IS NULL OR contract_id = @contractId ORDER BY claim_id DESC LIMIT @limit", new { contractId, limit });
        var claims = new List<Claim>();
        foreach (long id in ids)
        {
            claims.Add((await ReadClaimAsync(connection, null, id))!);
        }

        return claims;
    }

    // ---------------------------------------------------------------- the steps

    private static string[]? CheckSelector(ClaimFiling request)
    {
        bool byJobs = request.JobIds.Count > 0;
        bool byPeriod = request.PeriodFromUnixMs != 0 || request.PeriodUntilUnixMs != 0;
        if (byJobs == byPeriod)
        {
            throw VoucherBook.Invalid("a claim names its usage by job_ids or by a period (period_from_unix_ms, period_until_unix_ms), not both and not neither");
        }

        if (byPeriod)
        {
            if (request.PeriodUntilUnixMs <= request.PeriodFromUnixMs || request.PeriodUntilUnixMs - request.PeriodFromUnixMs > TimeSpan.FromDays(366).TotalMilliseconds)
            {
                throw VoucherBook.Invalid("the period must end after it starts and span at most 366 days");
            }

            return null;
        }

        if (request.JobIds.Count > JobIdsMax || request.JobIds.Any(j => j.Length is 0 or > JobIdLengthMax))
        {
            throw VoucherBook.Invalid($"a claim names 1 to {JobIdsMax} job ids of 1 to {JobIdLengthMax} characters");
        }

        if (request.ProgrammeYear != 0 && request.ProgrammeYear is < 2024 or > 2100)
        {
            throw VoucherBook.Invalid("programme_year must be 2024 to 2100, or 0 for this year");
        }

        return request.JobIds.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToArray();
    }

    private static async Task<List<ClaimedRecord>> SelectUsageAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, ContractRow contract, string[]? jobIds,
        DateTimeOffset from, DateTimeOffset until, CancellationToken cancellationToken)
    {
        // Proof streams are an applicant's metering-log evidence, never usage to be paid for.
        await using var command = new NpgsqlCommand("""
            SELECT stream_id, sequence, job_id, device_model, device_count, share_numerator, share_denominator, start_at, end_at, usage_npfh
            FROM usage_records
            WHERE provider_id = $1 AND holder_code = $2 AND start_at >= $3 AND start_at < $4 AND stream_id NOT LIKE 'proof:%'
              AND ($5::text[] IS NULL OR job_id = ANY($5))
            ORDER BY stream_id, sequence
            LIMIT $6
            """, connection, transaction)
        {
            Parameters =
            {
                new() { Value = contract.ProviderId },
                new() { Value = contract.HolderCode },
                new() { Value = from.UtcDateTime },
                new() { Value = until.UtcDateTime },
                new() { Value = (object?)jobIds ?? DBNull.Value, NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Array | NpgsqlTypes.NpgsqlDbType.Text },
                new() { Value = ClaimRecordsMax + 1 },
            },
        };
        var records = new List<ClaimedRecord>();
        await using NpgsqlDataReader reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            records.Add(new ClaimedRecord(reader.GetString(0), reader.GetInt64(1), reader.GetString(2), reader.GetString(3), (uint)reader.GetInt32(4), (uint)reader.GetInt32(5),
                (uint)reader.GetInt32(6), UnixMs.FromDateTime(reader.GetDateTime(7)), UnixMs.FromDateTime(reader.GetDateTime(8)), reader.GetInt64(9)));
        }

        return records;
    }

    private static async Task CheckNotRedeemedAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string providerId, List<ClaimedRecord> records)
    {
        var redeemed = await connection.QueryFirstOrDefaultAsync<(string Stream, long Sequence, long Claim)?>("""
            SELECT r.stream_id, r.sequence, r.claim_id FROM redeemed_usage r JOIN unnest(@streams, @sequences) AS u(s, q) ON r.stream_id = u.s AND r.sequence = u.q
            WHERE r.provider_id = @provider ORDER BY r.stream_id, r.sequence LIMIT 1
            """, new { provider = providerId, streams = records.Select(r => r.StreamId).ToArray(), sequences = records.Select(r => r.Sequence).ToArray() }, transaction);
        if (redeemed is { } r)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.UsageAlreadyRedeemed, $"record {r.Sequence} of stream {r.Stream} is already redeemed by claim {r.Claim}",
                new Dictionary<string, string>
                {
                    ["stream_id"] = r.Stream,
                    ["sequence"] = r.Sequence.ToString(CultureInfo.InvariantCulture),
                    ["claim_id"] = r.Claim.ToString(CultureInfo.InvariantCulture),
                });
        }
    }

    /// <summary>One line per device model, priced with the contract's fee-schedule version in the contract's unit.</summary>
    private static async Task<List<ClaimLine>> PriceAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, ContractRow contract, List<ClaimedRecord> records)
    {
        string json = await connection.ExecuteScalarAsync<string>("""
            SELECT lines::text FROM fee_schedules WHERE provider_id = @provider AND service_item = @item AND version = @version
            """, new { provider = contract.ProviderId, item = contract.ServiceItem, version = contract.FeeScheduleVersion }, transaction) ?? "[]";
        FeeUnit unit = Names.FeeUnitOf(contract.FeeUnit);
        Dictionary<string, long> prices = ProviderRegistry.ParseFees(json).Where(l => l.Unit == unit).ToDictionary(l => l.DeviceModel, l => l.PriceFen, StringComparer.Ordinal);
        var lines = new List<ClaimLine>();
        foreach (IGrouping<string, ClaimedRecord> model in records.GroupBy(r => r.DeviceModel, StringComparer.Ordinal).OrderBy(g => g.Key, StringComparer.Ordinal))
        {
            if (!prices.TryGetValue(model.Key, out long price))
            {
                throw new VoucherRefusedException(VoucherRefusalReason.NoFiledPrice,
                    $"fee schedule version {contract.FeeScheduleVersion} of {contract.ProviderId} '{contract.ServiceItem}' has no {contract.FeeUnit} price for {model.Key}",
                    new Dictionary<string, string> { ["device_model"] = model.Key });
            }

            long npfh = 0;
            long cardMs = 0;
            foreach (ClaimedRecord record in model)
            {
                npfh = checked(npfh + record.UsageNpfh);
                cardMs = checked(cardMs + Pricing.CardMilliseconds(record.DeviceCount, record.ShareNumerator, record.ShareDenominator, record.EndMs - record.StartMs));
            }

            lines.Add(new ClaimLine
            {
                DeviceModel = model.Key,
                FeeUnit = unit,
                Records = model.Count(),
                UsageNpfh = npfh,
                CardMs = cardMs,
                PriceFen = price,
                FeeFen = Pricing.FeeFen(unit, npfh, cardMs, price),
            });
        }

        return lines;
    }

    internal static async Task<Claim?> ReadClaimAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, long claimId)
    {
        var row = await connection.QueryFirstOrDefaultAsync<ClaimRecord>("""
            SELECT c.claim_id AS Id, c.contract_id AS Contract, c.voucher_id AS Voucher, c.holder_code AS Holder, c.provider_id AS Provider, c.programme_year AS Year,
                   c.parameters_version AS Version, c.payee_mode AS Mode, c.ratio_bp AS Ratio, c.records AS Records, c.eligible_fee_fen AS Eligible,
                   c.ratio_subsidy_fen AS RatioSubsidy, c.voucher_remaining_fen AS VoucherRemaining, c.annual_cap_remaining_fen AS CapRemaining,
                   c.stacking_room_fen AS StackingRoom, c.subsidy_fen AS Subsidy, c.limited_by AS LimitedBy, h.state AS HoldState,
                   (extract(epoch FROM h.expires_at) * 1000)::bigint AS ExpiresMs, (extract(epoch FROM c.filed_at) * 1000)::bigint AS FiledMs,
                   array_to_string(c.usage_days, ',') AS Days
            FROM claims c JOIN voucher_holds h ON h.provider_id = c.provider_id AND h.claim_id = c.claim_id
            WHERE c.claim_id = @claimId
            """, new { claimId }, transaction);
        if (row is null)
        {
            return null;
        }

        var lines = await connection.QueryAsync<(string Model, string Unit, long Records, long Npfh, long CardMs, long Price, long Fee)>("""
            SELECT device_model, fee_unit, records, usage_npfh, card_ms, price_fen, fee_fen FROM claim_lines WHERE provider_id = @provider AND claim_id = @claimId ORDER BY device_model
            """, new { provider = row.Provider, claimId }, transaction);
        return new Claim
        {
            ClaimId = row.Id,
            ContractId = row.Contract,
            VoucherId = row.Voucher,
            HolderCode = row.Holder,
            ProviderId = row.Provider,
            ProgrammeYear = (uint)row.Year,
            ParametersVersion = (uint)row.Version,
            PayeeMode = VoucherNames.PayeeModeOf(row.Mode),
            RatioBp = (uint)row.Ratio,
            Records = row.Records,
            EligibleFeeFen = row.Eligible,
            RatioSubsidyFen = row.RatioSubsidy,
            VoucherRemainingFen = row.VoucherRemaining,
            AnnualCapRemainingFen = row.CapRemaining,
            StackingRoomFen = row.StackingRoom,
            SubsidyFen = row.Subsidy,
            LimitedBy = VoucherNames.SubsidyLimitOf(row.LimitedBy),
            HoldState = VoucherNames.HoldStateOf(row.HoldState),
            HoldExpiresUnixMs = row.ExpiresMs,
            FiledUnixMs = row.FiledMs,
            UsageDays = row.Days.Split(',', StringSplitOptions.RemoveEmptyEntries),
            Lines = lines.Select(l => new ClaimLine
            {
                DeviceModel = l.Model,
                FeeUnit = Names.FeeUnitOf(l.Unit),
                Records = l.Records,
                UsageNpfh = l.Npfh,
                CardMs = l.CardMs,
                PriceFen = l.Price,
                FeeFen = l.Fee,
            }).ToList(),
        };
    }

    private sealed class ClaimRecord
    {
        public long Id { get; init; }
        public long Contract { get; init; }
        public long Voucher { get; init; }
        public string Holder { get; init; } = "";
        public string Provider { get; init; } = "";
        public int Year { get; init; }
        public int Version { get; init; }
        public string Mode { get; init; } = "";
        public int Ratio { get; init; }
        public long Records { get; init; }
        public long Eligible { get; init; }
        public long RatioSubsidy { get; init; }
        public long VoucherRemaining { get; init; }
        public long CapRemaining { get; init; }
        public long StackingRoom { get; init; }
        public long Subsidy { get; init; }
        public string LimitedBy { get; init; } = "";
        public string HoldState { get; init; } = "";
        public long ExpiresMs { get; init; }
        public long FiledMs { get; init; }
        public string Days { get; init; } = "";
    }

    private static DateOnly DayOf(long unixMs) => ShanghaiTime.DateOf(DateTimeOffset.FromUnixTimeMilliseconds(unixMs));

    private static string Time(long unixMs) => ShanghaiTime.Describe(DateTimeOffset.FromUnixTimeMilliseconds(unixMs));

    private static string Describe(ClaimedRecord record) => $"record {record.Sequence} of stream {record.StreamId} (job {record.JobId})";

    private static Dictionary<string, string> Identify(ClaimedRecord record) => new()
    {
        ["stream_id"] = record.StreamId,
        ["sequence"] = record.Sequence.ToString(CultureInfo.InvariantCulture),
        ["job_id"] = record.JobId,
    };
}
