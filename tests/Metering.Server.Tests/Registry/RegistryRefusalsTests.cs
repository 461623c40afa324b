using Grpc.Core;
using Metering.Engine.Registry;
using Metering.Protocol.V1;
using Metering.Server.Registry;
using Metering.Server.Tests.Infrastructure;

namespace Metering.Server.Tests.Registry;

/// <summary>The engine's registry refusal reasons and the wire's stay one set: same names, same numbers, mapped by value.</summary>
public sealed class RegistryRefusalsTests
{
    [Fact]
    public void Every_engine_registry_refusal_reason_has_a_wire_reason_of_the_same_name_and_number_and_back() =>
        EnumMirror.AssertMirrors<RegistryRefusalReason, RegistryRefusal>();

    [Fact]
    public void Each_engine_reason_maps_to_the_wire_reason_of_its_name()
    {
        foreach (RegistryRefusalReason reason in Enum.GetValues<RegistryRefusalReason>())
        {
            Assert.Equal(reason.ToString(), RegistryRefusals.ToProto(reason).ToString());
        }
    }

    [Theory]
    [InlineData(RegistryRefusalReason.OtherProvider, StatusCode.PermissionDenied)]
    [InlineData(RegistryRefusalReason.FieldInvalid, StatusCode.InvalidArgument)]
    [InlineData(RegistryRefusalReason.ApplicationUnknown, StatusCode.NotFound)]
    [InlineData(RegistryRefusalReason.ServiceItemTaken, StatusCode.AlreadyExists)]
    [InlineData(RegistryRefusalReason.AlreadyDecided, StatusCode.Aborted)]
    [InlineData(RegistryRefusalReason.WrongStage, StatusCode.FailedPrecondition)]
    public void An_engine_reason_carries_the_status_registry_proto_documents(RegistryRefusalReason reason, StatusCode status) =>
        Assert.Equal(status, RegistryRefusals.StatusOf(reason));
}
