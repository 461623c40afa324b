using Google.Protobuf.Reflection;
using Grpc.Core;
using Metering.Protocol.V1;

namespace Metering.Server.Access;

/// <summary>
/// The refusals of a caller, made before any service runs (access.proto's CallerRefusal): the
/// reason each travels as, and its status. The value names carry the enum's prefix, which the
/// reason leaves out, so the strings clients match on stay UNAUTHENTICATED, ROLE_NOT_ALLOWED and
/// CLIENT_CERTIFICATE_REQUIRED / _MISMATCH.
/// </summary>
internal static class CallerRefusals
{
    /// <summary>The prefix every CallerRefusal value's name carries and its reason leaves out.</summary>
    public const string NamePrefix = "CALLER_REFUSAL_";

    private static readonly EnumDescriptor RefusalNames = AccessReflection.Descriptor.FindTypeByName<EnumDescriptor>(nameof(CallerRefusal));

    /// <summary>The ErrorInfo reason of <paramref name="refusal"/>: its name in access.proto without <see cref="NamePrefix"/>.</summary>
    public static string Reason(CallerRefusal refusal) => RefusalNames.FindValueByNumber((int)refusal).Name[NamePrefix.Length..];

    /// <summary>The gRPC status of each refusal, as access.proto documents it.</summary>
    public static StatusCode CodeFor(CallerRefusal refusal) => refusal switch
    {
        CallerRefusal.Unauthenticated or CallerRefusal.ClientCertificateRequired or CallerRefusal.ClientCertificateMismatch => StatusCode.Unauthenticated,
        CallerRefusal.RoleNotAllowed => StatusCode.PermissionDenied,
        _ => throw new ArgumentOutOfRangeException(nameof(refusal), refusal, null),
    };

    public static RpcException Refused(CallerRefusal refusal, string message, IDictionary<string, string>? metadata = null) =>
        Errors.Refused(CodeFor(refusal), Reason(refusal), message, metadata);
}
