using Grpc.Core;
using Metering.Engine.Settlement;
using Metering.Engine.Vouchers;
using Metering.Protocol.V1;
using Metering.Server.Settlement;

namespace Metering.Server.Vouchers;

/// <summary>Voucher and settlement refusals as gRPC statuses with an ErrorInfo reason, as vouchers.proto and settlement.proto document them.</summary>
internal static class VoucherErrors
{
    public static RpcException From(VoucherRefusedException refused)
    {
        VoucherRefusal reason = VoucherRefusals.ToProto(refused.Reason);
        return Errors.Refused(VoucherRefusals.CodeFor(reason), ProtocolNames.Of(reason), refused.Message, refused.Metadata.ToDictionary());
    }

    public static RpcException From(SettlementRefusedException refused)
    {
        SettlementRefusal reason = SettlementRefusals.ToProto(refused.Reason);
        return Errors.Refused(SettlementRefusals.CodeFor(reason), ProtocolNames.Of(reason), refused.Message);
    }

    /// <summary>A payout or release refusal of the engine as its VoucherRefusal on the wire.</summary>
    public static RpcException From(PayoutRefusedException refused) =>
        From(new VoucherRefusedException(ReasonFor(refused.Problem), refused.Message, refused.Metadata));

    public static VoucherRefusalReason ReasonFor(PayoutProblem problem) => VoucherRefusals.ReasonFor(problem);
}
