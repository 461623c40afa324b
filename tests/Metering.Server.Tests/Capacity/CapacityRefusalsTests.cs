using Grpc.Core;
using Metering.Engine.Capacity;
using Metering.Protocol.V1;
using Metering.Server.Capacity;
using Metering.Server.Tests.Infrastructure;
using Xunit;

namespace Metering.Server.Tests.Capacity;

/// <summary>
/// The engine's capacity refusals and the wire's: the server maps them by value, so they must
/// carry the same names at the same numbers, in both directions.
/// </summary>
public sealed class CapacityRefusalsTests
{
    [Fact]
    public void The_engines_capacity_reasons_and_the_wires_hold_the_same_names_at_the_same_numbers() => EnumMirror.AssertMirrors<CapacityRefusalReason, CapacityRefusal>();

    [Fact]
    public void Every_engine_capacity_reason_maps_to_the_wire_reason_of_its_name()
    {
        foreach (CapacityRefusalReason reason in Enum.GetValues<CapacityRefusalReason>())
        {
            Assert.Equal(reason.ToString(), CapacityRefusals.ToWire(reason).ToString());
        }
    }

    [Fact]
    public void The_name_the_engine_stores_for_a_reason_is_its_wire_name()
    {
        foreach (CapacityRefusalReason reason in Enum.GetValues<CapacityRefusalReason>())
        {
            Assert.Equal(ProtocolNames.Of(CapacityRefusals.ToWire(reason)), reason.ContractName());
        }
    }

    [Fact]
    public void An_engine_refusal_leaves_the_server_with_the_status_and_reason_of_its_wire_twin()
    {
        RpcException refused = Errors.From(new CapacityRefusedException(CapacityRefusalReason.DeviceUuidTaken, "device taken"));
        Assert.Equal(StatusCode.AlreadyExists, refused.StatusCode);
        Assert.Equal("DEVICE_UUID_TAKEN", IngestCall.Reason(refused));
        Assert.Equal(StatusCode.NotFound, CapacityRefusals.StatusFor(CapacityRefusalReason.ValidationUnknown));
        Assert.Equal(StatusCode.InvalidArgument, CapacityRefusals.StatusFor(CapacityRefusalReason.PublicKeyInvalid));
        Assert.Equal(StatusCode.FailedPrecondition, CapacityRefusals.StatusFor(CapacityRefusalReason.NoOpenValidation));
    }
}
