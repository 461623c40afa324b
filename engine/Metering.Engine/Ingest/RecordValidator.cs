using System.Text;
using Metering.Engine.Catalog;
using Metering.Engine.Identity;

namespace Metering.Engine.Ingest;

/// <summary>A refusal of one record or batch: the machine-readable reason and a sentence for people.</summary>
public readonly record struct Refusal(IngestRefusalReason Reason, string Message)
{
    public static readonly Refusal None = new(IngestRefusalReason.Unspecified, "");

    public bool IsRefused => Reason != IngestRefusalReason.Unspecified;
}

/// <summary>
/// Checks one usage record against the limits and the catalog. It allocates only when it refuses
/// (to build the message), so the accepting path stays allocation-free.
/// </summary>
public sealed class RecordValidator
{
    private readonly IngestLimits _limits;
    private readonly DeviceCatalog _catalog;
    private readonly long _durationMaxMs;
    private readonly long _futureSkewMs;
    private readonly long _startEarliestMs;

    /// <summary>The most power one device is believed to draw, for the energy plausibility bound.</summary>
    public const uint DeviceWattsMax = 5_000;

    /// <summary>The most SM activity a record can report: every multiprocessor busy all of the time, in basis points.</summary>
    public const uint SmActiveBpMax = 10_000;

    public RecordValidator(IngestLimits limits, DeviceCatalog catalog)
    {
        limits.Validate();
        _limits = limits;
        _catalog = catalog;
        _durationMaxMs = (long)limits.RecordDurationMax.TotalMilliseconds;
        _futureSkewMs = (long)limits.FutureSkewMax.TotalMilliseconds;
        _startEarliestMs = limits.StartEarliest.ToUnixTimeMilliseconds();
    }

    public IngestLimits Limits => _limits;

    public DeviceCatalog Catalog => _catalog;

    /// <summary>Validates a record; on success gives the catalog entry it normalises with.</summary>
    public Refusal Validate(in IngestRecord record, long nowUnixMs, out DeviceModel? model)
    {
        model = null;
        int jobBytes = Utf8Length(record.JobId);
        if (jobBytes == 0 || jobBytes > _limits.JobIdBytesMax || HasNul(record.JobId))
        {
            return Refuse(IngestRefusalReason.JobIdInvalid, record, $"job_id must be 1 to {_limits.JobIdBytesMax} bytes of UTF-8 without NUL, got {jobBytes} bytes");
        }

        if (!CreditCode.IsValid(record.HolderCode))
        {
            return Refuse(IngestRefusalReason.HolderCodeInvalid, record, $"holder_code '{Truncate(record.HolderCode)}' is not a GB 32100-2015 unified social credit code (18 characters with a valid check character)");
        }

        if (record.DeviceModel.Length > CanonicalEncoding.DeviceModelBytesMax
            || !_catalog.VersionAt(record.StartUnixMs).TryGet(record.DeviceModel, out DeviceModel? found))
        {
            return Refuse(IngestRefusalReason.UnknownDeviceModel, record, $"device_model '{Truncate(record.DeviceModel)}' is not in device catalog {_catalog.VersionAt(record.StartUnixMs).Version}");
        }

        if (record.DeviceCount == 0 || record.DeviceCount > (uint)_limits.DeviceCountMax)
        {
            return Refuse(IngestRefusalReason.DeviceCountOutOfRange, record, $"device_count {record.DeviceCount} is outside 1..{_limits.DeviceCountMax}");
        }

        if (record.ShareDenominator == 0 || record.ShareDenominator > (uint)_limits.ShareDenominatorMax
            || record.ShareNumerator == 0 || record.ShareNumerator > record.ShareDenominator)
        {
            return Refuse(IngestRefusalReason.ShareOutOfRange, record, $"share {record.ShareNumerator}/{record.ShareDenominator} is not in (0, 1] with a denominator of 1..{_limits.ShareDenominatorMax}");
        }

        if (!found.TryComputeShare(record.ShareNumerator, record.ShareDenominator, out _, out _))
        {
            return Refuse(IngestRefusalReason.ShareOutOfRange, record, $"share {record.ShareNumerator}/{record.ShareDenominator} of {found.Key} names MIG slices, but no MIG profile of it in device catalog {found.CatalogVersion} takes {record.ShareNumerator} slices (profiles: {found.Mig!.SliceCounts}); send each MIG instance as its own share, or a time slice with another denominator");
        }

        if (record.EndUnixMs <= record.StartUnixMs)
        {
            return Refuse(IngestRefusalReason.EndNotAfterStart, record, $"end_unix_ms {record.EndUnixMs} is not after start_unix_ms {record.StartUnixMs}");
        }

        if (record.StartUnixMs < _startEarliestMs)
        {
            return Refuse(IngestRefusalReason.TimeTooOld, record, $"start_unix_ms {record.StartUnixMs} is before the earliest accepted start {_limits.StartEarliest:O}");
        }

        long latestMs = nowUnixMs + _futureSkewMs;
        if (record.EndUnixMs > latestMs || record.StartUnixMs > latestMs)
        {
            return Refuse(IngestRefusalReason.TimeInFuture, record, $"end_unix_ms {record.EndUnixMs} lies more than {_limits.FutureSkewMax.TotalMinutes:0} minutes in the future");
        }

        long durationMs = record.EndUnixMs - record.StartUnixMs;
        if (durationMs > _durationMaxMs)
        {
            return Refuse(IngestRefusalReason.DurationTooLong, record, $"duration {durationMs} ms exceeds the maximum {_durationMaxMs} ms");
        }

        int siteBytes = Utf8Length(record.Site);
        if (siteBytes == 0 || siteBytes > _limits.SiteBytesMax || HasNul(record.Site))
        {
            return Refuse(IngestRefusalReason.SiteInvalid, record, $"site must be 1 to {_limits.SiteBytesMax} bytes of UTF-8 without NUL, got {siteBytes} bytes");
        }

        IReadOnlyList<string> uuids = record.DeviceUuids;
        if (uuids.Count > record.DeviceCount || uuids.Count > _limits.DeviceUuidsMax)
        {
            return Refuse(IngestRefusalReason.DeviceUuidsInvalid, record, $"{uuids.Count} device UUIDs for {record.DeviceCount} devices (at most {_limits.DeviceUuidsMax} are listed)");
        }

        for (int i = 0; i < uuids.Count; i++)
        {
            int uuidBytes = Utf8Length(uuids[i]);
            if (uuidBytes == 0 || uuidBytes > _limits.DeviceUuidBytesMax || HasNul(uuids[i]))
            {
                return Refuse(IngestRefusalReason.DeviceUuidsInvalid, record, $"device UUID #{i + 1} must be 1 to {_limits.DeviceUuidBytesMax} bytes");
            }
        }

        if (record.EnergyMwh is ulong energyMwh)
        {
            // mWh = W × ms / 3,600; the bound is generous (a B200 draws about 1 kW).
            UInt128 energyMaxMwh = (UInt128)record.DeviceCount * DeviceWattsMax * (ulong)durationMs / 3_600;
            if (energyMwh > energyMaxMwh)
            {
                return Refuse(IngestRefusalReason.EnergyOutOfRange, record, $"energy_mwh {energyMwh} exceeds {DeviceWattsMax} W per device over the record ({energyMaxMwh} mWh)");
            }
        }

        if (record.SmActiveBp is uint smActiveBp && smActiveBp > SmActiveBpMax)
        {
            return Refuse(IngestRefusalReason.SmActiveOutOfRange, record, $"sm_active_bp {smActiveBp} is above {SmActiveBpMax} basis points (every multiprocessor busy all of the time)");
        }

        model = found;
        return Refusal.None;
    }

    // PostgreSQL text cannot hold NUL; refusing it here keeps a bad record from failing a commit.
    private static bool HasNul(string value) => value.Contains('\0', StringComparison.Ordinal);

    private static int Utf8Length(string value) => value.Length > 4096 ? int.MaxValue : Encoding.UTF8.GetByteCount(value);

    private static string Truncate(string value) => value.Length <= 40 ? value : string.Concat(value.AsSpan(0, 40), "…");

    private static Refusal Refuse(IngestRefusalReason reason, in IngestRecord record, string detail) =>
        new(reason, $"record {record.Sequence}: {detail}");
}
