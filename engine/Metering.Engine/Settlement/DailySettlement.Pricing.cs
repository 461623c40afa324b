using System.Data;
using System.Globalization;
using Dapper;
using Metering.Engine.Audit;
using Metering.Engine.Ledger;
using Metering.Engine.Registry;
using Metering.Engine.Transparency;
using Metering.Engine.Vouchers;
using Npgsql;

namespace Metering.Engine.Settlement;

// Stage 4 of a run: each group priced under the contract that covers it, rounded down once per line.
public sealed partial class DailySettlement
{
    private static async Task<List<PricedLine>> PriceAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, List<Group> groups, CancellationToken cancellationToken)
    {
        if (groups.Count == 0)
        {
            return [];
        }

        DateOnly first = groups.Min(g => g.UsageDay);
        DateOnly last = groups.Max(g => g.UsageDay);
        var contracts = (await connection.QueryAsync<(long Id, string Provider, string Holder, DateTime Starts, DateTime Ends, string Item, int Version, string Unit)>(new CommandDefinition("""
            SELECT contract_id, provider_id, holder_code, starts_on, ends_on, service_item, fee_schedule_version, fee_unit FROM contracts
            WHERE starts_on <= @last AND ends_on >= @first
            """, new { first, last }, transaction, cancellationToken: cancellationToken)))
            .Select(c => new ContractTerms(c.Id, c.Provider, c.Holder, DateOnly.FromDateTime(c.Starts), DateOnly.FromDateTime(c.Ends), c.Item, c.Version, c.Unit))
            .ToLookup(c => (c.Provider, c.Holder));
        // Every fee schedule a contract prices by, in one round trip instead of one per schedule:
        // the contracted providers' schedules, of which the run keeps the versions its contracts
        // name. A plain filter on the provider, which Citus sends to the providers' shards as it is.
        var wanted = contracts.SelectMany(c => c).Select(c => (c.Provider, c.ServiceItem, c.Version)).ToHashSet();
        string[] contracted = [.. wanted.Select(k => k.Provider).Distinct(StringComparer.Ordinal)];
        var schedules = await connection.QueryAsync<(string Provider, string Item, int Version, string Lines)>(new CommandDefinition(
            "SELECT provider_id, service_item, version, lines::text FROM fee_schedules WHERE provider_id = ANY(@contracted)",
            new { contracted }, transaction, cancellationToken: cancellationToken));
        var filed = schedules.Where(f => wanted.Contains((f.Provider, f.Item, f.Version))).ToDictionary(f => (f.Provider, f.Item, f.Version), f => f.Lines);
        var prices = new Dictionary<(string Provider, string Item, int Version), Dictionary<(string Model, string Unit), long>>();
        foreach (var key in wanted)
        {
            // A contract whose schedule is not filed prices nothing, as an empty schedule would.
            string json = filed.GetValueOrDefault(key) ?? "[]";
            prices[key] = ProviderRegistry.ParseFees(json).ToDictionary(l => (l.DeviceModel, Names.Of(l.Unit)), l => l.PriceFen);
        }

        var lines = new List<PricedLine>(groups.Count);
        foreach (Group group in groups)
        {
            // Contracts of one holder with one provider never overlap, so at most one covers a day.
            ContractTerms? contract = contracts[(group.Provider, group.Holder)].FirstOrDefault(c => c.StartsOn <= group.UsageDay && group.UsageDay <= c.EndsOn);
            if (contract is null)
            {
                lines.Add(new PricedLine(group, null, "", null, 0, "no_contract"));
            }
            else if (!prices[(contract.Provider, contract.ServiceItem, contract.Version)].TryGetValue((group.Model, contract.FeeUnit), out long price))
            {
                lines.Add(new PricedLine(group, contract.ContractId, contract.FeeUnit, null, 0, "no_filed_price"));
            }
            else
            {
                long fee = Pricing.FeeFen(Names.FeeUnitOf(contract.FeeUnit), group.UsageNpfh, group.CardMs, price);
                lines.Add(new PricedLine(group, contract.ContractId, contract.FeeUnit, price, fee, null));
            }
        }

        return lines;
    }
}
