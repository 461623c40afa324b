namespace Metering.Engine.Settlement;

/// <summary>
/// Why settlement refused a call: the engine's own copy of settlement.proto's SettlementRefusal,
/// with the same member names and numbers, so that the server maps it by value and a test keeps the
/// two from drifting apart.
/// </summary>
public enum SettlementRefusalReason
{
    Unspecified = 0,
    SettlementFieldInvalid = 1,
    DayNotEnded = 2,
    DayNotSettled = 3,
    StatementUnknown = 4,
    StatementOfOtherParty = 5,
    ReconciliationFailed = 6,
    SettlementTampered = 7,
    DayEmpty = 8,
}
