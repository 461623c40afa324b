using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Catalog;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Registry;

/// <summary>Exits and sanctions: suspension, reinstatement, withdrawal and revocation of a service item, and false materials.</summary>
public sealed partial class ProviderRegistry
{
    public async Task<ServiceItem> ChangeServiceItemStatusAsync(Actor actor, ServiceItemStatusChange change, CancellationToken cancellationToken)
    {
        ServiceItemAction action = change.Action;
        string code = CheckCreditCode(change.CreditCode);
        Names.CheckServiceItem(change.ServiceItem);
        string reasons = action is ServiceItemAction.Suspend or ServiceItemAction.Revoke
            ? RequireReasons(change.Reasons, $"{action.ToString().ToLowerInvariant()} needs its reasons")
            : change.Reasons.Trim();
        if (action == ServiceItemAction.Unspecified || !Enum.IsDefined(action))
        {
            throw FilingRules.Invalid("action must be SUSPEND, REINSTATE, WITHDRAW or REVOKE");
        }

        return await InTransactionAsync(async (connection, transaction) =>
        {
            await LockOrganisationAsync(connection, transaction, code);
            DateTimeOffset now = time.GetUtcNow();
            IReadOnlyList<ServiceItemRow> admissions = (await ReadServiceItemsAsync(connection, transaction, code, now)).Where(i => i.Item == change.ServiceItem).ToList();
            ServiceItemRow item = InForce(admissions, now)
                ?? throw new RegistryRefusedException(RegistryRefusalReason.ServiceItemUnknown, $"{code} holds no admitted service item '{change.ServiceItem}'");
            // A renewal admitted but not yet started follows the admission in force: it is
            // suspended, reinstated and ended with it, so that no status change is escaped by
            // waiting for the renewal to take over, and a renewal never revives an admission
            // that was withdrawn or revoked.
            ServiceItemRow? waiting = admissions.FirstOrDefault(i => i.ValidFrom > now && i.EndKind is null);
            long[] ids = waiting is null ? [item.ApplicationId] : [item.ApplicationId, waiting.ApplicationId];
            ServiceItemStatus status = item.Status(now);
            string before = (await ServiceItemJsonAsync(connection, transaction, code, item.ApplicationId))!;
            string? waitingBefore = waiting is null ? null : await ServiceItemJsonAsync(connection, transaction, code, waiting.ApplicationId);
            switch (action, status)
            {
                case (ServiceItemAction.Suspend, ServiceItemStatus.Active):
                    await connection.ExecuteAsync("""
                        INSERT INTO service_item_suspensions (provider_id, service_item, application_id, suspended_at, reason) VALUES (@code, @item, @id, @now, @reasons)
                        """, new { code, item = change.ServiceItem, id = item.ApplicationId, now = now.UtcDateTime, reasons }, transaction);
                    if (waiting is not null)
                    {
                        // A renewal's suspension starts with it. Suspended, reinstated and
                        // suspended again before it starts, it reopens the same (empty) row.
                        await connection.ExecuteAsync("""
                            INSERT INTO service_item_suspensions (provider_id, service_item, application_id, suspended_at, reason) VALUES (@code, @item, @id, @from, @reasons)
                            ON CONFLICT (provider_id, service_item, application_id, suspended_at) DO UPDATE SET reinstated_at = NULL, reason = excluded.reason
                            """, new { code, item = change.ServiceItem, id = waiting.ApplicationId, from = waiting.ValidFrom.UtcDateTime, reasons }, transaction);
                    }

                    break;
                case (ServiceItemAction.Reinstate, ServiceItemStatus.Suspended):
                    await connection.ExecuteAsync("""
                        UPDATE service_item_suspensions SET reinstated_at = greatest(@now, suspended_at)
                        WHERE provider_id = @code AND service_item = @item AND application_id = ANY(@ids) AND reinstated_at IS NULL
                        """, new { code, item = change.ServiceItem, ids, now = now.UtcDateTime }, transaction);
                    break;
                case (ServiceItemAction.Withdraw or ServiceItemAction.Revoke, ServiceItemStatus.Active or ServiceItemStatus.Suspended):
                    string kind = action == ServiceItemAction.Withdraw ? "withdrawn" : "revoked";
                    await connection.ExecuteAsync("""
                        UPDATE service_items SET ended_at = @now, end_kind = @kind, end_reason = @reasons
                        WHERE provider_id = @code AND service_item = @item AND application_id = ANY(@ids)
                        """, new { code, item = change.ServiceItem, ids, now = now.UtcDateTime, kind, reasons }, transaction);
                    await connection.ExecuteAsync("""
                        UPDATE service_item_suspensions SET reinstated_at = greatest(@now, suspended_at)
                        WHERE provider_id = @code AND service_item = @item AND application_id = ANY(@ids) AND reinstated_at IS NULL
                        """, new { code, item = change.ServiceItem, ids, now = now.UtcDateTime }, transaction);
                    await RejectRenewalsInProgressAsync(connection, transaction, actor, code, change.ServiceItem, kind, now);
                    break;
                default:
                    throw new RegistryRefusedException(RegistryRefusalReason.StatusChangeInvalid,
                        $"service item '{change.ServiceItem}' of {code} is {status.ToString().ToLowerInvariant()}; it cannot be {Past(action)}");
            }

            if (waiting is not null)
            {
                await RecordAsync(connection, transaction, actor, now, code, "service_item", $"{code}/{change.ServiceItem}", action.ToString().ToLowerInvariant(), waitingBefore,
                    await ServiceItemJsonAsync(connection, transaction, code, waiting.ApplicationId));
            }

            await BumpEpochAsync(connection, transaction, code);
            await RecordAsync(connection, transaction, actor, now, code, "service_item", $"{code}/{change.ServiceItem}", action.ToString().ToLowerInvariant(), before,
                await ServiceItemJsonAsync(connection, transaction, code, item.ApplicationId));
            return (await ReadServiceItemsAsync(connection, transaction, code, now)).First(i => i.Item == change.ServiceItem && i.ApplicationId == item.ApplicationId).ToRecord(now);
        }, cancellationToken);
    }

    /// <summary>
    /// False materials found: pending applications are rejected, admitted items revoked, and the
    /// organisation goes on the integrity-anomaly list (科研诚信异常名录) from today.
    /// </summary>
    public async Task<Organisation> RecordFalseMaterialsAsync(Actor actor, FalseMaterialsFinding finding, CancellationToken cancellationToken)
    {
        string code = CheckCreditCode(finding.CreditCode);
        string reasons = RequireReasons(finding.Reasons, "recording false materials needs what was found false");
        return await InTransactionAsync(async (connection, transaction) =>
        {
            await RequireOrganisationAsync(connection, transaction, code, lockRow: true);
            DateTimeOffset now = time.GetUtcNow();
            var pending = (await connection.QueryAsync<long>("""
                SELECT application_id FROM applications WHERE provider_id = @code AND state NOT IN ('admitted', 'rejected') FOR UPDATE
                """, new { code }, transaction)).ToList();
            foreach (long id in pending)
            {
                string before = (await ApplicationJsonAsync(connection, transaction, code, id))!;
                await connection.ExecuteAsync("UPDATE applications SET state = 'rejected' WHERE provider_id = @code AND application_id = @id", new { code, id }, transaction);
                await DismissOvertakenAsync(connection, transaction, actor, code, id, "false materials: " + reasons, now);
                await AddStageAsync(connection, transaction, code, id, "false_materials", actor, now, "rejected", reasons);
                await RecordAsync(connection, transaction, actor, now, code, "application", Key(id), "false_materials", before, await ApplicationJsonAsync(connection, transaction, code, id));
            }

            foreach (ServiceItemRow item in await ReadServiceItemsAsync(connection, transaction, code, now))
            {
                if (item.Status(now) is ServiceItemStatus.Active or ServiceItemStatus.Suspended)
                {
                    string before = (await ServiceItemJsonAsync(connection, transaction, code, item.ApplicationId))!;
                    await connection.ExecuteAsync("""
                        UPDATE service_items SET ended_at = @now, end_kind = 'revoked', end_reason = @reason WHERE provider_id = @code AND application_id = @id;
                        UPDATE service_item_suspensions SET reinstated_at = @now WHERE provider_id = @code AND application_id = @id AND reinstated_at IS NULL;
                        """, new { now = now.UtcDateTime, reason = "false materials: " + reasons, code, id = item.ApplicationId }, transaction);
                    await RecordAsync(connection, transaction, actor, now, code, "service_item", $"{code}/{item.Item}", "revoke", before,
                        await ServiceItemJsonAsync(connection, transaction, code, item.ApplicationId));
                }
            }

            long listing = await connection.ExecuteScalarAsync<long>("""
                INSERT INTO integrity_listings (provider_id, list_name, listed_from, reason) VALUES (@code, 'integrity_anomaly', @today, @reason) RETURNING listing_id
                """, new { code, today = ShanghaiTime.DateOf(now), reason = "false materials: " + reasons }, transaction);
            await RecordAsync(connection, transaction, actor, now, code, "listing", $"{code}/{listing}", "false_materials", null,
                await RowJsonAsync(connection, transaction, "integrity_listings", "provider_id = @code AND listing_id = @listing", new { code, listing }));
            await BumpEpochAsync(connection, transaction, code);
            return (await ReadOrganisationAsync(connection, transaction, code, now))!;
        }, cancellationToken);
    }

    /// <summary>Rejects a renewal of the item still in progress, since the admission it would continue has just ended early.</summary>
    private static async Task RejectRenewalsInProgressAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, Actor actor, string code, string item, string endKind, DateTimeOffset now)
    {
        var pending = await connection.QueryAsync<long>("""
            SELECT application_id FROM applications
            WHERE provider_id = @code AND service_item = @item AND renews_application_id IS NOT NULL AND state NOT IN ('admitted', 'rejected') FOR UPDATE
            """, new { code, item }, transaction);
        foreach (long id in pending)
        {
            string before = (await ApplicationJsonAsync(connection, transaction, code, id))!;
            await connection.ExecuteAsync("UPDATE applications SET state = 'rejected' WHERE provider_id = @code AND application_id = @id", new { code, id }, transaction);
            await DismissOvertakenAsync(connection, transaction, actor, code, id, $"the admission this application renews was {endKind}", now);
            await AddStageAsync(connection, transaction, code, id, "exit", actor, now, "rejected", $"the admission this application renews was {endKind}; a renewal does not revive it");
            await RecordAsync(connection, transaction, actor, now, code, "application", Key(id), "exit", before, await ApplicationJsonAsync(connection, transaction, code, id));
        }
    }

    private static string Past(ServiceItemAction action) => action switch
    {
        ServiceItemAction.Suspend => "suspended",
        ServiceItemAction.Reinstate => "reinstated",
        ServiceItemAction.Withdraw => "withdrawn",
        _ => "revoked",
    };
}
