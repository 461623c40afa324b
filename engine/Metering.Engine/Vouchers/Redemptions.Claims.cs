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

namespace Metering.Engine.Vouchers;

// Filing a claim: its usage selected and priced, the subsidy decided and held on the voucher.
public sealed partial class Redemptions
{
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
        await Transactions.SequentialOnCitusAsync(connection, transaction, cancellationToken);
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
                metadata["ingest_reason"] = refusal.Reason.ContractName();
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
}
