using Metering.Engine.Formatting;

namespace Metering.Engine.Ingest;

/// <summary>
/// Why ingest refused a stream, a batch or a record. The engine's own enum: the server maps it by
/// value to the wire's IngestRefusal (proto/metering/v1/ingest.proto), and a test keeps the two with
/// the same names and numbers.
/// </summary>
public enum IngestRefusalReason
{
    /// <summary>Not used.</summary>
    Unspecified = 0,

    /// <summary>No valid bearer API key (gRPC UNAUTHENTICATED). The server sends this reason as CallerRefusal's (access.proto), whose reason string is the same; the value stays for code that matches on it.</summary>
    Unauthenticated = 1,

    /// <summary>The first message was not `open` (a batch or a heartbeat came before it), or `open` was sent twice (FAILED_PRECONDITION). A message with no `kind` set is MESSAGE_MALFORMED instead.</summary>
    StreamNotOpen = 2,

    /// <summary>stream_id is empty, too long or has characters outside [A-Za-z0-9._:-] (INVALID_ARGUMENT).</summary>
    StreamIdInvalid = 3,

    /// <summary>The batch has more records than batch_records_max, or its records cover more device-model minutes than the server's concurrency check takes in one batch (RESOURCE_EXHAUSTED).</summary>
    BatchTooLarge = 4,

    /// <summary>The batch is empty (INVALID_ARGUMENT).</summary>
    BatchEmpty = 5,

    /// <summary>A record's sequence is not the next one after the committed mark or the previous record (FAILED_PRECONDITION); metadata `expected` gives the sequence the server wants.</summary>
    SequenceGap = 6,

    /// <summary>A replay of a committed sequence number carries different content; it is recorded as a tamper conflict, keeping the offered record's chain hash and its first 1,024 canonical bytes (ALREADY_EXISTS).</summary>
    TamperConflict = 7,

    /// <summary>device_model is not in the device catalog (INVALID_ARGUMENT).</summary>
    UnknownDeviceModel = 8,

    /// <summary>end_unix_ms is not after start_unix_ms (INVALID_ARGUMENT).</summary>
    EndNotAfterStart = 9,

    /// <summary>The record is longer than record_duration_max (INVALID_ARGUMENT).</summary>
    DurationTooLong = 10,

    /// <summary>Start or end lies more than the allowed clock skew in the future (INVALID_ARGUMENT).</summary>
    TimeInFuture = 11,

    /// <summary>device_count is 0 or above device_count_max (INVALID_ARGUMENT).</summary>
    DeviceCountOutOfRange = 12,

    /// <summary>The share is not in (0, 1], or its denominator is 0 or above 1000 (INVALID_ARGUMENT).</summary>
    ShareOutOfRange = 13,

    /// <summary>holder_code is not 18 characters of the code alphabet or its check character is wrong (INVALID_ARGUMENT).</summary>
    HolderCodeInvalid = 14,

    /// <summary>job_id is empty or too long (INVALID_ARGUMENT).</summary>
    JobIdInvalid = 15,

    /// <summary>site is empty or too long (INVALID_ARGUMENT).</summary>
    SiteInvalid = 16,

    /// <summary>More device UUIDs than devices, or a UUID too long or empty (INVALID_ARGUMENT).</summary>
    DeviceUuidsInvalid = 17,

    /// <summary>Start lies before the earliest time the server accepts (INVALID_ARGUMENT).</summary>
    TimeTooOld = 18,

    /// <summary>Another connection opened the same stream; this one is closed (ABORTED).</summary>
    StreamTakenOver = 19,

    /// <summary>energy_mwh is above what the devices could draw: 5 kW per device for the record's duration (INVALID_ARGUMENT).</summary>
    EnergyOutOfRange = 20,

    /// <summary>The provider held no admitted service item at the record's time: it was never admitted, or the record starts before its admission (FAILED_PRECONDITION).</summary>
    ProviderNotAdmitted = 21,

    /// <summary>The provider's admission was suspended during the record (FAILED_PRECONDITION).</summary>
    ProviderSuspended = 22,

    /// <summary>The record runs past the end of the provider's admission validity (FAILED_PRECONDITION). A renewal admitted before that end continues the admission from the same instant, and a record running across it is taken; a renewal admitted later leaves a gap refused with this.</summary>
    AdmissionExpired = 23,

    /// <summary>The provider withdrew from the programme before the record ended (FAILED_PRECONDITION).</summary>
    AdmissionWithdrawn = 24,

    /// <summary>The provider's admission was revoked before the record ended (FAILED_PRECONDITION).</summary>
    AdmissionRevoked = 25,

    /// <summary>A `proof:` stream was opened by an organisation the registry does not hold (FAILED_PRECONDITION). Proof streams carry the metering-log proof an applicant files.</summary>
    OrganisationNotRegistered = 26,

    /// <summary>A `proof:` stream refused the record: the organisation is on an integrity list, or the stream already holds the most a proof may (10,000 records) (FAILED_PRECONDITION).</summary>
    ProofNotAllowed = 27,

    /// <summary>The registry entries of the provider changed repeatedly while the batch was being committed; nothing was committed. Resume (UNAVAILABLE).</summary>
    RegistryBusy = 28,

    /// <summary>The record would make the provider use more devices of its model at once, over all its usage streams, than its fleet of that model holds (FAILED_PRECONDITION). The bound is always enforced, per model, from the first source that covers the model, as of the commit: the model's devices in the provider's current fleet validation (CapacityService) where its inventory holds the model; otherwise the devices the commissioned verifier confirmed for the model (the commissioned verifier's figure, registry VerificationPart, of an admitted application; the larger count where two confirm one model); otherwise the devices its admitted applications declared (summed over sites; the larger count where two admitted service items declare one site and model). So a provider with no validation is bounded by its declaration, and one whose validation covers its NVIDIA nodes keeps its verifier-confirmed (else declared) Ascend devices as their bound. A model no source covers has a fleet of 0. The detail names the figure and its source. (The audit judges past usage against the validation in force when it ran.) Concurrency is the sum of device_count × share of every record covering a second, counted in whole seconds.</summary>
    ConcurrencyAboveFleet = 29,

    /// <summary>The connection sent more than heartbeats_per_minute_max heartbeats in one minute of the server's clock (RESOURCE_EXHAUSTED). Nothing of the refused heartbeat was recorded.</summary>
    HeartbeatsTooFrequent = 30,

    /// <summary>A heartbeat's client_unix_ms lies further from the server's clock than the server's heartbeat_clock_skew_max (a day by default): the client's clock is broken (INVALID_ARGUMENT). Nothing of the refused heartbeat was recorded.</summary>
    ClientClockOutOfRange = 31,

    /// <summary>The API key is pinned to a client certificate (mutual TLS), and the connection presented none (gRPC UNAUTHENTICATED). Connect over https:// with the pinned certificate and its key. Sent as CallerRefusal's reason of the same string (access.proto).</summary>
    ClientCertificateRequired = 32,

    /// <summary>The API key is pinned to a client certificate, and the connection presented another one (gRPC UNAUTHENTICATED). Metadata `presented_sha256` gives the SHA-256 of the one presented. Sent as CallerRefusal's reason of the same string (access.proto).</summary>
    ClientCertificateMismatch = 33,

    /// <summary>A message on the stream is not an IngestRequest: its bytes do not parse, a string field holds bytes that are not UTF-8 (protobuf requires UTF-8, so such text is refused, never replaced by U+FFFD), or no `kind` is set (INVALID_ARGUMENT). Nothing of that message was kept; what was acknowledged before it stands.</summary>
    MessageMalformed = 34,

    /// <summary>sm_active_bp is above 10,000 basis points: a device cannot be busy more than all of the time (INVALID_ARGUMENT). Nothing of the batch was committed.</summary>
    SmActiveOutOfRange = 35,

    /// <summary>The server requires durable replication and the database does not provide it now: synchronous_commit is neither on nor remote_apply, no synchronous standby is attached, or the server is connected to a standby (UNAVAILABLE). Metadata `why` names the condition.</summary>
    ReplicationNotDurable = 36,

    /// <summary>The server lost its database in the middle of the call (a failover, a restart, a network cut) or reached a read-only standby (UNAVAILABLE); reconnect and resume.</summary>
    DatabaseUnavailable = 37,
}

/// <summary>The contract's spelling of an ingest refusal reason, for what the engine stores under it.</summary>
internal static class IngestRefusalNames
{
    private static readonly string[] Names = ContractNames.Of<IngestRefusalReason>("INGEST_REFUSAL_UNSPECIFIED");

    public static string ContractName(this IngestRefusalReason reason) => Names[(int)reason];
}
