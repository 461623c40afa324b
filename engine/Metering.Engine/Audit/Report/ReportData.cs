using Dapper;
using Metering.Engine.Capacity;
using Metering.Engine.Ingest;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Audit;

/// <summary>
/// Everything one audit report draws, read from the database before any HTML is written: the
/// usage summaries, the fleet and its stretches, the anomalies, every chain, the daily roots,
/// and the names people read beside the codes.
/// </summary>
internal sealed record ReportData(
    string Name, Dictionary<string, string> HolderNames, UsageSummary ByDay, UsageSummary ByModel, UsageSummary ByHolder,
    FleetSnapshot Fleet, IReadOnlyList<FleetStretch> Stretches, IReadOnlyList<Anomaly> Anomalies, IReadOnlyList<ChainVerification> Chains, List<DailyRoot> Roots)
{
    /// <summary>Loads the report's data for the provider over [fromDay, toDay], whole Asia/Shanghai days; names only the first <paramref name="holdersShown"/> holders.</summary>
    public static async Task<ReportData> LoadAsync(
        NpgsqlDataSource dataSource, TimeProvider time, DetectorSettings? settings, string providerId, DateOnly fromDay, DateOnly toDay, int holdersShown, CancellationToken cancellationToken)
    {
        DateTimeOffset from = ShanghaiTime.StartOf(fromDay);
        DateTimeOffset until = ShanghaiTime.StartOf(toDay.AddDays(1));
        var filter = new UsageFilter { ProviderId = providerId, From = from, Until = until };
        var queries = new UsageQueries(dataSource);
        UsageSummary byDay = await queries.SummariseAsync(filter, UsageGrouping.Day, 0, cancellationToken);
        UsageSummary byModel = await queries.SummariseAsync(filter, UsageGrouping.DeviceModel, 0, cancellationToken);
        UsageSummary byHolder = await queries.SummariseAsync(filter, UsageGrouping.Holder, 0, cancellationToken);
        FleetSnapshot fleet = await AnomalyDetectors.LoadFleetAsync(dataSource, providerId, from.ToUnixTimeMilliseconds(), until.ToUnixTimeMilliseconds(), cancellationToken);
        IReadOnlyList<FleetStretch> stretches = fleet.History.Stretches(from.ToUnixTimeMilliseconds(), until.ToUnixTimeMilliseconds());
        IReadOnlyList<Anomaly> anomalies = await new AnomalyDetectors(dataSource, time, settings).DetectAsync(providerId, from, until, cancellationToken);
        IReadOnlyList<ChainVerification> chains = await new ChainVerifier(dataSource).VerifyProviderAsync(providerId, VerificationRange.Whole, cancellationToken);
        var merkle = new DailyMerkle(dataSource);
        var roots = new List<DailyRoot>();
        for (DateOnly day = fromDay; day <= toDay; day = day.AddDays(1))
        {
            roots.Add(await merkle.RootAsync(providerId, day, MerkleCutOff.None, cancellationToken));
        }

        string name;
        Dictionary<string, string> holderNames;
        await using (NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken))
        {
            name = await connection.ExecuteScalarAsync<string?>(new CommandDefinition("SELECT name FROM organisations WHERE provider_id = @providerId", new { providerId }, cancellationToken: cancellationToken))
                ?? "（登记簿中无此机构）";
            // People read names; the credit code stays beside each one, as the key the data uses.
            string[] codes = [.. byHolder.Groups.Take(holdersShown).Select(g => g.Key)];
            holderNames = (await connection.QueryAsync<(string Code, string Name)>(new CommandDefinition(
                "SELECT holder_code, name FROM voucher_holders WHERE holder_code = ANY(@codes)", new { codes }, cancellationToken: cancellationToken)))
                .ToDictionary(h => h.Code, h => h.Name, StringComparer.Ordinal);
        }

        return new ReportData(name, holderNames, byDay, byModel, byHolder, fleet, stretches, anomalies, chains, roots);
    }
}
