using Google.Protobuf;
using Metering.Engine.Capacity;
using Metering.Protocol.V1;
using Metering.Server.Capacity;
using Metering.Server.Tests.Infrastructure;
using Xunit;

namespace Metering.Server.Tests.Capacity;

/// <summary>
/// The edge between the capacity messages and the engine's records: the outcome enums map by
/// value, so they must mirror their wire twins; requests reach the engine unclamped; records go
/// out with absent instants and ids as 0 and digests as lowercase hex.
/// </summary>
public sealed class CapacityMappingTests
{
    [Fact]
    public void The_engines_validation_states_and_the_wires_hold_the_same_names_at_the_same_numbers() => EnumMirror.AssertMirrors<ValidationState, FleetValidationState>();

    [Fact]
    public void The_engines_node_outcomes_and_the_wires_hold_the_same_names_at_the_same_numbers() => EnumMirror.AssertMirrors<SampledNodeOutcome, NodeOutcome>();

    [Fact]
    public void The_engines_device_outcomes_and_the_wires_hold_the_same_names_at_the_same_numbers() => EnumMirror.AssertMirrors<DeviceResultOutcome, DeviceOutcome>();

    [Fact]
    public void A_declared_device_count_past_the_engines_int_range_reaches_the_engine_unchanged()
    {
        InventoryDeclaration declaration = CapacityMapping.ToDeclaration(new DeclareInventoryRequest
        {
            CreditCode = "91310000MA1FL8XQ30",
            Nodes = { new DeclaredNode { NodeId = "node-1", Site = "sh-1", DeviceModel = "H100-SXM", DeviceCount = uint.MaxValue } },
        });

        InventoryNode node = Assert.Single(declaration.Nodes);
        Assert.Equal((long)uint.MaxValue, node.DeviceCount);
        Assert.Equal(("node-1", "sh-1", "H100-SXM"), (node.NodeId, node.Site, node.DeviceModel));
    }

    [Fact]
    public void A_review_and_a_submission_carry_every_field_of_their_requests()
    {
        UnknownModelReview review = CapacityMapping.ToReview(new ReviewUnknownModelRequest
        {
            CreditCode = "91310000MA1FL8XQ30", ValidationId = 7, NodeId = "node-2", DeviceIndex = uint.MaxValue, DeviceModel = "L40S", Reasons = "seen on site",
        });
        Assert.Equal(new UnknownModelReview("91310000MA1FL8XQ30", 7, "node-2", uint.MaxValue, "L40S", "seen on site"), review);

        AttestationSubmission submission = CapacityMapping.ToSubmission(new SubmitAttestationRequest
        {
            CreditCode = "91310000MA1FL8XQ30", NodeId = "node-3", ReportJson = "{}", Signature = ByteString.CopyFrom(1, 2, 3),
        });
        Assert.Equal(("91310000MA1FL8XQ30", "node-3", "{}"), (submission.CreditCode, submission.NodeId, submission.ReportJson));
        Assert.Equal(new byte[] { 1, 2, 3 }, submission.Signature);
    }

    [Fact]
    public void An_attestation_goes_out_with_hex_digests_unix_milliseconds_and_absent_values_as_zero()
    {
        var drawn = DateTimeOffset.FromUnixTimeMilliseconds(1_780_000_000_123);
        var deadline = drawn.AddMinutes(5);
        var kernel = new KernelJudgement("fp16_gemm", "tensor", 700_000_000, "gflops", 650_000_000, 989_000_000, true, 700_000_001);
        var device = new DeviceResultRecord(0, "NVIDIA H100 80GB HBM3", -1, null, DeviceResultOutcome.DeviceAwaitingReview, "not a catalog model", [kernel]);
        var node = new SampledNodeRecord("node-1", "sh-1", "H100-SXM", 8, SampledNodeOutcome.NodeAwaitingReview, 41, [device], deadline, null, null, "");
        var validation = new FleetValidationRecord("91310000MA1FL8XQ30", 5, 2, ValidationState.ValidationCollecting, drawn, 10, 80, [new ModelFleetRecord("H100-SXM", 80)],
            7_912_000_000, 4, [0xab, 0x01], [node], 0, 0, 0, 0, 0, null, null, "2026.1", drawn.AddSeconds(1), 0);

        AttestationResult result = CapacityMapping.ToMessage(new AttestationRecord(41, [0x0f, 0xa0], node, validation));

        Assert.Equal("0fa0", result.ReportSha256);
        Assert.Equal(FleetValidationState.ValidationCollecting, result.Validation.State);
        Assert.Equal("ab01", result.Validation.SampleSeedHex);
        Assert.Equal(1_780_000_000_123, result.Validation.DrawnUnixMs);
        Assert.Equal(1_780_000_001_123, result.Validation.ChallengesIssuedUnixMs);
        Assert.Equal((0L, 0L), (result.Validation.CompletedUnixMs, result.Validation.ExpiresUnixMs));
        Assert.Equal(("H100-SXM", 80UL), (result.Validation.Models[0].DeviceModel, result.Validation.Models[0].DeviceCount));
        Assert.Equal(NodeOutcome.NodeAwaitingReview, result.Node.Outcome);
        Assert.Equal(41, result.Node.AttestationId);
        Assert.Equal(deadline.ToUnixTimeMilliseconds(), result.Node.DeadlineUnixMs);
        Assert.Equal((0L, 0L), (result.Node.CommittedUnixMs, result.Node.ElapsedMs));
        DeviceResult sent = Assert.Single(result.Node.Devices);
        Assert.Equal(DeviceOutcome.DeviceAwaitingReview, sent.Outcome);
        Assert.Equal("", sent.DeviceModel);
        Assert.Equal(0u, sent.Multiprocessors);
        Assert.Equal(new KernelResult
        {
            Kernel = "fp16_gemm", ArithmeticPath = "tensor", Rate = 700_000_000, Unit = "gflops", Reference = 650_000_000, Peak = 989_000_000, Judged = true, ReportedRate = 700_000_001,
        }, Assert.Single(sent.Kernels));
        Assert.Equal(result.Node, Assert.Single(result.Validation.Sample));
    }
}
