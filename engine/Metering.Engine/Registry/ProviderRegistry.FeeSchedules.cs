using System.Text.Json;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Catalog;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Registry;

/// <summary>Fee schedules an admitted provider files for its service items; the lines are stored as JSON beside the schedule.</summary>
public sealed partial class ProviderRegistry
{
    public async Task<FeeSchedule> FileFeeScheduleAsync(Actor actor, FeeScheduleFiling filing, CancellationToken cancellationToken)
    {
        string code = CheckCreditCode(filing.CreditCode);
        if (actor.Role != Role.Provider || actor.Subject != code)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.OtherProvider, $"{code}'s fee schedule is filed by {code} itself");
        }

        Names.CheckServiceItem(filing.ServiceItem);
        FilingRules.CheckFees(filing.Lines, catalog);
        CheckInstant("effective_from_unix_ms", filing.EffectiveFromUnixMs, allowZero: true);
        return await InTransactionAsync(async (connection, transaction) =>
        {
            await LockOrganisationAsync(connection, transaction, code);
            DateTimeOffset now = time.GetUtcNow();
            // Prices change from a day not yet begun, so that no day that may have been settled
            // is ever priced again.
            DateTimeOffset tomorrow = ShanghaiTime.StartOf(ShanghaiTime.DateOf(now).AddDays(1));
            DateTimeOffset effective = filing.EffectiveFromUnixMs == 0 ? tomorrow : DateTimeOffset.FromUnixTimeMilliseconds(filing.EffectiveFromUnixMs);
            if (effective < tomorrow)
            {
                throw new RegistryRefusedException(RegistryRefusalReason.FeeScheduleInvalid,
                    $"a new fee schedule takes effect from the start of a day that has not begun: {tomorrow.ToOffset(ShanghaiTime.Offset):yyyy-MM-dd HH:mm} Asia/Shanghai or later");
            }
            ServiceItemRow item = await CurrentItemAsync(connection, transaction, code, filing.ServiceItem, now)
                ?? throw new RegistryRefusedException(RegistryRefusalReason.ServiceItemUnknown, $"{code} holds no admitted service item '{filing.ServiceItem}'");
            if (item.Status(now) is ServiceItemStatus.Withdrawn or ServiceItemStatus.Revoked or ServiceItemStatus.Expired)
            {
                throw new RegistryRefusedException(RegistryRefusalReason.StatusChangeInvalid, $"service item '{filing.ServiceItem}' is {item.Status(now)}; its fees can no longer change");
            }

            var latest = await connection.QuerySingleAsync<(int Version, DateTime EffectiveFrom)>("""
                SELECT version, effective_from FROM fee_schedules WHERE provider_id = @code AND service_item = @item ORDER BY version DESC LIMIT 1
                """, new { code, item = filing.ServiceItem }, transaction);
            if (effective.UtcDateTime < latest.EffectiveFrom)
            {
                throw new RegistryRefusedException(RegistryRefusalReason.FeeScheduleInvalid,
                    $"a new fee schedule takes effect no earlier than version {latest.Version} ({latest.EffectiveFrom:O})");
            }

            int version = latest.Version + 1;
            await connection.ExecuteAsync("""
                INSERT INTO fee_schedules (provider_id, service_item, version, effective_from, filed_at, lines) VALUES (@code, @item, @version, @effective, @now, @lines::jsonb)
                """, new { code, item = filing.ServiceItem, version, effective = effective.UtcDateTime, now = now.UtcDateTime, lines = FeesJson(filing.Lines) }, transaction);
            await RecordAsync(connection, transaction, actor, now, code, "fee_schedule", $"{code}/{filing.ServiceItem}/{version}", "file", null,
                await RowJsonAsync(connection, transaction, "fee_schedules", "provider_id = @code AND service_item = @item AND version = @version", new { code, item = filing.ServiceItem, version }));
            return new FeeSchedule
            {
                CreditCode = code,
                ServiceItem = filing.ServiceItem,
                Version = (uint)version,
                EffectiveFromUnixMs = effective.ToUnixTimeMilliseconds(),
                Lines = filing.Lines,
            };
        }, cancellationToken);
    }

    private sealed record FeeLineJson(string DeviceModel, string Unit, long PriceFen);

    internal static string FeesJson(IEnumerable<FeeLine> lines) =>
        Serialize(lines.Select(l => new FeeLineJson(l.DeviceModel, Names.Of(l.Unit), l.PriceFen)).ToList());

    public static IEnumerable<FeeLine> ParseFees(string json) =>
        (JsonSerializer.Deserialize<List<FeeLineJson>>(json, Json) ?? []).Select(l => new FeeLine(l.DeviceModel, Names.FeeUnitOf(l.Unit), l.PriceFen));
}
