using Google.Rpc;
using Grpc.Core;
using Metering.Engine.Settlement;
using Metering.Protocol.V1;
using Metering.Server.Settlement;
using Metering.Server.Tests.Infrastructure;
using Metering.Server.Vouchers;

namespace Metering.Server.Tests.Settlement;

/// <summary>
/// The engine's settlement refusal reasons are mapped to settlement.proto's SettlementRefusal by
/// value: these tests keep the two enums from drifting apart, member by member, in both directions.
/// </summary>
public sealed class SettlementRefusalsTests
{
    [Fact]
    public void The_engines_settlement_reasons_and_the_wires_hold_the_same_names_at_the_same_numbers() => EnumMirror.AssertMirrors<SettlementRefusalReason, SettlementRefusal>();

    [Fact]
    public void Every_engine_settlement_reason_maps_to_the_wire_reason_of_its_name()
    {
        foreach (SettlementRefusalReason reason in Enum.GetValues<SettlementRefusalReason>())
        {
            Assert.Equal(reason.ToString(), SettlementRefusals.ToProto(reason).ToString());
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
