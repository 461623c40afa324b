using Metering.Engine.Ingest;
using Metering.Engine.RawLogs;
using Metering.Protocol.V1;

namespace Metering.Fixtures;

/// <summary>
/// The engine's form of the wire records the tests and load tools build, for the places that call
/// the engine directly (sessions, the validator, the chain) instead of going through the server,
/// which maps the same fields at its edge.
/// </summary>
internal static class EngineRecords
{
    public static IngestRecord Of(UsageRecord record) => new(
        record.Sequence,
        record.JobId,
        record.HolderCode,
        record.DeviceModel,
        record.DeviceCount,
        record.ShareNumerator,
        record.ShareDenominator,
        record.StartUnixMs,
        record.EndUnixMs,
        record.Site,
        record.DeviceUuids,
        record.HasEnergyMwh ? record.EnergyMwh : null,
        record.HasSmActiveBp ? record.SmActiveBp : null);

    public static IngestRecord[] Of(IEnumerable<UsageRecord> records) => [.. records.Select(Of)];

    /// <summary>The wire form of an engine record, for load tools that stream what a parser produced.</summary>
    public static UsageRecord ToWire(in IngestRecord record)
    {
        var wire = new UsageRecord
        {
            Sequence = record.Sequence,
            JobId = record.JobId,
            HolderCode = record.HolderCode,
            DeviceModel = record.DeviceModel,
            DeviceCount = record.DeviceCount,
            ShareNumerator = record.ShareNumerator,
            ShareDenominator = record.ShareDenominator,
            StartUnixMs = record.StartUnixMs,
            EndUnixMs = record.EndUnixMs,
            Site = record.Site,
            DeviceUuids = { record.DeviceUuids },
        };
        if (record.EnergyMwh is ulong energyMwh)
        {
            wire.EnergyMwh = energyMwh;
        }

        if (record.SmActiveBp is uint smActiveBp)
        {
            wire.SmActiveBp = smActiveBp;
        }

        return wire;
    }

    public static LogMappingSpec Of(LogMapping mapping) => new(
        mapping.AccountHolders,
        mapping.GresModels,
        mapping.PartitionModels,
        mapping.Site,
        mapping.HasUtcOffsetMinutes ? mapping.UtcOffsetMinutes : null,
        mapping.MeterSteps,
        mapping.TimeZone.Length == 0 ? null : mapping.TimeZone,
        mapping.SmActiveProperty.Length == 0 ? null : mapping.SmActiveProperty,
        (Metering.Engine.RawLogs.SmActiveScale)(int)mapping.SmActiveScale);
}
