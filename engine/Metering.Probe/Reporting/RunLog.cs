using Microsoft.Extensions.Logging;

namespace Metering.Probe.Reporting;

/// <summary>Progress of `metering-probe run`, source-generated with stable event ids (2101-2199).</summary>
internal static partial class RunLog
{
    [LoggerMessage(EventId = 2101, Level = LogLevel.Information, Message = "Node {NodeId}: asking {Server} for its challenge")]
    public static partial void AskingChallenge(ILogger logger, string nodeId, string server);

    [LoggerMessage(EventId = 2102, Level = LogLevel.Information, Message = "Challenge of validation {ValidationId} received; it must be answered before {Expires}")]
    public static partial void ChallengeReceived(ILogger logger, long validationId, string expires);

    [LoggerMessage(EventId = 2103, Level = LogLevel.Information, Message = "Node {NodeId}: submitting the signed report of {Devices} device(s)")]
    public static partial void Submitting(ILogger logger, string nodeId, int devices);

    [LoggerMessage(EventId = 2104, Level = LogLevel.Information, Message = "The server accepted attestation {AttestationId}: node {Outcome}")]
    public static partial void Answered(ILogger logger, long attestationId, string outcome);
}
