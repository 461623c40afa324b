using Metering.Protocol.V1;

namespace Metering.Client.Capacity;

/// <summary>
/// The words a client prints for a sampled node's and a device's outcome. The `metering` CLI and
/// the probe both show fleet validations; one table keeps an operator and a provider reading the
/// same words for the same outcome.
/// </summary>
public static class OutcomeNames
{
    public static string Of(NodeOutcome outcome) => outcome switch
    {
        NodeOutcome.NodePending => "pending",
        NodeOutcome.NodePassed => "passed",
        NodeOutcome.NodeFailed => "failed",
        NodeOutcome.NodeAwaitingReview => "awaiting review",
        _ => outcome.ToString(),
    };

    public static string Of(DeviceOutcome outcome) => outcome switch
    {
        DeviceOutcome.DeviceHealthy => "healthy",
        DeviceOutcome.DeviceUnhealthy => "unhealthy",
        DeviceOutcome.DeviceModelMismatch => "model mismatch",
        DeviceOutcome.DeviceAwaitingReview => "awaiting review",
        DeviceOutcome.DeviceRejected => "rejected",
        DeviceOutcome.DeviceUndeclared => "undeclared",
        _ => outcome.ToString(),
    };
}
