using Microsoft.Extensions.Logging;

namespace Metering.Probe.Reporting;

/// <summary>Progress of `metering-probe run`, source-generated with stable event ids (2101-2199).</summary>
internal static partial class RunLog
{
    [LoggerMessage(EventId = 2101, Level = LogLevel.Information, Message = "Node {NodeId}: asking {Server} for its challenge")]
    public static partial void AskingChallenge(ILogger logger, string nodeId, string server);

    [LoggerMessage(EventId = 2102, Level = LogLevel.Information, Message = "Challenge of validation {ValidationId} ({Started}): commit within {WindowSeconds} s of issue on the server's clock, {LeftSeconds} s left by this clock; work {Work}")]
    public static partial void ChallengeReceived(ILogger logger, long validationId, string started, string windowSeconds, string leftSeconds, string work);

    [LoggerMessage(EventId = 2105, Level = LogLevel.Information, Message = "Node {NodeId}: committing to the results, {LeftSeconds} s before the deadline by this clock")]
    public static partial void Committing(ILogger logger, string nodeId, string leftSeconds);

    [LoggerMessage(EventId = 2106, Level = LogLevel.Information, Message = "Commitment received {ElapsedSeconds} s after issue on the server's clock (deadline {DeadlineSeconds} s); SHA-256 {Sha256}")]
    public static partial void Committed(ILogger logger, string elapsedSeconds, string deadlineSeconds, string sha256);

    [LoggerMessage(EventId = 2107, Level = LogLevel.Information, Message = "Another report of the provider is being verified (try {Attempt}); sending again in {DelaySeconds} s")]
    public static partial void VerificationBusy(ILogger logger, int attempt, double delaySeconds);

    [LoggerMessage(EventId = 2103, Level = LogLevel.Information, Message = "Node {NodeId}: submitting the signed report of {Devices} device(s)")]
    public static partial void Submitting(ILogger logger, string nodeId, int devices);

    [LoggerMessage(EventId = 2104, Level = LogLevel.Information, Message = "The server accepted attestation {AttestationId}: node {Outcome}")]
    public static partial void Answered(ILogger logger, long attestationId, string outcome);
}
