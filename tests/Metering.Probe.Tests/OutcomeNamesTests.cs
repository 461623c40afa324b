using Metering.Client.Capacity;
using Metering.Probe.Reporting;
using Metering.Protocol.V1;

namespace Metering.Probe.Tests;

/// <summary>
/// The probe and the `metering` CLI print outcomes from one table: every outcome the server sends
/// has a word of its own, and the probe's node line is the CLI's word in capitals.
/// </summary>
public sealed class OutcomeNamesTests
{
    [Fact]
    public void Every_node_and_device_outcome_the_server_sends_has_a_distinct_word()
    {
        string[] nodes = Enum.GetValues<NodeOutcome>().Where(o => o != NodeOutcome.Unspecified).Select(OutcomeNames.Of).ToArray();
        string[] devices = Enum.GetValues<DeviceOutcome>().Where(o => o != DeviceOutcome.Unspecified).Select(OutcomeNames.Of).ToArray();

        Assert.Equal(["pending", "passed", "failed", "awaiting review"], nodes);
        Assert.Equal(["healthy", "unhealthy", "model mismatch", "awaiting review", "rejected", "undeclared"], devices);
    }

    [Fact]
    public void The_probes_node_outcome_is_the_clis_word_in_capitals()
    {
        Assert.Equal("PASSED", OutcomeTable.Name(NodeOutcome.NodePassed));
        Assert.Equal("AWAITING REVIEW", OutcomeTable.Name(NodeOutcome.NodeAwaitingReview));
        foreach (NodeOutcome outcome in Enum.GetValues<NodeOutcome>())
        {
            Assert.Equal(OutcomeNames.Of(outcome).ToUpperInvariant(), OutcomeTable.Name(outcome));
        }
    }
}
