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
    public void Every_engine_reason_has_a_wire_reason_of_the_same_name_and_number()
    {
        foreach (CapacityRefusalReason reason in Enum.GetValues<CapacityRefusalReason>())
        {
            Assert.True(Enum.TryParse(reason.ToString(), out CapacityRefusal wire), $"the wire has no CapacityRefusal named {reason}");
            Assert.Equal((int)reason, (int)wire);
            Assert.Equal(wire, CapacityRefusals.ToWire(reason));
        }
    }

    [Fact]
    public void Every_wire_reason_has_an_engine_reason_of_the_same_name_and_number()
    {
        foreach (CapacityRefusal wire in Enum.GetValues<CapacityRefusal>())
        {
            Assert.True(Enum.TryParse(wire.ToString(), out CapacityRefusalReason reason), $"the engine has no CapacityRefusalReason named {wire}");
            Assert.Equal((int)wire, (int)reason);
        }
    }

    [Fact]
    public void The_name_the_engine_stores_for_a_reason_is_its_wire_name()
    {
        foreach (CapacityRefusalReason reason in Enum.GetValues<CapacityRefusalReason>())
        {
            Assert.Equal(Engine.Ingest.ProtocolNames.Of(CapacityRefusals.ToWire(reason)), CapacityRefusalNames.Of(reason));
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
