namespace Metering.Engine.Capacity;

/// <summary>
/// Where a fleet validation stands. The same names at the same numbers as the wire's
/// FleetValidationState, which a test holds, so the server maps by value.
/// </summary>
public enum ValidationState
{
    Unspecified = 0,
    ValidationCollecting = 1,
    ValidationComplete = 2,
    ValidationSuperseded = 3,
}

/// <summary>What became of a sampled node; mirrors the wire's NodeOutcome by name and number.</summary>
public enum SampledNodeOutcome
{
    Unspecified = 0,
    NodePending = 1,
    NodePassed = 2,
    NodeFailed = 3,
    NodeAwaitingReview = 4,
}

/// <summary>What the server found for one reported device; mirrors the wire's DeviceOutcome by name and number.</summary>
public enum DeviceResultOutcome
{
    Unspecified = 0,
    DeviceHealthy = 1,
    DeviceUnhealthy = 2,
    DeviceModelMismatch = 3,
    DeviceAwaitingReview = 4,
    DeviceRejected = 5,
    DeviceUndeclared = 6,
}

/// <summary>
/// One node of a declared inventory. The device count is a long so that any count the wire can
/// carry reaches the inventory's checks unchanged and is refused there with its own number.
/// </summary>
public sealed record InventoryNode(string NodeId, string Site, string DeviceModel, long DeviceCount);

/// <summary>A provider's declaration of its whole fleet, which opens a new validation.</summary>
public sealed record InventoryDeclaration(string CreditCode, IReadOnlyList<InventoryNode> Nodes);

/// <summary>One node's signed probe report: the report as JSON and the node key's signature over its canonical bytes.</summary>
public sealed record AttestationSubmission(string CreditCode, string NodeId, string ReportJson, byte[] Signature);

/// <summary>
/// An operator's decision on a device awaiting review: accepted as <see cref="DeviceModel"/>, or
/// rejected when that is empty. The device index is a long so that any index the wire can carry
/// is reported back as it was sent.
/// </summary>
public sealed record UnknownModelReview(string CreditCode, long ValidationId, string NodeId, long DeviceIndex, string DeviceModel, string Reasons);

/// <summary>How many devices of one catalog model an inventory declares.</summary>
public sealed record ModelFleetRecord(string DeviceModel, long DeviceCount);

/// <summary>What the server found for one reported device of an accepted attestation, with each kernel's judgement.</summary>
public sealed record DeviceResultRecord(int DeviceIndex, string ReportedName, int Multiprocessors, string? DeviceModel, DeviceResultOutcome Outcome, string Detail,
    IReadOnlyList<KernelJudgement> Kernels);

/// <summary>A sampled node, with its outcome, its accepted attestation (if any) and the timing of its challenge.</summary>
public sealed record SampledNodeRecord(string NodeId, string Site, string DeviceModel, int DeviceCount, SampledNodeOutcome Outcome, long? AttestationId,
    IReadOnlyList<DeviceResultRecord> Devices, DateTimeOffset? DeadlineAt, DateTimeOffset? CommittedAt, long? ElapsedMs, string Detail);

/// <summary>
/// A fleet validation as the provider, operators and auditors read it. While it collects and its
/// challenges have not started, <see cref="SampleSeed"/> is empty and <see cref="Sample"/> holds
/// no node: a provider that knew its sample early could prepare the sampled nodes only.
/// </summary>
public sealed record FleetValidationRecord(
    string CreditCode,
    long ValidationId,
    int InventoryVersion,
    ValidationState State,
    DateTimeOffset DrawnAt,
    int NodeCount,
    long DeviceCount,
    IReadOnlyList<ModelFleetRecord> Models,
    long DeclaredFp16Gflops,
    int SampleSize,
    byte[] SampleSeed,
    IReadOnlyList<SampledNodeRecord> Sample,
    int PassedNodes,
    int FailedNodes,
    int NonconformingNodesBound,
    int PassRateLowerBoundPpm,
    long VerifiedFp16Gflops,
    DateTimeOffset? CompletedAt,
    DateTimeOffset? ExpiresAt,
    string CatalogVersion,
    DateTimeOffset? ChallengesIssuedAt,
    int AbandonedNodes);

/// <summary>An accepted attestation: its id, the SHA-256 of the report's canonical bytes, the node it judged and the validation as it stands after it.</summary>
public sealed record AttestationRecord(long AttestationId, byte[] ReportSha256, SampledNodeRecord Node, FleetValidationRecord Validation);
