using Grpc.Core;
using Metering.Engine.Capacity;
using Metering.Protocol.V1;

namespace Metering.Server.Capacity;

/// <summary>
/// The edge's map of the engine's capacity refusals: engine reason to wire reason by value (the
/// two enums share names and numbers, which a test holds), and wire reason to the gRPC status
/// capacity.proto documents for it.
/// </summary>
internal static class CapacityRefusals
{
    public static CapacityRefusal ToWire(CapacityRefusalReason reason) => (CapacityRefusal)(int)reason;

    public static StatusCode StatusFor(CapacityRefusalReason reason) => Errors.CodeFor(ToWire(reason));
}
