using Google.Protobuf.Reflection;
using Grpc.Core;
using Metering.Engine.Access;
using Metering.Protocol.V1;

namespace Metering.Server.Access;

/// <summary>The wire names and statuses of the engine's credential refusals, in one place for the server and the CLI's bootstrap.</summary>
public static class CredentialRefusals
{
    private static readonly EnumDescriptor RefusalNames = AccessReflection.Descriptor.FindTypeByName<EnumDescriptor>(nameof(AccessRefusal));

    /// <summary>The status and reason name of each engine refusal, as access.proto documents them.</summary>
    public static (StatusCode Code, string Reason) StatusOf(CredentialRefusal refusal) => refusal switch
    {
        CredentialRefusal.SubjectInvalid => (StatusCode.InvalidArgument, Name(AccessRefusal.SubjectInvalid)),
        CredentialRefusal.LabelInvalid => (StatusCode.InvalidArgument, Name(AccessRefusal.LabelInvalid)),
        CredentialRefusal.PinInvalid => (StatusCode.InvalidArgument, Name(AccessRefusal.PinInvalid)),
        CredentialRefusal.CreditCodeInvalid => (StatusCode.InvalidArgument, ProtocolNames.Of(RegistryRefusal.CreditCodeInvalid)),
        CredentialRefusal.OrganisationUnknown => (StatusCode.NotFound, ProtocolNames.Of(RegistryRefusal.OrganisationUnknown)),
        CredentialRefusal.CredentialUnknown => (StatusCode.NotFound, Name(AccessRefusal.CredentialUnknown)),
        CredentialRefusal.CredentialRevoked => (StatusCode.FailedPrecondition, Name(AccessRefusal.CredentialRevoked)),
        CredentialRefusal.OperatorKeyExists => (StatusCode.FailedPrecondition, Name(AccessRefusal.OperatorKeyExists)),
        _ => throw new ArgumentOutOfRangeException(nameof(refusal), refusal, null),
    };

    /// <summary>An access refusal as the .proto spells it (CREDENTIAL_UNKNOWN, ...).</summary>
    public static string Name(AccessRefusal refusal) => RefusalNames.FindValueByNumber((int)refusal).Name;
}
