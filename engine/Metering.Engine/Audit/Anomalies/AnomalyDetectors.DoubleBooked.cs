using System.Globalization;

namespace Metering.Engine.Audit;

public sealed partial class AnomalyDetectors
{
    /// <summary>
    /// Rule: a device UUID is one physical device. Wherever the records that list the same UUID
    /// and run at the same instant have shares adding up to more than one whole device (two
    /// whole-device records, or MIG slices and time-slices beyond the device), one anomaly is
    /// raised per run of such time, with the overlapping records as evidence. Records double
    /// booked on several UUIDs at once are reported once, naming every UUID.
    /// </summary>
    private IEnumerable<Anomaly> DoubleBooked(string providerId, List<Usage> records, long fromMs, long untilMs)
    {
        var byUuid = new Dictionary<string, List<Usage>>(StringComparer.Ordinal);
        foreach (Usage record in records)
        {
            foreach (string uuid in record.DeviceUuids)
            {
                if (!byUuid.TryGetValue(uuid, out List<Usage>? list))
                {
                    byUuid[uuid] = list = [];
                }

                list.Add(record);
            }
        }

        // Overlaps found through several UUIDs of the same records are one anomaly.
        var found = new Dictionary<string, (Overload Overload, List<string> Uuids)>(StringComparer.Ordinal);
        foreach (var (uuid, list) in byUuid.OrderBy(p => p.Key, StringComparer.Ordinal))
        {
            if (list.Count < 2)
            {
                continue;
            }

            foreach (Overload overload in Overloads(list.Select(r => new Span(r, r.StartMs, r.EndMs)).ToList(), _ => 1, 1))
            {
                if (overload.UntilMs <= fromMs || overload.FromMs >= untilMs)
                {
                    continue;
                }

                string key = string.Join('|', overload.Peak.Select(r => $"{r.StreamId}#{r.Sequence}").Order(StringComparer.Ordinal));
                if (found.TryGetValue(key, out var existing))
                {
                    existing.Uuids.Add(uuid);
                }
                else
                {
                    found[key] = (overload, [uuid]);
                }
            }
        }

        foreach (var (overload, uuids) in found.Values.OrderBy(f => f.Overload.FromMs))
        {
            yield return new Anomaly(AnomalyKind.DeviceDoubleBooked, providerId, overload.Peak[0].StreamId, overload.FromMs, overload.UntilMs,
                $"device {string.Join(", ", uuids)} is in {overload.Peak.Count} overlapping records whose shares add up to {Shares(overload.PeakUnits, overload.UnitsPerDevice)} devices",
                overload.Peak.Take(_settings.EvidenceRowsMax).Select(r => r.Evidence()).ToList(), overload.Peak.Count,
                [new("device_uuids", string.Join(", ", uuids)), new("peak_devices", Shares(overload.PeakUnits, overload.UnitsPerDevice)), new("peak_at", Time(overload.PeakAtMs))]);
        }
    }
}
