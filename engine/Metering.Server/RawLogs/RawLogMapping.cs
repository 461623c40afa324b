using Metering.Engine.RawLogs;
using Metering.Protocol.V1;

namespace Metering.Server.RawLogs;

/// <summary>Maps an upload header's mapping and format to the engine's; the parsers then produce engine records themselves.</summary>
internal static class RawLogMapping
{
    /// <summary>The engine's mapping over the message's own maps, which the engine only reads.</summary>
    public static LogMappingSpec ToEngine(LogMapping mapping) => new(
        mapping.AccountHolders,
        mapping.GresModels,
        mapping.PartitionModels,
        mapping.Site,
        mapping.HasUtcOffsetMinutes ? mapping.UtcOffsetMinutes : null,
        mapping.MeterSteps,
        mapping.TimeZone.Length == 0 ? null : mapping.TimeZone,
        mapping.SmActiveProperty.Length == 0 ? null : mapping.SmActiveProperty,
        (Metering.Engine.RawLogs.SmActiveScale)(int)mapping.SmActiveScale);

    /// <summary>By value: the two enums share names and numbers, which a test holds.</summary>
    public static RawLogFormat ToEngine(LogFormat format) => (RawLogFormat)(int)format;
}
