using Grpc.Core;
using Metering.Engine.Ingest;
using Metering.Protocol.V1;
using Metering.Server.Ingest;
using Metering.Server.Fixtures;
using Metering.Server.Tests.Infrastructure;
using Xunit;

namespace Metering.Server.Tests.Ingest;

/// <summary>
/// The engine's ingest refusals and the wire's: the server maps them by value, so they must carry
/// the same names at the same numbers, in both directions.
/// </summary>
public sealed class IngestRefusalsTests
{
    [Fact]
    public void The_engines_ingest_reasons_and_the_wires_hold_the_same_names_at_the_same_numbers() => EnumMirror.AssertMirrors<IngestRefusalReason, IngestRefusal>();

    [Fact]
    public void Every_engine_ingest_reason_maps_to_the_wire_reason_of_its_name()
    {
        foreach (IngestRefusalReason reason in Enum.GetValues<IngestRefusalReason>())
        {
            Assert.Equal(reason.ToString(), IngestRefusals.ToWire(reason).ToString());
        }
    }

    [Fact]
    public void The_name_the_engine_reports_for_an_ingest_reason_is_its_wire_name()
    {
        foreach (IngestRefusalReason reason in Enum.GetValues<IngestRefusalReason>())
        {
            Assert.Equal(ProtocolNames.Of(IngestRefusals.ToWire(reason)), reason.ContractName());
        }
    }

    [Fact]
    public void An_engine_ingest_refusal_leaves_the_server_with_the_status_reason_and_sequences_of_its_wire_twin()
    {
        RpcException refused = Errors.From(new IngestRefusedException(new Refusal(IngestRefusalReason.SequenceGap, "gap"), 7, 5));
        Assert.Equal(StatusCode.FailedPrecondition, refused.StatusCode);
        Assert.Equal("SEQUENCE_GAP", IngestCall.Reason(refused));
        Assert.Equal("7", IngestCall.Metadata(refused, "sequence"));
        Assert.Equal("5", IngestCall.Metadata(refused, "expected"));
        Assert.Equal(StatusCode.AlreadyExists, IngestRefusals.StatusFor(IngestRefusalReason.TamperConflict));
        Assert.Equal(StatusCode.InvalidArgument, IngestRefusals.StatusFor(IngestRefusalReason.UnknownDeviceModel));
        Assert.Equal(StatusCode.Unavailable, IngestRefusals.StatusFor(IngestRefusalReason.RegistryBusy));
        Assert.Equal(StatusCode.ResourceExhausted, IngestRefusals.StatusFor(IngestRefusalReason.BatchTooLarge));
    }
}
