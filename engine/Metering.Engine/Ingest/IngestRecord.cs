namespace Metering.Engine.Ingest;

/// <summary>
/// One usage record as the engine takes it: the fields of ingest.proto's <c>UsageRecord</c>, with
/// <see cref="EnergyMwh"/> null where the record reports no energy and <see cref="SmActiveBp"/>
/// null where it reports no SM activity (a raw-log line carries it only when its JSON Lines
/// mapping names the property). A readonly struct so that the
/// server can describe each record of a message without allocating; the strings and the UUID list
/// are the sender's own, shared and never copied. The sequence is 0 until a raw-log upload numbers
/// the record at its flush.
/// </summary>
public readonly record struct IngestRecord(
    ulong Sequence,
    string JobId,
    string HolderCode,
    string DeviceModel,
    uint DeviceCount,
    uint ShareNumerator,
    uint ShareDenominator,
    long StartUnixMs,
    long EndUnixMs,
    string Site,
    IReadOnlyList<string> DeviceUuids,
    ulong? EnergyMwh,
    uint? SmActiveBp = null);
