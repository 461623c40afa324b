using System.Globalization;
using Metering.Engine.Capacity;

namespace Metering.Engine.Audit;

public sealed partial class AnomalyDetectors
{
    /// <summary>
    /// Rule: for each device model, the devices in use at an instant are the sum over the
    /// provider's records of that model running then, at every site, of devices × share (a
    /// record runs over [start, end)). The sum is kept exactly, in units of 1/L of a device where
    /// L is the least common multiple of the share denominators present. Each instant is judged
    /// against the provider's validated fleet of the model in the fleet validation in force at
    /// that instant (<see cref="FleetHistory"/>: the latest completed validation, until it
    /// expires; the same definition ingest uses, read for the past instant rather than for the
    /// commit). Time is cut where the validation in force changes, so a record that spans a
    /// change is judged against each validation for its part.
    ///
    /// Where the sum exceeds the validated devices, one CapacityExceeded anomaly is raised per run
    /// of time above them; its evidence is the records running at the peak. Usage at exactly the
    /// validated figure is not an anomaly.
    ///
    /// Where no validation is in force, or the one in force holds none of the model (a model the
    /// probe cannot reach, such as Ascend 910B beside validated NVIDIA nodes), the next source
    /// ingest takes bounds it: the devices the commissioned verifier confirmed for the model in the
    /// latest verification of an admitted application (as the registry stands now). Usage above
    /// them is a CapacityExceeded anomaly whose facts name that source (capacity_source) and the
    /// validation in force, if any.
    ///
    /// Where the verifier confirmed none of the model either, no measured figure bounds the
    /// usage, and judging it against 0 would flag every record. Instead, for each such
    /// model in use, one CapacityUnvalidated anomaly is raised per stretch, spanning the usage in
    /// it, with its peak and the records at the peak; it names the devices the admitted
    /// applications declare (what ingest judged such usage against, as the registry stands now),
    /// the latest validation completed at or before the stretch, if any, and the validation in
    /// force that does not hold the model, if any.
    /// </summary>
    private (Counted Exceeded, Counted Unvalidated) Capacity(string providerId, List<Usage> records, long fromMs, long untilMs, FleetSnapshot fleet)
    {
        var exceeded = new List<Anomaly>();
        var unvalidated = new List<Anomaly>();
        long exceededFound = 0, unvalidatedFound = 0;
        if (records.Count == 0)
        {
            return (new Counted(exceeded), new Counted(unvalidated));
        }

        IReadOnlyList<FleetStretch> stretches = fleet.History.Stretches(Math.Min(fromMs, records.Min(r => r.StartMs)), Math.Max(untilMs, records.Max(r => r.EndMs)));
        foreach (var group in records.GroupBy(r => r.DeviceModel).OrderBy(g => g.Key, StringComparer.Ordinal))
        {
            string model = group.Key;
            foreach (FleetStretch stretch in stretches)
            {
                // A validation bounds only the models its inventory holds; another model in use
                // under it (an Ascend line beside validated NVIDIA nodes) has no validated figure,
                // as ingest judges it, and is reported apart rather than against 0.
                if (stretch.Fleet is { } validation && validation.Devices.ContainsKey(model))
                {
                    long devices = validation.DevicesOf(model);
                    foreach (Overload overload in Overloads(Clip(group, stretch.FromUnixMs, stretch.UntilUnixMs), r => r.DeviceCount, devices))
                    {
                        // Kept to the per-kind cap here, since the lists are built whole; counted past it.
                        if (overload.UntilMs > fromMs && overload.FromMs < untilMs && ++exceededFound <= _settings.AnomaliesPerKindMax)
                        {
                            exceeded.Add(Exceeded(providerId, model, validation, devices, overload));
                        }
                    }
                }
                else if (fleet.ConfirmedOf(model) is { } confirmed)
                {
                    foreach (Overload overload in Overloads(Clip(group, stretch.FromUnixMs, stretch.UntilUnixMs), r => r.DeviceCount, confirmed.Devices))
                    {
                        if (overload.UntilMs > fromMs && overload.FromMs < untilMs && ++exceededFound <= _settings.AnomaliesPerKindMax)
                        {
                            exceeded.Add(ExceededConfirmed(providerId, model, confirmed.Devices, confirmed.Source, stretch.Fleet, overload));
                        }
                    }
                }
                else
                {
                    List<Span> spans = Clip(group, Math.Max(stretch.FromUnixMs, fromMs), Math.Min(stretch.UntilUnixMs, untilMs));
                    if (spans.Count > 0 && ++unvalidatedFound <= _settings.AnomaliesPerKindMax)
                    {
                        long usedFromMs = spans.Min(r => r.StartMs);
                        long usedUntilMs = spans.Max(r => r.EndMs);
                        Overload peak = Overloads(spans, r => r.DeviceCount, 0).MaxBy(o => o.PeakUnits)!;
                        ValidatedFleet? before = fleet.History.Validations.LastOrDefault(v => v.CompletedUnixMs <= stretch.FromUnixMs);
                        unvalidated.Add(Unvalidated(providerId, model, usedFromMs, usedUntilMs, peak, fleet.DeclaredOf(model), before, stretch.Fleet));
                    }
                }
            }
        }

        return (new Counted(exceeded, exceededFound), new Counted(unvalidated, unvalidatedFound));
    }

    private Anomaly Exceeded(string providerId, string model, ValidatedFleet validation, long devices, Overload overload)
    {
        string peak = Shares(overload.PeakUnits, overload.UnitsPerDevice);
        return new Anomaly(AnomalyKind.CapacityExceeded, providerId, null, overload.FromMs, overload.UntilMs,
            devices == 0
                ? $"{peak} {model} device(s) in use, where {validation.Name} validated no {model}"
                : $"{peak} {model} devices in use at once, above the {devices} validated by {validation.Name}",
            overload.Peak.Take(_settings.EvidenceRowsMax).Select(r => r.Evidence()).ToList(), overload.Peak.Count,
            [new("device_model", model), new("peak_devices", peak), new("verified_devices", devices.ToString(CultureInfo.InvariantCulture)),
             new("peak_at", Time(overload.PeakAtMs)), new("sites", Sites(overload.Peak)),
             new("validation_id", validation.ValidationId.ToString(CultureInfo.InvariantCulture)), new("capacity_source", Describe(validation))]);
    }

    /// <summary>Usage above the devices the commissioned verifier confirmed, where no validation in force covers the model.</summary>
    private Anomaly ExceededConfirmed(string providerId, string model, long devices, string source, ValidatedFleet? inForce, Overload overload)
    {
        string peak = Shares(overload.PeakUnits, overload.UnitsPerDevice);
        return new Anomaly(AnomalyKind.CapacityExceeded, providerId, null, overload.FromMs, overload.UntilMs,
            $"{peak} {model} devices in use at once, above the {devices} confirmed by the commissioned verifier ({source})",
            overload.Peak.Take(_settings.EvidenceRowsMax).Select(r => r.Evidence()).ToList(), overload.Peak.Count,
            [new("device_model", model), new("peak_devices", peak), new("verified_devices", devices.ToString(CultureInfo.InvariantCulture)),
             new("peak_at", Time(overload.PeakAtMs)), new("sites", Sites(overload.Peak)),
             new("capacity_source", source), new("validation_in_force", inForce is null ? "none" : Describe(inForce))]);
    }

    private Anomaly Unvalidated(string providerId, string model, long fromMs, long untilMs, Overload peak, long declared, ValidatedFleet? before, ValidatedFleet? inForce)
    {
        string devices = Shares(peak.PeakUnits, peak.UnitsPerDevice);
        bool aboveDeclared = peak.PeakUnits > (Int128)declared * peak.UnitsPerDevice;
        return new Anomaly(AnomalyKind.CapacityUnvalidated, providerId, null, fromMs, untilMs,
            (inForce is null ? $"{model} in use with no fleet validation in force" : $"{model} in use while {inForce.Name}, in force, holds none")
            + $": at most {devices} device(s) at once, "
            + (aboveDeclared ? $"above the {declared} its admitted applications declare" : $"within the {declared} its admitted applications declare"),
            peak.Peak.Take(_settings.EvidenceRowsMax).Select(r => r.Evidence()).ToList(), peak.Peak.Count,
            [new("device_model", model), new("peak_devices", devices), new("peak_at", Time(peak.PeakAtMs)), new("sites", Sites(peak.Peak)),
             new("declared_devices", declared.ToString(CultureInfo.InvariantCulture)), new("above_declared", aboveDeclared ? "true" : "false"),
             new("capacity_source", FleetSnapshot.DeclaredSource),
             new("previous_validation", before is null ? "none" : Describe(before)), new("validation_in_force", inForce is null ? "none" : Describe(inForce))]);
    }

    /// <summary>Each record of the group that runs in [from, until), its time cut to that stretch.</summary>
    private static List<Span> Clip(IEnumerable<Usage> records, long fromMs, long untilMs) =>
        records.Where(r => r.StartMs < untilMs && r.EndMs > fromMs).Select(r => new Span(r, Math.Max(r.StartMs, fromMs), Math.Min(r.EndMs, untilMs))).ToList();

    private static string Sites(List<Usage> records) => string.Join(", ", records.Select(r => r.Site).Distinct().Order(StringComparer.Ordinal));

    private static string Describe(ValidatedFleet validation) =>
        $"{validation.Name} (inventory version {validation.InventoryVersion}), in force from {Time(validation.CompletedUnixMs)}, expiring {Time(validation.ExpiresUnixMs)}";
}
