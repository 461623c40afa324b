using Grpc.Core;
using Metering.Engine.Settlement;
using Metering.Engine.Vouchers;
using Metering.Protocol.V1;

namespace Metering.Server.Vouchers;

/// <summary>
/// The engine's voucher refusal reasons on the wire: engine reason → vouchers.proto's
/// VoucherRefusal (by value; VoucherRefusalsTests keeps the two enums equal member by member) →
/// gRPC status code.
/// </summary>
internal static class VoucherRefusals
{
    public static VoucherRefusal ToProto(VoucherRefusalReason reason) => (VoucherRefusal)(int)reason;

    /// <summary>A payout or release problem of the engine is refused on the wire as one of the voucher reasons.</summary>
    public static VoucherRefusalReason ReasonFor(PayoutProblem problem) => problem switch
    {
        PayoutProblem.OverPayable => VoucherRefusalReason.PayoutOverPayable,
        PayoutProblem.NothingPayable => VoucherRefusalReason.PayeeNothingPayable,
        PayoutProblem.ReferenceTaken => VoucherRefusalReason.PayoutReferenceTaken,
        PayoutProblem.YearNotEnded => VoucherRefusalReason.ProgrammeYearNotEnded,
        PayoutProblem.NothingToRelease => VoucherRefusalReason.NothingToRelease,
        _ => VoucherRefusalReason.VoucherFieldInvalid,
    };

    public static StatusCode CodeFor(VoucherRefusal reason) => reason switch
    {
        VoucherRefusal.VoucherFieldInvalid or VoucherRefusal.HolderCreditCodeInvalid or VoucherRefusal.HolderNotInShenzhen or VoucherRefusal.ParametersInvalid
            or VoucherRefusal.ClaimSpansYears => StatusCode.InvalidArgument,
        VoucherRefusal.HolderExists or VoucherRefusal.ContractOverlaps or VoucherRefusal.ContractNumberTaken or VoucherRefusal.VoucherExists
            or VoucherRefusal.UsageAlreadyRedeemed or VoucherRefusal.PayoutReferenceTaken => StatusCode.AlreadyExists,
        VoucherRefusal.HolderUnknown or VoucherRefusal.ContractUnknown or VoucherRefusal.VoucherUnknown or VoucherRefusal.UsageNotFound
            or VoucherRefusal.ClaimUnknown => StatusCode.NotFound,
        VoucherRefusal.ClaimTooLarge => StatusCode.ResourceExhausted,
        VoucherRefusal.UsageChainBroken => StatusCode.DataLoss,
        _ => StatusCode.FailedPrecondition,
    };
}
