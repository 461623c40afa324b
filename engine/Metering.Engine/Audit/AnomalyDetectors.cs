using System.Globalization;
using Dapper;
using Metering.Engine.Capacity;
using Metering.Engine.Ingest;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Audit;

/// <summary>The kinds of anomaly the detectors raise.</summary>
public enum AnomalyKind
{
    /// <summary>More devices of a model in use at once than the provider's validated fleet of that model, in the fleet validation in force then.</summary>
    CapacityExceeded,

    /// <summary>One device UUID in overlapping records whose shares add up to more than the whole device.</summary>
    DeviceDoubleBooked,

    /// <summary>Usage outside the provider's admission validity, or while its service item was suspended.</summary>
    OutsideAdmission,

    /// <summary>A replay of a committed record arrived with different content.</summary>
    TamperConflict,

    /// <summary>A stream's hash chain does not verify.</summary>
    ChainBroken,

    /// <summary>A stream went without records or heartbeats for longer than the silence threshold.</summary>
    SilentStream,

    /// <summary>A day's usage far above the provider's own recent days.</summary>
    UsageSpike,

    /// <summary>Devices of a model in use while no fleet validation of the provider was in force, so that no validated fleet bounds them.</summary>
    CapacityUnvalidated,
}

/// <summary>One usage record offered as evidence.</summary>
public sealed record EvidenceRow(
    string StreamId, ulong Sequence, string JobId, string HolderCode, string DeviceModel, uint DeviceCount, uint ShareNumerator, uint ShareDenominator,
    long StartUnixMs, long EndUnixMs, string Site, IReadOnlyList<string> DeviceUuids, long UsageNanoPflopsHours);

/// <summary>A named figure of an anomaly (peak devices, capacity, baseline, hashes...).</summary>
public readonly record struct Fact(string Name, string Value);

/// <summary>An anomaly with its evidence rows; <paramref name="EvidenceTotal"/> counts them all when only the first few are kept.</summary>
public sealed record Anomaly(
    AnomalyKind Kind, string ProviderId, string? StreamId, long FromUnixMs, long UntilUnixMs, string Summary,
    IReadOnlyList<EvidenceRow> Evidence, int EvidenceTotal, IReadOnlyList<Fact> Facts);

/// <summary>
/// How many anomalies of one kind a run found in all, and how many it kept: at most
/// <see cref="DetectorSettings.AnomaliesPerKindMax"/>, the first ones in the kind's order.
/// </summary>
public sealed record AnomalyKindCount(AnomalyKind Kind, long Found, int Kept)
{
    /// <summary>Whether the per-kind cap cut anomalies of this kind.</summary>
    public bool Truncated => Found > Kept;
}

/// <summary>
/// A detection run: the anomalies kept, grouped by kind in the order of <see cref="AnomalyKind"/>,
/// and one count per kind that ran, zero counts included, so that a cut list is never read as all.
/// </summary>
public sealed record AnomalyFindings(IReadOnlyList<Anomaly> Anomalies, IReadOnlyList<AnomalyKindCount> Kinds, int AnomaliesPerKindMax);

/// <summary>The thresholds of the detectors; every one named and bounded.</summary>
public sealed record DetectorSettings
{
    /// <summary>A stream silent for longer than this is an anomaly.</summary>
    public TimeSpan Silence { get; init; } = TimeSpan.FromHours(2);

    /// <summary>A day is a spike when its usage exceeds this many times the baseline...</summary>
    public int SpikeFactor { get; init; } = 3;

    /// <summary>...and exceeds the baseline by at least this much (10 PFLOPS·h by default), so that tiny days do not alarm.</summary>
    public long SpikeMarginNanoPflopsHours { get; init; } = 10 * UsageNormaliser.NanoPflopsHoursPerPflopsHour;

    /// <summary>The baseline looks back this many days before the day judged.</summary>
    public int SpikeBaselineDays { get; init; } = 28;

    /// <summary>Days with usage the baseline needs before any day is judged.</summary>
    public int SpikeBaselineDaysMin { get; init; } = 7;

    /// <summary>Evidence rows kept per anomaly.</summary>
    public int EvidenceRowsMax { get; init; } = 20;

    /// <summary>Anomalies kept per kind; past it the run's count of the kind says how many there were in all.</summary>
    public int AnomaliesPerKindMax { get; init; } = 500;

    /// <summary>Most records one detection run loads.</summary>
    public int RecordsMax { get; init; } = 5_000_000;

    /// <summary>
    /// Most runs of heartbeats (heartbeat minutes of a stream no more than the silence threshold
    /// apart) one detection run loads. The minutes themselves are folded into runs by the database.
    /// </summary>
    public int HeartbeatRunsMax { get; init; } = 1_000_000;

    public void Validate()
    {
        Require(Silence >= TimeSpan.FromMinutes(1) && Silence <= TimeSpan.FromDays(31), nameof(Silence), "between 1 minute and 31 days");
        Require(SpikeFactor is >= 2 and <= 1_000, nameof(SpikeFactor), "between 2 and 1000");
        Require(SpikeMarginNanoPflopsHours >= 0, nameof(SpikeMarginNanoPflopsHours), "0 or more");
        Require(SpikeBaselineDays is >= 1 and <= 366, nameof(SpikeBaselineDays), "between 1 and 366");
        Require(SpikeBaselineDaysMin >= 1 && SpikeBaselineDaysMin <= SpikeBaselineDays, nameof(SpikeBaselineDaysMin), "between 1 and SpikeBaselineDays");
        Require(EvidenceRowsMax is >= 1 and <= 1_000, nameof(EvidenceRowsMax), "between 1 and 1000");
        Require(AnomaliesPerKindMax is >= 1 and <= 100_000, nameof(AnomaliesPerKindMax), "between 1 and 100000");
        Require(RecordsMax is >= 1 and <= 50_000_000, nameof(RecordsMax), "between 1 and 50000000");
        Require(HeartbeatRunsMax is >= 1 and <= 50_000_000, nameof(HeartbeatRunsMax), "between 1 and 50000000");
    }

    private static void Require(bool condition, string name, string range)
    {
        if (!condition)
        {
            throw new ArgumentOutOfRangeException(name, $"Detector setting {name} must be {range}.");
        }
    }
}

/// <summary>
/// Runs every detector over one provider and period [from, until) and returns the anomalies,
/// each with its evidence. Proof streams are left out of every detector but the chain check:
/// they are demonstrations, not usage. Records are loaded once, with a look-back of the longest
/// record (24 h) so that overlaps with records that started before the period are seen.
/// All arithmetic is integer; the rules are documented on each detector.
/// </summary>
public sealed class AnomalyDetectors(NpgsqlDataSource dataSource, TimeProvider time, DetectorSettings? settings = null)
{
    /// <summary>Records that started this long before the period can still overlap it.</summary>
    public static readonly TimeSpan LookBack = TimeSpan.FromHours(24);

    private readonly DetectorSettings _settings = Validated(settings ?? new DetectorSettings());

    private static DetectorSettings Validated(DetectorSettings settings)
    {
        settings.Validate();
        return settings;
    }

    /// <summary>One loaded record; strings are shared between records.</summary>
    private sealed record Usage(
        string StreamId, ulong Sequence, string JobId, string HolderCode, string DeviceModel, uint DeviceCount, uint ShareNumerator, uint ShareDenominator,
        long StartMs, long EndMs, string Site, string[] DeviceUuids, long UsageNpfh)
    {
        public EvidenceRow Evidence() => new(StreamId, Sequence, JobId, HolderCode, DeviceModel, DeviceCount, ShareNumerator, ShareDenominator, StartMs, EndMs, Site, DeviceUuids, UsageNpfh);
    }

    /// <summary>Every detector over the provider and period; the anomalies kept, without the counts.</summary>
    public async Task<IReadOnlyList<Anomaly>> DetectAsync(string providerId, DateTimeOffset from, DateTimeOffset until, CancellationToken cancellationToken) =>
        (await FindAsync(providerId, from, until, null, cancellationToken)).Anomalies;

    /// <summary>
    /// The detectors of <paramref name="kinds"/> (every kind when null or empty) over the provider
    /// and period, with how many anomalies each kind found in all. A detector whose kind was not
    /// asked for does not run, and the records and fleet are loaded only when one that reads them does.
    /// </summary>
    public async Task<AnomalyFindings> FindAsync(string providerId, DateTimeOffset from, DateTimeOffset until, IReadOnlySet<AnomalyKind>? kinds, CancellationToken cancellationToken)
    {
        if (until <= from || until - from > UsageFilter.PeriodMax)
        {
            throw new ArgumentException($"The period must end after it starts and span at most {UsageFilter.PeriodMax.TotalDays:0} days.");
        }

        bool Wants(AnomalyKind kind) => kinds is null || kinds.Count == 0 || kinds.Contains(kind);
        bool capacity = Wants(AnomalyKind.CapacityExceeded) || Wants(AnomalyKind.CapacityUnvalidated);
        long fromMs = from.ToUnixTimeMilliseconds();
        long untilMs = until.ToUnixTimeMilliseconds();
        long lookBackMs = (long)LookBack.TotalMilliseconds;
        List<Usage> records = capacity || Wants(AnomalyKind.DeviceDoubleBooked) || Wants(AnomalyKind.OutsideAdmission) || Wants(AnomalyKind.SilentStream)
            ? await LoadAsync(providerId, fromMs - lookBackMs, untilMs, cancellationToken)
            : [];
        Counted? exceeded = null, unvalidated = null;
        if (capacity)
        {
            // Records started at most a look-back before the period and last at most as long, so
            // every instant they cover lies in [from − look-back, until + look-back).
            FleetSnapshot fleet = await LoadFleetAsync(dataSource, providerId, fromMs - lookBackMs, untilMs + lookBackMs, cancellationToken);
            (exceeded, unvalidated) = Capacity(providerId, records, fromMs, untilMs, fleet);
        }

        var found = new Found(_settings.AnomaliesPerKindMax);
        found.Add(AnomalyKind.CapacityExceeded, Wants(AnomalyKind.CapacityExceeded) ? exceeded : null);
        found.Add(AnomalyKind.DeviceDoubleBooked, Wants(AnomalyKind.DeviceDoubleBooked) ? new Counted(DoubleBooked(providerId, records, fromMs, untilMs)) : null);
        found.Add(AnomalyKind.OutsideAdmission, Wants(AnomalyKind.OutsideAdmission)
            ? new Counted(OutsideAdmission(providerId, records, fromMs, await new AdmissionGate(dataSource).LoadAsync(providerId, cancellationToken)))
            : null);
        found.Add(AnomalyKind.TamperConflict, Wants(AnomalyKind.TamperConflict) ? await TamperConflictsAsync(providerId, fromMs, untilMs, cancellationToken) : null);
        found.Add(AnomalyKind.ChainBroken, Wants(AnomalyKind.ChainBroken) ? new Counted(await ChainBreaksAsync(providerId, cancellationToken)) : null);
        if (Wants(AnomalyKind.SilentStream))
        {
            long silenceUntilMs = Math.Min(untilMs, time.GetUtcNow().ToUnixTimeMilliseconds());
            List<HeartbeatRun> heartbeats = await HeartbeatRunsAsync(providerId, fromMs, silenceUntilMs, cancellationToken);
            found.Add(AnomalyKind.SilentStream,
                new Counted(Silences(providerId, records, heartbeats, fromMs, silenceUntilMs, await CoveredBeforeAsync(providerId, fromMs, cancellationToken))));
        }

        found.Add(AnomalyKind.UsageSpike, Wants(AnomalyKind.UsageSpike) ? new Counted(await SpikesAsync(providerId, from, until, cancellationToken)) : null);
        found.Add(AnomalyKind.CapacityUnvalidated, Wants(AnomalyKind.CapacityUnvalidated) ? unvalidated : null);
        return new AnomalyFindings(found.Kept, found.Kinds, _settings.AnomaliesPerKindMax);
    }

    /// <summary>
    /// A kind's anomalies as a detector hands them over: either every one, to be cut here, or a
    /// list the detector already cut to the cap with the number it found in all.
    /// </summary>
    private sealed record Counted(IEnumerable<Anomaly> Anomalies, long? FoundTotal = null);

    /// <summary>Collects the kinds in order, keeping at most the cap of each and counting them all.</summary>
    private sealed class Found(int perKindMax)
    {
        public List<Anomaly> Kept { get; } = [];

        public List<AnomalyKindCount> Kinds { get; } = [];

        /// <summary>Adds a kind's anomalies and its count; a null means the kind did not run, and it gets no count.</summary>
        public void Add(AnomalyKind kind, Counted? anomalies)
        {
            if (anomalies is null)
            {
                return;
            }

            long found = 0;
            int kept = 0;
            foreach (Anomaly anomaly in anomalies.Anomalies)
            {
                found++;
                if (kept < perKindMax)
                {
                    Kept.Add(anomaly);
                    kept++;
                }
            }

            Kinds.Add(new AnomalyKindCount(kind, Math.Max(found, anomalies.FoundTotal ?? 0), kept));
        }
    }

    /// <summary>
    /// The provider's fleet with every validation that can be in force at some instant of
    /// [from, until): the same reading ingest's plausibility check makes (<see cref="FleetSnapshot"/>),
    /// with the history the audit needs. Shared with the HTML report.
    /// </summary>
    internal static async Task<FleetSnapshot> LoadFleetAsync(NpgsqlDataSource dataSource, string providerId, long fromMs, long untilMs, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(System.Data.IsolationLevel.RepeatableRead, cancellationToken);
        try
        {
            return await FleetSnapshot.LoadAsync(connection, transaction, providerId, fromMs, untilMs, cancellationToken);
        }
        catch (FleetHistoryLimitExceededException e)
        {
            throw new AuditLimitExceededException(e.Message);
        }
    }

    private async Task<List<Usage>> LoadAsync(string providerId, long fromMs, long untilMs, CancellationToken cancellationToken)
    {
        var strings = new Dictionary<string, string>(StringComparer.Ordinal);
        string Shared(string value) => strings.TryGetValue(value, out string? shared) ? shared : strings[value] = value;
        var records = new List<Usage>();
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using var command = new NpgsqlCommand("""
            SELECT stream_id, sequence, job_id, holder_code, device_model, device_count, share_numerator, share_denominator,
                   start_at, end_at, site, device_uuids, usage_npfh
            FROM usage_records
            WHERE provider_id = $1 AND start_at >= $2 AND start_at < $3 AND stream_id NOT LIKE 'proof:%'
            ORDER BY stream_id COLLATE "C", sequence
            """, connection)
        {
            Parameters = { new() { Value = providerId }, new() { Value = UnixMs.ToDateTime(fromMs) }, new() { Value = UnixMs.ToDateTime(untilMs) } },
        };
        await using NpgsqlDataReader reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            if (records.Count == _settings.RecordsMax)
            {
                throw new AuditLimitExceededException($"{providerId} has more than {_settings.RecordsMax:N0} records in the period; detect over a shorter period.");
            }

            string[] uuids = reader.IsDBNull(11) ? [] : reader.GetFieldValue<string[]>(11);
            for (int i = 0; i < uuids.Length; i++)
            {
                uuids[i] = Shared(uuids[i]);
            }

            records.Add(new Usage(Shared(reader.GetString(0)), (ulong)reader.GetInt64(1), reader.GetString(2), Shared(reader.GetString(3)), Shared(reader.GetString(4)),
                (uint)reader.GetInt32(5), (uint)reader.GetInt32(6), (uint)reader.GetInt32(7), UnixMs.FromDateTime(reader.GetDateTime(8)),
                UnixMs.FromDateTime(reader.GetDateTime(9)), Shared(reader.GetString(10)), uuids, reader.GetInt64(12)));
        }

        return records;
    }

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

    /// <summary>A record's running time, or the part of it inside one stretch; the record itself is the evidence.</summary>
    private readonly record struct Span(Usage Record, long StartMs, long EndMs);

    /// <summary>A run of time over a limit: from when the sum first exceeded it until it fell back, the peak, and the records at the peak.</summary>
    private sealed record Overload(long FromMs, long UntilMs, long PeakAtMs, Int128 PeakUnits, long UnitsPerDevice, List<Usage> Peak);

    /// <summary>
    /// Sweeps the spans in start order, keeping the running ones in a heap by end, and yields
    /// every run during which the sum of devices × share exceeds <paramref name="limit"/> devices.
    /// Shares are summed exactly in units of 1/L device, L the least common multiple of the
    /// denominators present.
    /// </summary>
    private static IEnumerable<Overload> Overloads(List<Span> spans, Func<Usage, uint> devices, long limit)
    {
        long unitsPerDevice = 1;
        foreach (uint denominator in spans.Select(s => s.Record.ShareDenominator).Distinct())
        {
            unitsPerDevice = checked(unitsPerDevice / (long)Gcd((ulong)unitsPerDevice, denominator) * denominator);
            if (unitsPerDevice > 1_000_000_000_000)
            {
                throw new AuditLimitExceededException("The share denominators at one site and model have a common multiple above 10^12; the exact capacity sweep refuses them.");
            }
        }

        Int128 Units(Usage r) => (Int128)devices(r) * r.ShareNumerator * (unitsPerDevice / r.ShareDenominator);
        Int128 limitUnits = (Int128)limit * unitsPerDevice;
        spans.Sort((a, b) => a.StartMs != b.StartMs ? a.StartMs.CompareTo(b.StartMs) : a.EndMs.CompareTo(b.EndMs));
        var running = new PriorityQueue<Usage, long>();
        Int128 sum = 0;
        Overload? open = null;
        Int128 peak = 0;
        long peakAt = 0;
        List<Usage>? peakSet = null;

        // Ends at or before the next start come first: a record ending when another starts does not overlap it.
        IEnumerable<Overload> EndUntil(long timeMs)
        {
            while (running.TryPeek(out Usage? ending, out long endMs) && endMs <= timeMs)
            {
                running.Dequeue();
                sum -= Units(ending);
                if (open is not null && sum <= limitUnits)
                {
                    yield return open with { UntilMs = endMs, PeakAtMs = peakAt, PeakUnits = peak, Peak = peakSet! };
                    open = null;
                }
            }
        }

        foreach (Span span in spans)
        {
            foreach (Overload closed in EndUntil(span.StartMs))
            {
                yield return closed;
            }

            running.Enqueue(span.Record, span.EndMs);
            sum += Units(span.Record);
            if (sum > limitUnits)
            {
                if (open is null)
                {
                    open = new Overload(span.StartMs, 0, span.StartMs, sum, unitsPerDevice, []);
                    peak = 0;
                }

                if (sum > peak)
                {
                    peak = sum;
                    peakAt = span.StartMs;
                    peakSet = running.UnorderedItems.Select(i => i.Element).OrderBy(r => r.StartMs).ThenBy(r => r.StreamId, StringComparer.Ordinal).ThenBy(r => r.Sequence).ToList();
                }
            }
        }

        foreach (Overload closed in EndUntil(long.MaxValue))
        {
            yield return closed;
        }
    }

    private static ulong Gcd(ulong a, ulong b)
    {
        while (b != 0)
        {
            (a, b) = (b, a % b);
        }

        return a;
    }

    /// <summary>Units of 1/L device as whole devices and a remainder fraction ("12", "3 5/7").</summary>
    private static string Shares(Int128 units, long unitsPerDevice)
    {
        Int128 whole = units / unitsPerDevice;
        Int128 rest = units % unitsPerDevice;
        if (rest == 0)
        {
            return whole.ToString(CultureInfo.InvariantCulture);
        }

        long divisor = (long)Gcd((ulong)rest, (ulong)unitsPerDevice);
        return string.Create(CultureInfo.InvariantCulture, $"{whole} {rest / divisor}/{unitsPerDevice / divisor}");
    }

    /// <summary>
    /// Rule: every record that started in the period must lie wholly inside one of the
    /// provider's admissions and overlap none of its suspensions, as the registry stands now (the
    /// same check as the ingest gate, <see cref="AdmissionSnapshot.Check"/>). Ingest enforces it
    /// when a record arrives; records that break it later come from a retroactive suspension, an
    /// exit dated back, or rows written around ingest. Consecutive records of a stream refused
    /// for the same reason make one anomaly.
    /// </summary>
    private IEnumerable<Anomaly> OutsideAdmission(string providerId, List<Usage> records, long fromMs, AdmissionSnapshot snapshot)
    {
        (Usage First, Refusal Refusal, List<Usage> Records)? run = null;
        Anomaly Close((Usage First, Refusal Refusal, List<Usage> Records) r) =>
            new(AnomalyKind.OutsideAdmission, providerId, r.First.StreamId, r.Records.Min(x => x.StartMs), r.Records.Max(x => x.EndMs),
                r.Records.Count == 1 ? r.Refusal.Message : $"{r.Refusal.Message} (and {r.Records.Count - 1} more records of {r.First.StreamId})",
                r.Records.Take(_settings.EvidenceRowsMax).Select(x => x.Evidence()).ToList(), r.Records.Count,
                [new("reason", ProtocolNames.Of(r.Refusal.Reason))]);

        foreach (Usage record in records)
        {
            if (record.StartMs < fromMs)
            {
                continue;
            }

            Refusal refusal = snapshot.Check(record.Sequence, record.StartMs, record.EndMs);
            bool refused = refusal.Reason != default;
            if (run is { } current && (!refused || current.First.StreamId != record.StreamId || current.Refusal.Reason != refusal.Reason))
            {
                yield return Close(current);
                run = null;
            }

            if (refused)
            {
                if (run is null)
                {
                    run = (record, refusal, []);
                }

                run.Value.Records.Add(record);
            }
        }

        if (run is { } last)
        {
            yield return Close(last);
        }
    }

    /// <summary>Rule: every tamper conflict recorded in the period, with the committed record it contradicts.</summary>
    private async Task<Counted> TamperConflictsAsync(string providerId, long fromMs, long untilMs, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        // The window counts every conflict of the period before the limit cuts the rows.
        var conflicts = (await connection.QueryAsync<(long Id, string Stream, long Sequence, byte[] Committed, byte[] Offered, byte[] Canonical, string? Peer, DateTime At, long Total)>(new CommandDefinition("""
            SELECT conflict_id, stream_id, sequence, committed_hash, offered_hash, offered_canonical, peer, detected_at, count(*) OVER () FROM tamper_conflicts
            WHERE provider_id = @providerId AND detected_at >= @from AND detected_at < @until ORDER BY conflict_id LIMIT @limit
            """, new { providerId, from = UnixMs.ToDateTime(fromMs), until = UnixMs.ToDateTime(untilMs), limit = _settings.AnomaliesPerKindMax }, cancellationToken: cancellationToken))).ToList();
        var anomalies = new List<Anomaly>();
        foreach (var c in conflicts)
        {
            List<EvidenceRow> committed = await EvidenceAsync(connection, providerId, c.Stream, (ulong)c.Sequence, cancellationToken);
            long at = UnixMs.FromDateTime(c.At);
            anomalies.Add(new Anomaly(AnomalyKind.TamperConflict, providerId, c.Stream, at, at,
                $"record {c.Sequence} of {c.Stream} was replayed with different content{(c.Peer is null ? "" : $" from {c.Peer}")}",
                committed, committed.Count,
                [new("conflict_id", c.Id.ToString(CultureInfo.InvariantCulture)), new("committed_hash", Convert.ToHexStringLower(c.Committed)),
                 new("offered_hash", Convert.ToHexStringLower(c.Offered)), new("offered_canonical", Convert.ToHexStringLower(c.Canonical))]));
        }

        return new Counted(anomalies, conflicts.Count == 0 ? 0 : conflicts[0].Total);
    }

    /// <summary>Rule: every stream of the provider (proof streams too) is verified whole; each broken chain is one anomaly with the evidence of its first broken link.</summary>
    private async Task<IEnumerable<Anomaly>> ChainBreaksAsync(string providerId, CancellationToken cancellationToken)
    {
        IReadOnlyList<ChainVerification> verifications = await new ChainVerifier(dataSource).VerifyProviderAsync(providerId, VerificationRange.Whole, cancellationToken);
        var anomalies = new List<Anomaly>();
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        foreach (ChainVerification v in verifications.Where(v => !v.Intact))
        {
            ChainBreak evidence = v.Break!;
            List<EvidenceRow> rows = await EvidenceAsync(connection, providerId, v.StreamId, evidence.Sequence, cancellationToken);
            long at = rows.Count > 0 ? rows[0].StartUnixMs : 0;
            anomalies.Add(new Anomaly(AnomalyKind.ChainBroken, providerId, v.StreamId, at, rows.Count > 0 ? rows[0].EndUnixMs : 0,
                $"the chain of {v.StreamId} breaks at record {evidence.Sequence}: {evidence.Detail}", rows, rows.Count,
                [new("kind", evidence.Kind.ToString()), new("sequence", evidence.Sequence.ToString(CultureInfo.InvariantCulture)), new("previous_hash", evidence.PreviousHashHex),
                 new("stored_hash", evidence.StoredHashHex), new("computed_hash", evidence.ComputedHashHex), new("canonical", evidence.CanonicalHex)]));
        }

        return anomalies;
    }

    /// <summary>A stream's heartbeat minutes from <see cref="FirstMinuteMs"/> to <see cref="LastMinuteMs"/>, no two consecutive ones further apart than the silence threshold.</summary>
    private sealed record HeartbeatRun(string StreamId, long FirstMinuteMs, long LastMinuteMs);

    /// <summary>What covered a stream before the period: the end of its last record that started before it, and its last heartbeat minute before it.</summary>
    private readonly record struct CoveredBefore(long? LastEndMs, long? LastHeartbeatMinuteMs);

    /// <summary>For the silence before a stream's first record or heartbeat in the period: what covered it last before the period.</summary>
    private async Task<Dictionary<string, CoveredBefore>> CoveredBeforeAsync(string providerId, long fromMs, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var rows = await connection.QueryAsync<(string Stream, DateTime? End, DateTime? Heartbeat)>(new CommandDefinition("""
            SELECT s.stream_id,
                   (SELECT r.end_at FROM usage_records r WHERE r.provider_id = s.provider_id AND r.stream_id = s.stream_id AND r.start_at < @from
                    ORDER BY r.sequence DESC LIMIT 1),
                   (SELECT h.minute_at FROM stream_heartbeats h WHERE h.provider_id = s.provider_id AND h.stream_id = s.stream_id AND h.minute_at < @from
                    ORDER BY h.minute_at DESC LIMIT 1)
            FROM ingest_streams s WHERE s.provider_id = @providerId AND s.stream_id NOT LIKE 'proof:%'
            """, new { providerId, from = UnixMs.ToDateTime(fromMs) }, cancellationToken: cancellationToken));
        return rows.Where(r => r.End is not null || r.Heartbeat is not null).ToDictionary(
            r => r.Stream,
            r => new CoveredBefore(r.End is { } end ? UnixMs.FromDateTime(end) : null, r.Heartbeat is { } beat ? UnixMs.FromDateTime(beat) : null),
            StringComparer.Ordinal);
    }

    /// <summary>
    /// The provider's heartbeat minutes in [from, until), folded by the database into runs in
    /// which consecutive minutes of a stream lie at most the silence threshold apart (a minute
    /// covers itself, so two minutes leave a gap of their distance less one minute). No silence
    /// can lie inside a run, so the detector needs only each run's first and last minute, however
    /// many minutes there are. Each stream's minutes are read through the table's key.
    /// </summary>
    private async Task<List<HeartbeatRun>> HeartbeatRunsAsync(string providerId, long fromMs, long untilMs, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var rows = (await connection.QueryAsync<(string Stream, DateTime First, DateTime Last)>(new CommandDefinition("""
            SELECT stream_id, min(minute_at), max(minute_at)
            FROM (SELECT stream_id, minute_at, sum(starts) OVER (PARTITION BY stream_id ORDER BY minute_at) AS run
                  FROM (SELECT s.stream_id, h.minute_at,
                               CASE WHEN h.minute_at - lag(h.minute_at) OVER (PARTITION BY s.stream_id ORDER BY h.minute_at) <= @joined THEN 0 ELSE 1 END AS starts
                        FROM ingest_streams s
                        CROSS JOIN LATERAL (SELECT minute_at FROM stream_heartbeats h
                                            WHERE h.provider_id = s.provider_id AND h.stream_id = s.stream_id AND h.minute_at >= @from AND h.minute_at < @until) h
                        WHERE s.provider_id = @providerId AND s.stream_id NOT LIKE 'proof:%') marked) numbered
            GROUP BY stream_id, run
            LIMIT @limit
            """, new
        {
            providerId,
            from = UnixMs.ToDateTime(fromMs),
            until = UnixMs.ToDateTime(Math.Max(fromMs, untilMs)),
            joined = _settings.Silence + TimeSpan.FromMilliseconds(HeartbeatMinutes.MinuteMs),
            limit = _settings.HeartbeatRunsMax + 1,
        }, cancellationToken: cancellationToken))).ToList();
        if (rows.Count > _settings.HeartbeatRunsMax)
        {
            throw new AuditLimitExceededException($"{providerId} has more than {_settings.HeartbeatRunsMax:N0} runs of heartbeats in the period; detect over a shorter period.");
        }

        return rows.Select(r => new HeartbeatRun(r.Stream, UnixMs.FromDateTime(r.First), UnixMs.FromDateTime(r.Last))).ToList();
    }

    /// <summary>Something that covers a stream over [start, end): one record, or one run of heartbeat minutes.</summary>
    private readonly record struct Cover(long StartMs, long EndMs, Usage? Record, HeartbeatRun? Heartbeats);

    /// <summary>
    /// Rule: a stream is covered over each of its records, [start, end), and over each minute (by
    /// the server's clock) in which it sent a heartbeat, [minute, minute + 1 min). Taking records
    /// and heartbeat minutes together in start order, the stream is covered up to the latest end
    /// so far; whenever the next one starts more than the silence threshold after that, or the
    /// period (cut at now) ends that long after it, the stream was silent: neither records nor
    /// heartbeats. A stream that had records or heartbeats before the period counts from the last
    /// of them; otherwise it is judged from its first record or heartbeat, and a stream that never
    /// sent either is not judged. The evidence is the record before the silence and the first one
    /// after it; the facts add the minute of the last heartbeat before it and of the first after
    /// it (or "none").
    /// </summary>
    private IEnumerable<Anomaly> Silences(string providerId, List<Usage> records, List<HeartbeatRun> heartbeats, long fromMs, long untilMs, Dictionary<string, CoveredBefore> coveredBefore)
    {
        long silenceMs = (long)_settings.Silence.TotalMilliseconds;
        var recordsOf = records.GroupBy(r => r.StreamId).ToDictionary(g => g.Key, g => g.ToList(), StringComparer.Ordinal);
        var heartbeatsOf = heartbeats.GroupBy(h => h.StreamId).ToDictionary(g => g.Key, g => g.ToList(), StringComparer.Ordinal);
        foreach (string stream in recordsOf.Keys.Concat(heartbeatsOf.Keys).Concat(coveredBefore.Keys).Distinct().Order(StringComparer.Ordinal))
        {
            var covers = new List<Cover>();
            covers.AddRange((recordsOf.GetValueOrDefault(stream) ?? []).Select(r => new Cover(r.StartMs, r.EndMs, r, null)));
            covers.AddRange((heartbeatsOf.GetValueOrDefault(stream) ?? []).Select(h => new Cover(h.FirstMinuteMs, h.LastMinuteMs + HeartbeatMinutes.MinuteMs, null, h)));
            // Start order; at one instant records before heartbeats, and records in sequence.
            covers.Sort((a, b) => a.StartMs != b.StartMs ? a.StartMs.CompareTo(b.StartMs)
                : (a.Record?.Sequence ?? ulong.MaxValue).CompareTo(b.Record?.Sequence ?? ulong.MaxValue));

            // The first record and the first heartbeat run at or after each position, for the evidence after a silence.
            var recordFrom = new Usage?[covers.Count + 1];
            var heartbeatsFrom = new HeartbeatRun?[covers.Count + 1];
            for (int i = covers.Count - 1; i >= 0; i--)
            {
                recordFrom[i] = covers[i].Record ?? recordFrom[i + 1];
                heartbeatsFrom[i] = covers[i].Heartbeats ?? heartbeatsFrom[i + 1];
            }

            CoveredBefore prior = coveredBefore.GetValueOrDefault(stream);
            long covered = Math.Max(prior.LastEndMs ?? long.MinValue, prior.LastHeartbeatMinuteMs is long minute ? minute + HeartbeatMinutes.MinuteMs : long.MinValue);
            long? lastHeartbeat = prior.LastHeartbeatMinuteMs;
            Usage? before = null;
            for (int i = 0; i < covers.Count; i++)
            {
                Cover cover = covers[i];
                if (covered != long.MinValue && cover.StartMs > fromMs)
                {
                    long silentFrom = Math.Max(covered, fromMs);
                    if (cover.StartMs - silentFrom > silenceMs)
                    {
                        yield return Silence(providerId, stream, silentFrom, cover.StartMs, before, recordFrom[i], lastHeartbeat, heartbeatsFrom[i]?.FirstMinuteMs);
                    }
                }

                covered = Math.Max(covered, cover.EndMs);
                if (cover.Record is { } record)
                {
                    before = record;
                }
                else
                {
                    lastHeartbeat = cover.Heartbeats!.LastMinuteMs;
                }
            }

            if (covered != long.MinValue && untilMs - Math.Max(covered, fromMs) > silenceMs)
            {
                yield return Silence(providerId, stream, Math.Max(covered, fromMs), untilMs, before, null, lastHeartbeat, null);
            }
        }
    }

    private Anomaly Silence(string providerId, string stream, long fromMs, long untilMs, Usage? before, Usage? after, long? lastHeartbeatMinuteMs, long? nextHeartbeatMinuteMs)
    {
        long minutes = (untilMs - fromMs) / 60_000;
        List<EvidenceRow> evidence = new[] { before, after }.Where(r => r is not null).Select(r => r!.Evidence()).ToList();
        bool toTheEnd = after is null && nextHeartbeatMinuteMs is null;
        return new Anomaly(AnomalyKind.SilentStream, providerId, stream, fromMs, untilMs,
            $"{stream} sent no records or heartbeats for {minutes / 60} h {minutes % 60} min{(toTheEnd ? ", to the end of the period" : "")}",
            evidence, evidence.Count,
            [new("silent_minutes", minutes.ToString(CultureInfo.InvariantCulture)), new("threshold_minutes", ((long)_settings.Silence.TotalMinutes).ToString(CultureInfo.InvariantCulture)),
             new("last_heartbeat_before", lastHeartbeatMinuteMs is long last ? Time(last) : "none"),
             new("first_heartbeat_after", nextHeartbeatMinuteMs is long next ? Time(next) : "none")]);
    }

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

    private static async Task<List<EvidenceRow>> EvidenceAsync(NpgsqlConnection connection, string providerId, string streamId, ulong sequence, CancellationToken cancellationToken)
    {
        var rows = await connection.QueryAsync<(string Job, string Holder, string Model, int Count, int Num, int Den, DateTime Start, DateTime End, string Site, string[]? Uuids, long Usage)>(new CommandDefinition("""
            SELECT job_id, holder_code, device_model, device_count, share_numerator, share_denominator, start_at, end_at, site, device_uuids, usage_npfh
            FROM usage_records WHERE provider_id = @providerId AND stream_id = @streamId AND sequence = @sequence
            """, new { providerId, streamId, sequence = (long)sequence }, cancellationToken: cancellationToken));
        return rows.Select(r => new EvidenceRow(streamId, sequence, r.Job, r.Holder, r.Model, (uint)r.Count, (uint)r.Num, (uint)r.Den,
            UnixMs.FromDateTime(r.Start), UnixMs.FromDateTime(r.End), r.Site, r.Uuids ?? [], r.Usage)).ToList();
    }

    private static string Time(long unixMs) =>
        DateTimeOffset.FromUnixTimeMilliseconds(unixMs).ToOffset(ShanghaiTime.Offset).ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture) + " Asia/Shanghai";
}
