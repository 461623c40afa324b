using Grpc.Core;
using Metering.Engine.Settlement;
using Metering.Engine.Vouchers;
using Metering.Protocol.V1;

namespace Metering.Server.Vouchers;

/// <summary>Voucher and settlement refusals as gRPC statuses with an ErrorInfo reason, as vouchers.proto and settlement.proto document them.</summary>
internal static class VoucherErrors
{
    public static RpcException From(VoucherRefusedException refused) =>
        Errors.Refused(CodeFor(refused.Reason), VoucherProtocolNames.Of(refused.Reason), refused.Message, refused.Metadata.ToDictionary());

    public static RpcException From(SettlementRefusedException refused) =>
        Errors.Refused(CodeFor(refused.Reason), VoucherProtocolNames.Of(refused.Reason), refused.Message);

    /// <summary>A payout or release refusal of the engine as its VoucherRefusal on the wire.</summary>
    public static RpcException From(PayoutRefusedException refused) =>
        From(new VoucherRefusedException(ReasonFor(refused.Problem), refused.Message, refused.Metadata));

    public static VoucherRefusal ReasonFor(PayoutProblem problem) => problem switch
    {
        PayoutProblem.OverPayable => VoucherRefusal.PayoutOverPayable,
        PayoutProblem.NothingPayable => VoucherRefusal.PayeeNothingPayable,
        PayoutProblem.ReferenceTaken => VoucherRefusal.PayoutReferenceTaken,
        PayoutProblem.YearNotEnded => VoucherRefusal.ProgrammeYearNotEnded,
        PayoutProblem.NothingToRelease => VoucherRefusal.NothingToRelease,
        _ => VoucherRefusal.VoucherFieldInvalid,
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

    public static StatusCode CodeFor(SettlementRefusal reason) => reason switch
    {
        SettlementRefusal.SettlementFieldInvalid => StatusCode.InvalidArgument,
        SettlementRefusal.DayNotSettled or SettlementRefusal.StatementUnknown => StatusCode.NotFound,
        SettlementRefusal.StatementOfOtherParty => StatusCode.PermissionDenied,
        SettlementRefusal.ReconciliationFailed => StatusCode.Internal,
        SettlementRefusal.SettlementTampered => StatusCode.DataLoss,
        _ => StatusCode.FailedPrecondition,
    };
}
