using System.Globalization;

namespace Metering.Engine.Audit;

public sealed partial class AnomalyDetectors
{
    /// <summary>
    /// Rule: a record is idle when it reports a mean SM activity (sm_active_bp) below
    /// IdleSmActiveBelowBp. The records of one stream, job and device model are taken in start
    /// order; idle records that follow one another without a gap (each starting at or before the
    /// end of the stretch so far) form a stretch, and any other record of the job (one above the
    /// threshold, or one that reports no activity) ends it. A stretch at least IdleDurationMin
    /// long that ends after the period starts is one anomaly, with its records as evidence. A
    /// record without the figure never counts as idle: absent is not zero. Integers throughout;
    /// the mean is weighted by device count and duration and rounded down.
    /// </summary>
    private IEnumerable<Anomaly> AllocatedIdle(string providerId, List<Usage> records, long fromMs)
    {
        long durationMinMs = (long)_settings.IdleDurationMin.TotalMilliseconds;
        var anomalies = new List<Anomaly>();
        var stretch = new List<Usage>();
        long stretchFromMs = 0, stretchUntilMs = 0;

        void Close()
        {
            if (stretch.Count > 0 && stretchUntilMs - stretchFromMs >= durationMinMs && stretchUntilMs > fromMs)
            {
                anomalies.Add(Idle(providerId, stretch, stretchFromMs, stretchUntilMs));
            }

            stretch = [];
        }

        // Records carrying no figure cannot start or extend a stretch, and a job none of whose
        // records carries one is skipped whole.
        foreach (var job in records.GroupBy(r => (r.StreamId, r.JobId, r.DeviceModel)).Where(g => g.Any(r => r.SmActiveBp.HasValue)))
        {
            foreach (Usage record in job.OrderBy(r => r.StartMs).ThenBy(r => r.Sequence))
            {
                bool idle = record.SmActiveBp is uint bp && bp < _settings.IdleSmActiveBelowBp;
                if (!idle)
                {
                    Close();
                }
                else if (stretch.Count > 0 && record.StartMs <= stretchUntilMs)
                {
                    stretch.Add(record);
                    stretchUntilMs = Math.Max(stretchUntilMs, record.EndMs);
                }
                else
                {
                    Close();
                    stretch.Add(record);
                    (stretchFromMs, stretchUntilMs) = (record.StartMs, record.EndMs);
                }
            }

            Close();
        }

        return anomalies.OrderBy(a => a.FromUnixMs).ThenBy(a => a.StreamId, StringComparer.Ordinal);
    }

    private Anomaly Idle(string providerId, List<Usage> stretch, long fromMs, long untilMs)
    {
        Int128 weighted = 0, weight = 0;
        uint devices = 0;
        foreach (Usage record in stretch)
        {
            Int128 deviceMs = (Int128)record.DeviceCount * (record.EndMs - record.StartMs);
            weighted += deviceMs * record.SmActiveBp!.Value;
            weight += deviceMs;
            devices = Math.Max(devices, record.DeviceCount);
        }

        long meanBp = weight == 0 ? 0 : (long)(weighted / weight);
        long idleMinutes = (untilMs - fromMs) / 60_000;
        Usage first = stretch[0];
        return new Anomaly(AnomalyKind.AllocatedIdle, providerId, first.StreamId, fromMs, untilMs,
            $"job {first.JobId} held {devices} {first.DeviceModel} devices for {idleMinutes} minutes at a mean SM activity of {Percent(meanBp)}, below the idle threshold of {Percent(_settings.IdleSmActiveBelowBp)}",
            stretch.Take(_settings.EvidenceRowsMax).Select(r => r.Evidence()).ToList(), stretch.Count,
            [new("job_id", first.JobId), new("device_model", first.DeviceModel), new("devices", devices.ToString(CultureInfo.InvariantCulture)),
             new("idle_minutes", idleMinutes.ToString(CultureInfo.InvariantCulture)), new("sm_active_mean_bp", meanBp.ToString(CultureInfo.InvariantCulture)),
             new("threshold_bp", _settings.IdleSmActiveBelowBp.ToString(CultureInfo.InvariantCulture)),
             new("idle_minutes_min", ((long)_settings.IdleDurationMin.TotalMinutes).ToString(CultureInfo.InvariantCulture))]);
    }

    /// <summary>Basis points as a percentage with two decimals, from integers: 437 is "4.37 %".</summary>
    private static string Percent(long basisPoints) => string.Create(CultureInfo.InvariantCulture, $"{basisPoints / 100}.{basisPoints % 100:00} %");
}
