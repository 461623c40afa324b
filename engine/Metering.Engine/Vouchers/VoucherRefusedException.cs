namespace Metering.Engine.Vouchers;

/// <summary>A voucher-service call was refused for a stated rule; nothing was changed.</summary>
public sealed class VoucherRefusedException(VoucherRefusalReason reason, string message, IReadOnlyDictionary<string, string>? metadata = null)
    : Exception(message)
{
    public VoucherRefusalReason Reason { get; } = reason;

    /// <summary>Details a client can act on, for example the record already redeemed.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; } = metadata ?? new Dictionary<string, string>();
}
