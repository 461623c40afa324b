using Google.Rpc;
using Grpc.Core;
using Metering.Engine.Settlement;
using Metering.Protocol.V1;
using Metering.Server.Settlement;
using Metering.Server.Vouchers;

namespace Metering.Server.Tests.Settlement;

/// <summary>
/// The engine's settlement refusal reasons are mapped to settlement.proto's SettlementRefusal by
/// value: these tests keep the two enums from drifting apart, member by member, in both directions.
/// </summary>
public sealed class SettlementRefusalsTests
{
    [Fact]
    public void Every_engine_settlement_reason_has_a_proto_member_of_the_same_name_and_number()
    {
        foreach (SettlementRefusalReason reason in Enum.GetValues<SettlementRefusalReason>())
        {
            Assert.True(Enum.TryParse(reason.ToString(), out SettlementRefusal proto), $"settlement.proto has no SettlementRefusal named {reason}");
            Assert.Equal((int)reason, (int)proto);
            Assert.Equal(proto, SettlementRefusals.ToProto(reason));
        }
    }

    [Fact]
    public void Every_proto_settlement_refusal_has_an_engine_reason_of_the_same_name_and_number()
    {
        foreach (SettlementRefusal proto in Enum.GetValues<SettlementRefusal>())
        {
            Assert.True(Enum.TryParse(proto.ToString(), out SettlementRefusalReason reason), $"the engine has no SettlementRefusalReason named {proto}");
            Assert.Equal((int)proto, (int)reason);
        }
    }

    [Fact]
    public void A_tampered_settlement_reaches_the_wire_as_data_loss_under_its_proto_name()
    {
        RpcException wire = VoucherErrors.From(new SettlementRefusedException(SettlementRefusalReason.SettlementTampered, "a stored statement no longer matches its hash"));

        Assert.Equal(StatusCode.DataLoss, wire.StatusCode);
        Assert.Equal("SETTLEMENT_TAMPERED", wire.GetRpcStatus()?.GetDetail<ErrorInfo>()?.Reason);
    }
}
