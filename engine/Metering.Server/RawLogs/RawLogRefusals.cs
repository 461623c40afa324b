using Grpc.Core;
using Metering.Engine.RawLogs;
using Metering.Protocol.V1;

namespace Metering.Server.RawLogs;

/// <summary>
/// The edge's map of the engine's raw-log refusals: engine reason to wire reason by value (the two
/// enums share names and numbers, which a test holds), and wire reason to the gRPC status
/// rawlog.proto documents for a refusal of the whole call.
/// </summary>
internal static class RawLogRefusals
{
    public static RawLogRefusal ToWire(RawLogRefusalReason reason) => (RawLogRefusal)(int)reason;

    public static StatusCode StatusFor(RawLogRefusalReason reason) => CodeFor(ToWire(reason));

    /// <summary>
    /// The status of a whole-call refusal. The line reasons never end a call (they are reported
    /// per line); should one do so, it is bad input.
    /// </summary>
    public static StatusCode CodeFor(RawLogRefusal reason) => reason switch
    {
        RawLogRefusal.HeaderMissing or RawLogRefusal.OffsetGap or RawLogRefusal.UploadMismatch => StatusCode.FailedPrecondition,
        RawLogRefusal.UploadTooLarge => StatusCode.ResourceExhausted,
        RawLogRefusal.UploadNotFound => StatusCode.NotFound,
        RawLogRefusal.UploadBusy => StatusCode.Aborted,
        _ => StatusCode.InvalidArgument,
    };
}
