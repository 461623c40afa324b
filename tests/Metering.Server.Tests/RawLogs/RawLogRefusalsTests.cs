using Grpc.Core;
using Metering.Engine.Ingest;
using Metering.Engine.RawLogs;
using Metering.Protocol.V1;
using Metering.Server.RawLogs;
using Metering.Server.Tests.Infrastructure;
using Xunit;

namespace Metering.Server.Tests.RawLogs;

/// <summary>
/// The engine's raw-log refusals and the wire's: the server maps them by value and the engine
/// stores line errors under their contract names, so both must agree with rawlog.proto.
/// </summary>
public sealed class RawLogRefusalsTests
{
    [Fact]
    public void The_engines_raw_log_reasons_and_the_wires_hold_the_same_names_at_the_same_numbers() => EnumMirror.AssertMirrors<RawLogRefusalReason, RawLogRefusal>();

    [Fact]
    public void The_name_a_line_error_is_stored_under_is_its_wire_name()
    {
        foreach (RawLogRefusalReason reason in Enum.GetValues<RawLogRefusalReason>())
        {
            Assert.Equal(ProtocolNames.Of(RawLogRefusals.ToWire(reason)), reason.ContractName());
            Assert.Equal(reason.ContractName(), LineRefusal.Of(reason, "why").Reason);
        }
    }

    [Fact]
    public void A_whole_call_refusal_carries_the_status_rawlog_proto_documents()
    {
        Assert.Equal(StatusCode.InvalidArgument, RawLogRefusals.StatusFor(RawLogRefusalReason.HeaderInvalid));
        Assert.Equal(StatusCode.FailedPrecondition, RawLogRefusals.StatusFor(RawLogRefusalReason.HeaderMissing));
        Assert.Equal(StatusCode.FailedPrecondition, RawLogRefusals.StatusFor(RawLogRefusalReason.OffsetGap));
        Assert.Equal(StatusCode.ResourceExhausted, RawLogRefusals.StatusFor(RawLogRefusalReason.UploadTooLarge));
        Assert.Equal(StatusCode.NotFound, RawLogRefusals.StatusFor(RawLogRefusalReason.UploadNotFound));
        Assert.Equal(StatusCode.Aborted, RawLogRefusals.StatusFor(RawLogRefusalReason.UploadBusy));
        Assert.Equal(StatusCode.InvalidArgument, RawLogRefusals.StatusFor(RawLogRefusalReason.UploadOverrun));
    }
}
