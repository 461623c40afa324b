using Google.Protobuf.WellKnownTypes;
using Google.Rpc;
using Grpc.Core;
using Metering.Engine.Access;
using Metering.Engine.Audit;
using Metering.Engine.Capacity;
using Metering.Engine.Ingest;
using Metering.Engine.Registry;
using Metering.Engine.Transparency;
using Metering.Protocol.V1;
using Metering.Server.Access;
using Metering.Server.Localization;
using Metering.Server.Registry;

namespace Metering.Server;

/// <summary>
/// Builds refusals as the contract promises: a gRPC status plus a google.rpc.ErrorInfo whose
/// reason is the IngestRefusal name (in the proto's UPPER_SNAKE form) and whose metadata carries
/// the offending sequence, and a google.rpc.LocalizedMessage in Chinese (zh-CN) for the person
/// reading it (Localization/refusals.zh-CN.tsv).
/// </summary>
public static class Errors
{
    public const string Domain = "metering.v1";

    public static RpcException Refused(StatusCode code, IngestRefusal reason, string message, IDictionary<string, string>? metadata = null) =>
        Refused(code, ProtocolNames.Of(reason), message, metadata);

    /// <summary>A refusal with a reason name from any of the contract's refusal enums.</summary>
    public static RpcException Refused(StatusCode code, string reason, string message, IDictionary<string, string>? metadata = null)
    {
        var info = new ErrorInfo { Reason = reason, Domain = Domain };
        if (metadata is not null)
        {
            info.Metadata.Add(metadata);
        }

        var status = new Google.Rpc.Status
        {
            Code = (int)code,
            Message = message,
            Details = { Any.Pack(info) },
        };
        if (RefusalMessages.ChineseFor(reason) is { } chinese)
        {
            status.Details.Add(Any.Pack(new LocalizedMessage { Locale = RefusalMessages.Locale, Message = chinese }));
        }

        return status.ToRpcException();
    }

    /// <summary>
    /// The refusal for a call that lost its database (a failover, a restart, a network cut, a
    /// standby answering a write): UNAVAILABLE with reason DATABASE_UNAVAILABLE, the same for every
    /// service, so that a client retries it once a primary answers again.
    /// </summary>
    public static RpcException DatabaseUnavailable(string whatNow) =>
        Refused(StatusCode.Unavailable, IngestRefusal.DatabaseUnavailable, $"the database is unavailable (a failover, a restart or a network cut); {whatNow}");

    /// <summary>
    /// What any call but an ingest stream is told when it loses its database. Nothing it wrote was
    /// acknowledged: a write that reached its commit may stand or not, and the write's retry finds
    /// out (a settled day answers already_closed, a registered organisation ORGANISATION_EXISTS, an
    /// upload its report under the same file hash).
    /// </summary>
    public static RpcException CallLostDatabase() =>
        DatabaseUnavailable("nothing this call did is acknowledged; retry once the database answers again");

    public static RpcException From(IngestRefusedException refused)
    {
        var metadata = new Dictionary<string, string>();
        if (refused.Sequence is ulong sequence)
        {
            metadata["sequence"] = sequence.ToString(System.Globalization.CultureInfo.InvariantCulture);
        }

        if (refused.ExpectedSequence is ulong expected)
        {
            metadata["expected"] = expected.ToString(System.Globalization.CultureInfo.InvariantCulture);
        }

        return Refused(Ingest.IngestRefusals.StatusFor(refused.Refusal.Reason), Ingest.IngestRefusals.ToWire(refused.Refusal.Reason), refused.Refusal.Message, metadata);
    }

    public static RpcException From(RegistryRefusedException refused) =>
        Refused(RegistryRefusals.StatusOf(refused.Reason), ProtocolNames.Of(RegistryRefusals.ToProto(refused.Reason)), refused.Message, refused.Metadata.ToDictionary());

    /// <summary>A reconsideration refusal travels as the registry reason it stands for (registry.proto).</summary>
    public static RpcException From(ReconsiderationRefusedException refused) =>
        From(new RegistryRefusedException(ReconsiderationMessages.ReasonFor(refused.Reason), refused.Message, refused.Metadata));

    public static RpcException From(CredentialRefusedException refused)
    {
        var (code, reason) = CredentialRefusals.StatusOf(refused.Reason);
        return Refused(code, reason, refused.Message);
    }

    /// <summary>A transparency log refusal with the status transparency.proto documents for it.</summary>
    public static RpcException From(TransparencyLogException refused)
    {
        (StatusCode code, LogRefusal reason) = refused.Problem switch
        {
            LogProblem.ArgumentInvalid => (StatusCode.InvalidArgument, LogRefusal.LogArgumentInvalid),
            LogProblem.LeafNotFound => (StatusCode.NotFound, LogRefusal.LogLeafNotFound),
            LogProblem.HeadNotFound => (StatusCode.NotFound, LogRefusal.LogHeadNotFound),
            LogProblem.BeyondLog => (StatusCode.OutOfRange, LogRefusal.LogBeyondLog),
            _ => (StatusCode.ResourceExhausted, LogRefusal.LogLimitExceeded),
        };
        return Refused(code, ProtocolNames.Of(reason), refused.Message);
    }

    /// <summary>An audit read of a record or day that is not there (audit.proto's AUDIT_NOT_FOUND).</summary>
    public static RpcException From(RecordNotFoundException refused) =>
        Refused(StatusCode.NotFound, ProtocolNames.Of(AuditRefusal.AuditNotFound), refused.Message);

    /// <summary>An audit read of a day not yet settled (audit.proto's AUDIT_NOT_FOUND).</summary>
    public static RpcException From(DayNotSettledException refused) =>
        Refused(StatusCode.NotFound, ProtocolNames.Of(AuditRefusal.AuditNotFound), refused.Message);

    /// <summary>An audit answer past what one call may carry (audit.proto's AUDIT_LIMIT_EXCEEDED).</summary>
    public static RpcException From(AuditLimitExceededException refused) =>
        Refused(StatusCode.ResourceExhausted, ProtocolNames.Of(AuditRefusal.AuditLimitExceeded), refused.Message);

    public static RpcException From(CapacityRefusedException refused) =>
        Refused(Capacity.CapacityRefusals.StatusFor(refused.Reason), ProtocolNames.Of(Capacity.CapacityRefusals.ToWire(refused.Reason)), refused.Message, refused.Metadata.ToDictionary());

    /// <summary>The gRPC status each capacity refusal carries, as capacity.proto documents it.</summary>
    public static StatusCode CodeFor(CapacityRefusal reason) => reason switch
    {
        CapacityRefusal.PublicKeyInvalid or CapacityRefusal.InventoryInvalid or CapacityRefusal.ReportMalformed
            or CapacityRefusal.ChecksumInvalid or CapacityRefusal.MeasurementForged or CapacityRefusal.WorkSizeRefused
            or CapacityRefusal.CommitmentMismatch or CapacityRefusal.CommitmentMalformed or CapacityRefusal.DurationBelowFloor
            or CapacityRefusal.DeviceUuidMismatch => StatusCode.InvalidArgument,
        CapacityRefusal.NoncesExhausted or CapacityRefusal.VerificationBusy => StatusCode.ResourceExhausted,
        CapacityRefusal.SignatureInvalid => StatusCode.PermissionDenied,
        CapacityRefusal.AttestationReplayed or CapacityRefusal.CommitmentRepeated or CapacityRefusal.DeviceUuidTaken => StatusCode.AlreadyExists,
        CapacityRefusal.ValidationUnknown => StatusCode.NotFound,
        _ => StatusCode.FailedPrecondition,
    };

    /// <summary>The gRPC status each registry refusal carries, as registry.proto documents it.</summary>
    public static StatusCode CodeFor(RegistryRefusal reason) => reason switch
    {
        RegistryRefusal.RoleNotAllowed or RegistryRefusal.OtherProvider or RegistryRefusal.SameOperator => StatusCode.PermissionDenied,
        RegistryRefusal.FieldInvalid or RegistryRefusal.CreditCodeInvalid or RegistryRefusal.NotRegisteredInShenzhen
            or RegistryRefusal.DeviceModelUnknown or RegistryRefusal.ReasonRequired or RegistryRefusal.FeeScheduleInvalid
            or RegistryRefusal.PeriodInvalid or RegistryRefusal.BatchRulesInvalid or RegistryRefusal.VerifierPartInvalid => StatusCode.InvalidArgument,
        RegistryRefusal.OrganisationUnknown or RegistryRefusal.BatchUnknown or RegistryRefusal.ApplicationUnknown
            or RegistryRefusal.ServiceItemUnknown => StatusCode.NotFound,
        RegistryRefusal.OrganisationExists or RegistryRefusal.ServiceItemTaken or RegistryRefusal.NoticeNumberTaken
            or RegistryRefusal.ReconsiderationAlreadyRequested => StatusCode.AlreadyExists,
        RegistryRefusal.AlreadyDecided => StatusCode.Aborted,
        _ => StatusCode.FailedPrecondition,
    };

    /// <summary>The gRPC status each refusal carries; the proto documents the same table.</summary>
    public static StatusCode CodeFor(IngestRefusal reason) => reason switch
    {
        IngestRefusal.ProviderNotAdmitted or IngestRefusal.ProviderSuspended or IngestRefusal.AdmissionExpired
            or IngestRefusal.AdmissionWithdrawn or IngestRefusal.AdmissionRevoked or IngestRefusal.OrganisationNotRegistered
            or IngestRefusal.ProofNotAllowed or IngestRefusal.ConcurrencyAboveFleet => StatusCode.FailedPrecondition,
        IngestRefusal.RegistryBusy or IngestRefusal.ReplicationNotDurable or IngestRefusal.DatabaseUnavailable => StatusCode.Unavailable,
        IngestRefusal.Unauthenticated or IngestRefusal.ClientCertificateRequired or IngestRefusal.ClientCertificateMismatch => StatusCode.Unauthenticated,
        IngestRefusal.StreamNotOpen => StatusCode.FailedPrecondition,
        IngestRefusal.SequenceGap => StatusCode.FailedPrecondition,
        IngestRefusal.BatchTooLarge or IngestRefusal.HeartbeatsTooFrequent => StatusCode.ResourceExhausted,
        IngestRefusal.TamperConflict => StatusCode.AlreadyExists,
        IngestRefusal.StreamTakenOver => StatusCode.Aborted,
        _ => StatusCode.InvalidArgument,
    };
}
