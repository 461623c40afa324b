using Metering.Engine.Registry;
using Metering.Protocol.V1;

namespace Metering.Server.Registry;

/// <summary>Maps reconsiderations between the engine's records and registry.proto, at the edge.</summary>
internal static class ReconsiderationMessages
{
    public static Reconsideration ToMessage(ReconsiderationCase reconsideration) => new()
    {
        ApplicationId = reconsideration.ApplicationId,
        CreditCode = reconsideration.ProviderId,
        RefusedStage = reconsideration.RefusedStage,
        RefusedUnixMs = reconsideration.RefusedAt.ToUnixTimeMilliseconds(),
        WindowEndsUnixMs = reconsideration.WindowEndsAt.ToUnixTimeMilliseconds(),
        RequestedBy = reconsideration.RequestedBy,
        RequestedUnixMs = reconsideration.RequestedAt.ToUnixTimeMilliseconds(),
        Grounds = reconsideration.Grounds,
        Status = reconsideration.Status switch
        {
            ReconsiderationProgress.Upheld => ReconsiderationStatus.ReconsiderationUpheld,
            ReconsiderationProgress.Dismissed => ReconsiderationStatus.ReconsiderationDismissed,
            _ => ReconsiderationStatus.ReconsiderationPending,
        },
        DecidedBy = reconsideration.DecidedBy ?? "",
        DecidedUnixMs = reconsideration.DecidedAt?.ToUnixTimeMilliseconds() ?? 0,
        Reasons = reconsideration.Reasons ?? "",
        ApplicationState = RegistryMapping.ToWire(Names.StateOf(reconsideration.ApplicationState)),
        PendingProposalNo = (uint)reconsideration.PendingProposalNo,
    };

    /// <summary>The verdict asked for; an unspecified or unknown one is refused as FIELD_INVALID.</summary>
    public static ReconsiderationRuling VerdictOf(ReconsiderationVerdict verdict) => verdict switch
    {
        ReconsiderationVerdict.ReconsiderationUphold => ReconsiderationRuling.Uphold,
        ReconsiderationVerdict.ReconsiderationDismiss => ReconsiderationRuling.Dismiss,
        _ => throw new RegistryRefusedException(RegistryRefusalReason.FieldInvalid, "verdict must be RECONSIDERATION_UPHOLD or RECONSIDERATION_DISMISS"),
    };

    /// <summary>The wire reason of each engine refusal; the gRPC status follows from it (Errors.CodeFor).</summary>
    public static RegistryRefusalReason ReasonFor(ReconsiderationRefusal refusal) => refusal switch
    {
        ReconsiderationRefusal.ReasonRequired => RegistryRefusalReason.ReasonRequired,
        ReconsiderationRefusal.FieldInvalid => RegistryRefusalReason.FieldInvalid,
        ReconsiderationRefusal.OtherProvider => RegistryRefusalReason.OtherProvider,
        ReconsiderationRefusal.ApplicationUnknown => RegistryRefusalReason.ApplicationUnknown,
        ReconsiderationRefusal.NotRejected => RegistryRefusalReason.ApplicationNotRejected,
        ReconsiderationRefusal.NotReconsiderable => RegistryRefusalReason.NotReconsiderable,
        ReconsiderationRefusal.WindowClosed => RegistryRefusalReason.ReconsiderationWindowClosed,
        ReconsiderationRefusal.AlreadyRequested => RegistryRefusalReason.ReconsiderationAlreadyRequested,
        ReconsiderationRefusal.NonePending => RegistryRefusalReason.NoPendingReconsideration,
        ReconsiderationRefusal.AlreadyDecided => RegistryRefusalReason.AlreadyDecided,
        ReconsiderationRefusal.ServiceItemTaken => RegistryRefusalReason.ServiceItemTaken,
        _ => throw new ArgumentOutOfRangeException(nameof(refusal), refusal, "a reconsideration refusal without a wire reason"),
    };
}
