namespace Metering.Engine.Settlement;

/// <summary>A settlement call was refused; nothing was written.</summary>
public sealed class SettlementRefusedException(SettlementRefusalReason reason, string message) : Exception(message)
{
    public SettlementRefusalReason Reason { get; } = reason;
}
