using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Catalog;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Registry;

/// <summary>The admission decision and the admission notice that admits the service item (or renews it).</summary>
public sealed partial class ProviderRegistry
{
    /// <summary>The admission decision, once public notice has ended. Admitting over objections needs reasons.</summary>
    public Task<Application> DecideAdmissionAsync(Actor actor, OperatorDecision decision, CancellationToken cancellationToken) =>
        DecideOrProposeAsync(actor, decision.ApplicationId, new StageCall(StageCall.Decision, decision.Pass, 0, decision.Reasons), cancellationToken);

    private StageRule DecisionRule(StageCall decision) =>
        async (connection, transaction, row, now) =>
        {
            if (row.NoticeEndsAt is { } ends && now < ends)
            {
                throw new RegistryRefusedException(RegistryRefusalReason.NoticePeriodRunning,
                    $"public notice of application {row.ApplicationId} runs until {ends.ToOffset(ShanghaiTime.Offset):yyyy-MM-dd HH:mm} Asia/Shanghai");
            }

            if (!decision.Pass)
            {
                return (ApplicationState.Rejected, "rejected", RequireReasons(decision.Reasons, "a rejection needs its reasons"));
            }

            // Eligibility may have changed since filing: a listing, a lapsed licence, a voucher application.
            await CheckStillEligibleAsync(connection, transaction, row, now);
            int objections = await connection.ExecuteScalarAsync<int>(
                "SELECT count(*) FROM application_stages WHERE provider_id = @code AND application_id = @id AND stage = 'objection'", new { code = row.ProviderId, id = row.ApplicationId }, transaction);
            string reasons = objections > 0
                ? RequireReasons(decision.Reasons, $"admitting over {objections} recorded objection(s) needs reasons that answer them")
                : decision.Reasons.Trim();
            await connection.ExecuteAsync("UPDATE applications SET decided_at = @now WHERE provider_id = @code AND application_id = @id", new { now = now.UtcDateTime, code = row.ProviderId, id = row.ApplicationId }, transaction);
            return (ApplicationState.AwaitingAdmissionNotice, "passed", reasons);
        };

    /// <summary>Issues the admission notice: the service item is admitted from the decision to the batch's validity end.</summary>
    public async Task<Application> IssueAdmissionNoticeAsync(Actor actor, AdmissionNotice notice, CancellationToken cancellationToken)
    {
        string number = notice.NoticeNumber.Trim();
        if (number.Length is 0 or > 64)
        {
            throw FilingRules.Invalid("notice_number must be 1 to 64 characters");
        }

        return await InTransactionAsync(async (connection, transaction) =>
        {
            // The organisation is locked before the application, in the order every other change
            // that takes both locks uses, so that two such changes cannot deadlock.
            string? provider = await ProviderOfApplicationAsync(connection, transaction, notice.ApplicationId);
            if (provider is not null)
            {
                await LockOrganisationAsync(connection, transaction, provider);
            }

            ApplicationRow row = await LockApplicationAsync(connection, transaction, notice.ApplicationId);
            DateTimeOffset now = time.GetUtcNow();
            if (row.State != ApplicationState.AwaitingAdmissionNotice)
            {
                throw await StageConflictAsync(connection, transaction, row, "admission_notice", "the admission notice follows the admission decision");
            }
            if (await connection.ExecuteScalarAsync<bool>("SELECT EXISTS (SELECT 1 FROM admission_notice_numbers WHERE notice_number = @number)", new { number }, transaction))
            {
                throw new RegistryRefusedException(RegistryRefusalReason.NoticeNumberTaken, $"admission notice number {number} is already used");
            }

            BatchRow batch = (await ReadBatchesAsync(connection, transaction, row.BatchId)).Single();
            DateTimeOffset validFrom = row.DecidedAt ?? now;
            long? renews = await connection.ExecuteScalarAsync<long?>("SELECT renews_application_id FROM applications WHERE provider_id = @code AND application_id = @id", new { code = row.ProviderId, id = row.ApplicationId }, transaction);
            ServiceItemRow? renewed = null;
            if (renews is { } renewedId)
            {
                renewed = (await ReadServiceItemsAsync(connection, transaction, row.ProviderId, now)).Single(i => i.ApplicationId == renewedId);
                if (renewed.EndKind is not null)
                {
                    // Withdrawal and revocation reject a renewal in progress; this guards the rule.
                    throw new RegistryRefusedException(RegistryRefusalReason.RenewalInvalid,
                        $"the admission of application {renewedId} was {renewed.EndKind}; a renewal does not revive it");
                }

                // Admitted before the old admission ends, the renewal takes over at that end, so
                // the item runs without a gap; admitted later, it starts at its decision.
                if (validFrom < renewed.ValidityEndsAt)
                {
                    validFrom = renewed.ValidityEndsAt;
                }
            }

            if (validFrom >= batch.ValidityEndsAt)
            {
                throw new RegistryRefusedException(RegistryRefusalReason.PeriodInvalid, $"batch {batch.BatchId}'s validity ended at {batch.ValidityEndsAt:O}; nothing can be admitted under it");
            }

            string before = (await ApplicationJsonAsync(connection, transaction, row.ProviderId, row.ApplicationId))!;
            // The number is registered programme-wide first (its primary key holds it unique
            // across providers, on Citus too), then named by the application.
            await connection.ExecuteAsync("INSERT INTO admission_notice_numbers (notice_number, provider_id, application_id) VALUES (@number, @code, @id)",
                new { number, code = row.ProviderId, id = row.ApplicationId }, transaction);
            await connection.ExecuteAsync("UPDATE applications SET state = 'admitted', notice_number = @number WHERE provider_id = @code AND application_id = @id",
                new { number, code = row.ProviderId, id = row.ApplicationId }, transaction);
            await connection.ExecuteAsync("""
                INSERT INTO service_items (provider_id, service_item, application_id, notice_number, valid_from, validity_ends_at, renews_application_id)
                VALUES (@code, @item, @id, @number, @from, @ends, @renews)
                """, new { code = row.ProviderId, item = row.ServiceItem, id = row.ApplicationId, number, from = validFrom.UtcDateTime, ends = batch.ValidityEndsAt.UtcDateTime, renews }, transaction);
            if (renewed?.SuspendedAt is not null)
            {
                // A renewal does not lift a suspension: only a reinstatement does.
                await connection.ExecuteAsync("""
                    INSERT INTO service_item_suspensions (provider_id, service_item, application_id, suspended_at, reason) VALUES (@code, @item, @id, @from, @reason)
                    """, new { code = row.ProviderId, item = row.ServiceItem, id = row.ApplicationId, from = validFrom.UtcDateTime, reason = $"carried over from application {renewed.ApplicationId}: {renewed.SuspensionReason}" }, transaction);
            }

            int version = await connection.ExecuteScalarAsync<int>("""
                INSERT INTO fee_schedules (provider_id, service_item, version, effective_from, filed_at, lines)
                SELECT @code, @item, coalesce((SELECT max(version) FROM fee_schedules WHERE provider_id = @code AND service_item = @item), 0) + 1, @from, filed_at, fee_lines
                FROM applications WHERE provider_id = @code AND application_id = @id
                RETURNING version
                """, new { code = row.ProviderId, item = row.ServiceItem, id = row.ApplicationId, from = validFrom.UtcDateTime }, transaction);
            await RecordAsync(connection, transaction, actor, now, row.ProviderId, "fee_schedule", $"{row.ProviderId}/{row.ServiceItem}/{version}", "file", null,
                await RowJsonAsync(connection, transaction, "fee_schedules", "provider_id = @code AND service_item = @item AND version = @version", new { code = row.ProviderId, item = row.ServiceItem, version }));
            await BumpEpochAsync(connection, transaction, row.ProviderId);
            await AddStageAsync(connection, transaction, row.ProviderId, row.ApplicationId, "admission_notice", actor, now, "passed",
                $"notice {number}; {(renewed is null ? "" : $"renews application {renewed.ApplicationId}{(validFrom == renewed.ValidityEndsAt ? " without a gap" : $", whose admission ended at {renewed.ValidityEndsAt.ToOffset(ShanghaiTime.Offset):yyyy-MM-dd HH:mm}")}; ")}admitted from {validFrom.ToOffset(ShanghaiTime.Offset):yyyy-MM-dd HH:mm} until {batch.ValidityEndsAt.ToOffset(ShanghaiTime.Offset):yyyy-MM-dd HH:mm} Asia/Shanghai; fee schedule version {version}");
            await RecordAsync(connection, transaction, actor, now, row.ProviderId, "application", Key(row.ApplicationId), "admission_notice", before, await ApplicationJsonAsync(connection, transaction, row.ProviderId, row.ApplicationId));
            await RecordAsync(connection, transaction, actor, now, row.ProviderId, "service_item", $"{row.ProviderId}/{row.ServiceItem}", renewed is null ? "admit" : "renew", null,
                await ServiceItemJsonAsync(connection, transaction, row.ProviderId, row.ApplicationId));
            return (await ReadApplicationAsync(connection, transaction, row.ProviderId, row.ApplicationId, details: true))!;
        }, cancellationToken);
    }
}
