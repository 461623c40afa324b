namespace Metering.Engine.Access;

/// <summary>Why a credential change was refused. The server names each on the wire (access.proto).</summary>
public enum CredentialRefusal
{
    /// <summary>The subject is empty or longer than <see cref="CredentialStore.SubjectLengthMax"/>.</summary>
    SubjectInvalid,

    /// <summary>The label is longer than <see cref="CredentialStore.LabelLengthMax"/>.</summary>
    LabelInvalid,

    /// <summary>A provider credential's subject is not a valid unified social credit code.</summary>
    CreditCodeInvalid,

    /// <summary>A provider credential names an organisation that is not registered.</summary>
    OrganisationUnknown,

    /// <summary>A client certificate pin is not a SHA-256 (32 bytes).</summary>
    PinInvalid,

    /// <summary>No credential has that id.</summary>
    CredentialUnknown,

    /// <summary>The credential is revoked; a revoked credential is never changed again.</summary>
    CredentialRevoked,

    /// <summary>A bootstrap was asked for while an unrevoked operator key exists.</summary>
    OperatorKeyExists,
}

/// <summary>A credential was not issued or changed, for a stated reason; nothing was written.</summary>
public sealed class CredentialRefusedException(CredentialRefusal reason, string message) : Exception(message)
{
    public CredentialRefusal Reason { get; } = reason;
}
