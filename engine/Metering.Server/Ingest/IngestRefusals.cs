using Grpc.Core;
using Metering.Engine.Ingest;
using Metering.Protocol.V1;

namespace Metering.Server.Ingest;

/// <summary>
/// The edge's map of the engine's ingest refusals: engine reason to wire reason by value (the two
/// enums share names and numbers, which a test holds), and wire reason to the gRPC status
/// ingest.proto documents for it.
/// </summary>
internal static class IngestRefusals
{
    public static IngestRefusal ToWire(IngestRefusalReason reason) => (IngestRefusal)(int)reason;

    public static StatusCode StatusFor(IngestRefusalReason reason) => Errors.CodeFor(ToWire(reason));
}
