using Metering.Engine.Ingest;

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

    /// <summary>A job's devices allocated with a reported mean SM activity below the idle threshold for at least the idle duration.</summary>
    AllocatedIdle,
}

/// <summary>One usage record offered as evidence.</summary>
public sealed record EvidenceRow(
    string StreamId, ulong Sequence, string JobId, string HolderCode, string DeviceModel, uint DeviceCount, uint ShareNumerator, uint ShareDenominator,
    long StartUnixMs, long EndUnixMs, string Site, IReadOnlyList<string> DeviceUuids, long UsageNanoPflopsHours, uint? SmActiveBp = null);

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

    /// <summary>A record whose mean SM activity is below this many basis points (5 % by default) counts as idle.</summary>
    public uint IdleSmActiveBelowBp { get; init; } = 500;

    /// <summary>Idle records of one job that follow one another for at least this long are an anomaly.</summary>
    public TimeSpan IdleDurationMin { get; init; } = TimeSpan.FromHours(1);

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
        Require(IdleSmActiveBelowBp is >= 1 and <= RecordValidator.SmActiveBpMax, nameof(IdleSmActiveBelowBp), "between 1 and 10000 basis points");
        Require(IdleDurationMin >= TimeSpan.FromMinutes(1) && IdleDurationMin <= TimeSpan.FromDays(31), nameof(IdleDurationMin), "between 1 minute and 31 days");
    }

    private static void Require(bool condition, string name, string range)
    {
        if (!condition)
        {
            throw new ArgumentOutOfRangeException(name, $"Detector setting {name} must be {range}.");
        }
    }
}
