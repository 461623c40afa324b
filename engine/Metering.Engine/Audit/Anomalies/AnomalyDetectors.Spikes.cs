using System.Globalization;
using Dapper;
using Metering.Engine.Ingest;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Audit;

public sealed partial class AnomalyDetectors
{
    /// <summary>
    /// Rule: for each Asia/Shanghai day D of the period, the baseline is the lower median of the
    /// provider's daily usage (nPFh) over the SpikeBaselineDays days before D, counting only days
    /// with usage; with fewer than SpikeBaselineDaysMin such days, D is not judged. D is a spike
    /// when usage(D) &gt; SpikeFactor × baseline and usage(D) − baseline ≥ the margin. Integers
    /// throughout. The evidence is the day's largest records.
    /// </summary>
    private async Task<IEnumerable<Anomaly>> SpikesAsync(string providerId, DateTimeOffset from, DateTimeOffset until, CancellationToken cancellationToken)
    {
        DateOnly firstDay = ShanghaiTime.DateOf(from);
        DateOnly lastDay = ShanghaiTime.DateOf(until.AddMilliseconds(-1));
        DateTimeOffset historyFrom = ShanghaiTime.StartOf(firstDay.AddDays(-_settings.SpikeBaselineDays));
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var daily = (await connection.QueryAsync<(string Day, decimal Usage)>(new CommandDefinition("""
            SELECT to_char((start_at AT TIME ZONE 'UTC') + interval '8 hours', 'YYYY-MM-DD'), sum(usage_npfh)
            FROM usage_records WHERE provider_id = @providerId AND start_at >= @historyFrom AND start_at < @until AND stream_id NOT LIKE 'proof:%'
            GROUP BY 1
            """, new { providerId, historyFrom = historyFrom.UtcDateTime, until = ShanghaiTime.StartOf(lastDay.AddDays(1)).UtcDateTime }, cancellationToken: cancellationToken)))
            .ToDictionary(r => DateOnly.ParseExact(r.Day, "yyyy-MM-dd", CultureInfo.InvariantCulture), r => checked((long)r.Usage));

        var anomalies = new List<Anomaly>();
        for (DateOnly day = firstDay; day <= lastDay; day = day.AddDays(1))
        {
            List<long> history = Enumerable.Range(1, _settings.SpikeBaselineDays).Select(back => daily.GetValueOrDefault(day.AddDays(-back))).Where(u => u > 0).Order().ToList();
            long usage = daily.GetValueOrDefault(day);
            if (history.Count < _settings.SpikeBaselineDaysMin)
            {
                continue;
            }

            long baseline = history[(history.Count - 1) / 2];
            if ((Int128)usage > (Int128)_settings.SpikeFactor * baseline && usage - baseline >= _settings.SpikeMarginNanoPflopsHours)
            {
                DateTimeOffset start = ShanghaiTime.StartOf(day);
                var top = (await connection.QueryAsync<(string Stream, long Sequence)>(new CommandDefinition("""
                    SELECT stream_id, sequence FROM usage_records
                    WHERE provider_id = @providerId AND start_at >= @start AND start_at < @end AND stream_id NOT LIKE 'proof:%'
                    ORDER BY usage_npfh DESC, stream_id, sequence LIMIT @limit
                    """, new { providerId, start = start.UtcDateTime, end = start.AddDays(1).UtcDateTime, limit = _settings.EvidenceRowsMax }, cancellationToken: cancellationToken))).ToList();
                var evidence = new List<EvidenceRow>();
                foreach (var (stream, sequence) in top)
                {
                    evidence.AddRange(await EvidenceAsync(connection, providerId, stream, (ulong)sequence, cancellationToken));
                }

                long ratioPercent = baseline == 0 ? 0 : (long)((Int128)usage * 100 / baseline);
                anomalies.Add(new Anomaly(AnomalyKind.UsageSpike, providerId, null, start.ToUnixTimeMilliseconds(), start.AddDays(1).ToUnixTimeMilliseconds(),
                    $"{day:yyyy-MM-dd}: {Units.Fixed(usage, 9)} PFLOPS·h, {ratioPercent / 100}.{ratioPercent % 100:00}× the median of the {history.Count} previous days with usage ({Units.Fixed(baseline, 9)} PFLOPS·h)",
                    evidence, evidence.Count,
                    [new("day", day.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture)), new("usage_npfh", usage.ToString(CultureInfo.InvariantCulture)),
                     new("baseline_npfh", baseline.ToString(CultureInfo.InvariantCulture)), new("baseline_days", history.Count.ToString(CultureInfo.InvariantCulture)),
                     new("factor", _settings.SpikeFactor.ToString(CultureInfo.InvariantCulture))]));
            }
        }

        return anomalies;
    }
}
