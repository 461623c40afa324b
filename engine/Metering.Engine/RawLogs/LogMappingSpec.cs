namespace Metering.Engine.RawLogs;

/// <summary>
/// An upload's mapping from scheduler names to what a usage record needs, as the sender gave it
/// (rawlog.proto's <c>LogMapping</c>), not yet checked: <see cref="LogMappingRules.Create"/> checks
/// it. A null <see cref="UtcOffsetMinutes"/> means the sender gave none, and Shanghai time applies,
/// unless <see cref="TimeZone"/> names an IANA zone (empty or null: none). A JSON Lines property
/// named by <see cref="SmActiveProperty"/> (empty or null: none) carries SM activity in
/// <see cref="SmActiveScale"/>.
/// </summary>
public sealed record LogMappingSpec(
    IReadOnlyDictionary<string, string> AccountHolders,
    IReadOnlyDictionary<string, string> GresModels,
    IReadOnlyDictionary<string, string> PartitionModels,
    string Site,
    int? UtcOffsetMinutes,
    bool MeterSteps,
    string? TimeZone = null,
    string? SmActiveProperty = null,
    SmActiveScale SmActiveScale = SmActiveScale.Unspecified);
