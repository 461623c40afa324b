using Grpc.Core;
using Metering.Engine.Registry;
using Metering.Protocol.V1;

namespace Metering.Server.Registry;

/// <summary>
/// Maps the engine's registry refusal reasons to the wire's, at the edge: by value, since the two
/// enums carry the same names and numbers (RegistryRefusalsTests keeps them so), and from the wire
/// reason to the gRPC status registry.proto documents for it.
/// </summary>
internal static class RegistryRefusals
{
    public static RegistryRefusal ToProto(RegistryRefusalReason reason) => (RegistryRefusal)(int)reason;

    public static StatusCode StatusOf(RegistryRefusalReason reason) => Errors.CodeFor(ToProto(reason));
}
