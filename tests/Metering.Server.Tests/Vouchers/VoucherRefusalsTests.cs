using Google.Rpc;
using Grpc.Core;
using Metering.Engine.Settlement;
using Metering.Engine.Vouchers;
using Metering.Protocol.V1;
using Metering.Server.Tests.Infrastructure;
using Metering.Server.Vouchers;

namespace Metering.Server.Tests.Vouchers;

/// <summary>
/// The engine's voucher refusal reasons are mapped to vouchers.proto's VoucherRefusal by value:
/// these tests keep the two enums from drifting apart, member by member, in both directions.
/// </summary>
public sealed class VoucherRefusalsTests
{
    [Fact]
    public void The_engines_voucher_reasons_and_the_wires_hold_the_same_names_at_the_same_numbers() => EnumMirror.AssertMirrors<VoucherRefusalReason, VoucherRefusal>();

    [Fact]
    public void Every_engine_voucher_reason_maps_to_the_wire_reason_of_its_name()
    {
        foreach (VoucherRefusalReason reason in Enum.GetValues<VoucherRefusalReason>())
        {
            Assert.Equal(reason.ToString(), VoucherRefusals.ToProto(reason).ToString());
        }
    }

    [Fact]
    public void A_refused_overdraw_reaches_the_wire_under_its_proto_name_and_status()
    {
        RpcException wire = VoucherErrors.From(new VoucherRefusedException(VoucherRefusalReason.VoucherExhausted, "the voucher has no balance left"));

        Assert.Equal(StatusCode.FailedPrecondition, wire.StatusCode);
        Assert.Equal("VOUCHER_EXHAUSTED", wire.GetRpcStatus()?.GetDetail<ErrorInfo>()?.Reason);
    }

    [Fact]
    public void A_payout_problem_is_refused_with_its_voucher_reason()
    {
        RpcException wire = VoucherErrors.From(new PayoutRefusedException(PayoutProblem.ReferenceTaken, "the bank reference was used before"));

        Assert.Equal(StatusCode.AlreadyExists, wire.StatusCode);
        Assert.Equal("PAYOUT_REFERENCE_TAKEN", wire.GetRpcStatus()?.GetDetail<ErrorInfo>()?.Reason);
    }
}
