using Metering.Engine.Formatting;

namespace Metering.Engine.Capacity;

/// <summary>
/// Why the capacity service refused a call. The engine's own enum: the server maps it by value to
/// the wire's CapacityRefusal (proto/metering/v1/capacity.proto), and a test keeps the two with the
/// same names and numbers.
/// </summary>
public enum CapacityRefusalReason
{
    /// <summary>Not used.</summary>
    Unspecified = 0,

    /// <summary>The public key is not an ECDSA P-256 SubjectPublicKeyInfo in DER or PEM (INVALID_ARGUMENT).</summary>
    PublicKeyInvalid = 1,

    /// <summary>The inventory is empty, names a node twice, or breaks a limit: nodes, devices per node, id or site length (INVALID_ARGUMENT).</summary>
    InventoryInvalid = 2,

    /// <summary>The inventory declares a catalog model that the probe cannot measure (it has no probe figures in the catalog, for example Ascend NPUs); its capacity goes through the commissioned verifier's figure instead (FAILED_PRECONDITION).</summary>
    ModelNotProbeable = 3,

    /// <summary>No fleet validation of the provider is collecting attestations (FAILED_PRECONDITION).</summary>
    NoOpenValidation = 4,

    /// <summary>The node is not in the open validation's sample (FAILED_PRECONDITION).</summary>
    NodeNotSampled = 5,

    /// <summary>The node already has an outcome in the open validation; outcomes are final (FAILED_PRECONDITION).</summary>
    NodeAlreadyAttested = 6,

    /// <summary>No longer returned: nonces are issued only by StartChallenges, one per sampled node.</summary>
    NoncesExhausted = 7,

    /// <summary>The report's nonce was never issued to this provider for this node and validation (FAILED_PRECONDITION).</summary>
    NonceUnknown = 8,

    /// <summary>The report's nonce was issued but its time-to-live ran out before the attestation arrived (FAILED_PRECONDITION).</summary>
    NonceExpired = 9,

    /// <summary>The report's nonce was already used by another attestation: nonces are single use (FAILED_PRECONDITION).</summary>
    NonceUsed = 10,

    /// <summary>The node has no registered public key (FAILED_PRECONDITION).</summary>
    NodeKeyUnknown = 11,

    /// <summary>The signature does not verify with the node's current key over the report's canonical bytes (PERMISSION_DENIED).</summary>
    SignatureInvalid = 12,

    /// <summary>The report is not a probe report: not JSON, too large, or missing fields (INVALID_ARGUMENT).</summary>
    ReportMalformed = 13,

    /// <summary>The probe's own verifier refused the report: checksums, attestation, work sizes or the arithmetic of the timings; metadata `verification` names the verifier's failure (INVALID_ARGUMENT).</summary>
    ChecksumInvalid = 14,

    /// <summary>A rate is above 1.10 × the physical peak of the device's model: no healthy device does that; metadata `device`, `kernel`, `rate` and `peak` name it (INVALID_ARGUMENT).</summary>
    MeasurementForged = 15,

    /// <summary>This very report was already accepted (ALREADY_EXISTS).</summary>
    AttestationReplayed = 16,

    /// <summary>The provider has no fleet validation, or none with that id (NOT_FOUND).</summary>
    ValidationUnknown = 17,

    /// <summary>The device is not awaiting an operator's review (FAILED_PRECONDITION).</summary>
    ReviewNotPending = 18,

    /// <summary>A device's kernels are not exactly the work the server set for the node's model with its nonce (the same kernels, items, iterations and timed runs as the challenge's); checked from the commitment and again from the report, before the nonce is spent or any leaf recomputed, so the nonce stays usable; metadata `kernel` names the first that differs (INVALID_ARGUMENT).</summary>
    WorkSizeRefused = 19,

    /// <summary>Another attestation of the same provider is being verified right now: at most one verification per provider runs at a time. Refused before the nonce is spent, so the same signed report may be sent again once the first call has returned (RESOURCE_EXHAUSTED).</summary>
    VerificationBusy = 20,

    /// <summary>The commitment arrived after the node's deadline (the expected time of the set work at the healthy threshold plus the server's allowance). The commitment is recorded as evidence and the node fails; metadata `elapsed_ms` and `deadline_ms` give the server's measurement (FAILED_PRECONDITION).</summary>
    CommitmentLate = 21,

    /// <summary>The report's nonce has no commitment yet: commit with CommitResults first. The nonce stays usable (FAILED_PRECONDITION).</summary>
    CommitmentMissing = 22,

    /// <summary>The report's devices, UUIDs, work or Merkle roots are not the ones committed for its nonce. Checked before the nonce is spent (INVALID_ARGUMENT).</summary>
    CommitmentMismatch = 23,

    /// <summary>The node already committed for this nonce; a commitment is made once (ALREADY_EXISTS).</summary>
    CommitmentRepeated = 24,

    /// <summary>The commitment is not a result commitment (metering-probe/v1/commitment) of this nonce and node, or too large (INVALID_ARGUMENT).</summary>
    CommitmentMalformed = 25,

    /// <summary>A reported duration is below the physical floor of the set work on the node's model: the time the work takes at 1.10 × the model's peak. Checked before the nonce is spent; metadata `kernel`, `duration_ns` and `floor_ns` name it (INVALID_ARGUMENT).</summary>
    DurationBelowFloor = 26,

    /// <summary>The report is signed by a key of the node that no operator has approved: a first key, or a rotation not yet approved. Checked before the nonce is spent (FAILED_PRECONDITION).</summary>
    NodeKeyNotApproved = 27,

    /// <summary>A device of the report has no UUID, a UUID not registered with the node's approved key, or one that another device of the report names too: the report does not describe the registered node. Checked before the nonce is spent; metadata `device` names the device's index (INVALID_ARGUMENT).</summary>
    DeviceUuidMismatch = 28,

    /// <summary>A device UUID of the registration is held by another node, of this provider or another: by that node's approved key or its latest registered key. Metadata `device_uuid` names it (ALREADY_EXISTS).</summary>
    DeviceUuidTaken = 29,

    /// <summary>The key named for approval is not the node's latest registered key, is approved already, or its fingerprint is not the one given (FAILED_PRECONDITION).</summary>
    NodeKeyNotPending = 30,

    /// <summary>The provider declared an inventory less than the server's redeclaration period ago; metadata `next_declaration_unix_ms` says from when it may declare again (FAILED_PRECONDITION).</summary>
    InventoryTooSoon = 31,
}

/// <summary>
/// The contract's spelling of each reason (PUBLIC_KEY_INVALID for <see cref="CapacityRefusalReason.PublicKeyInvalid"/>),
/// which the engine stores beside a refused attestation report; the server's drift test holds every
/// one to the proto.
/// </summary>
internal static class CapacityRefusalNames
{
    private static readonly string[] Names = ContractNames.Of<CapacityRefusalReason>("CAPACITY_REFUSAL_UNSPECIFIED");

    public static string ContractName(this CapacityRefusalReason reason) => Names[(int)reason];
}
