using Google.Protobuf;
using Grpc.Core;
using Metering.Engine.Access;
using Metering.Protocol.V1;
using Microsoft.Extensions.Logging;
using EngineRole = Metering.Engine.Access.Role;

namespace Metering.Server.Access;

/// <summary>
/// Credential management over gRPC (access.proto). The access policy lets only operator keys in;
/// the acting operator is the authenticated caller. Requests are mapped to the engine's
/// <see cref="CredentialStore"/> here, and its refusals back to statuses and reasons. A revocation
/// or a pin change empties the authentication cache, so that the key is looked up afresh on the
/// next call to this server.
/// </summary>
internal sealed partial class AccessGrpcService(CredentialStore credentials, KeyLookupCache cache, ILogger<AccessGrpcService> logger) : AccessService.AccessServiceBase
{
    /// <summary>Credentials a ListKeys page holds when the request leaves the size out.</summary>
    public const int ListPageDefault = 500;

    public override Task<IssueKeyResponse> IssueKey(IssueKeyRequest request, ServerCallContext context) =>
        Run(context, "IssueKey", async (actor, ct) =>
        {
            EngineRole role = RoleOf(request.Role);
            byte[]? pin = request.ClientCertificateSha256.IsEmpty ? null : request.ClientCertificateSha256.ToByteArray();
            var (credential, key) = await credentials.IssueAsync(actor, role, request.Subject, request.Label, ct, pin);
            LogIssued(logger, credential.CredentialId, Actor.NameOf(credential.Role), credential.Subject, actor.ToString());
            return new IssueKeyResponse { Credential = ToMessage(credential), Key = key };
        });

    public override Task<Credential> RevokeKey(RevokeKeyRequest request, ServerCallContext context) =>
        Run(context, "RevokeKey", async (actor, ct) =>
        {
            CredentialInfo revoked = await credentials.RevokeAsync(actor, request.CredentialId, ct);
            cache.Forget();
            LogRevoked(logger, revoked.CredentialId, actor.ToString());
            return ToMessage(revoked);
        });

    public override Task<Credential> PinKey(PinKeyRequest request, ServerCallContext context) =>
        Run(context, "PinKey", async (actor, ct) =>
        {
            byte[]? pin = request.ChangeCase switch
            {
                PinKeyRequest.ChangeOneofCase.ClientCertificateSha256 => request.ClientCertificateSha256.ToByteArray(),
                PinKeyRequest.ChangeOneofCase.Unpin when request.Unpin => null,
                _ => throw new CredentialRefusedException(CredentialRefusal.PinInvalid, "give client_certificate_sha256 to pin the key, or unpin = true to remove its pin"),
            };
            CredentialInfo changed = await credentials.PinAsync(actor, request.CredentialId, pin, ct);
            cache.Forget();
            return ToMessage(changed);
        });

    public override Task<ListKeysResponse> ListKeys(ListKeysRequest request, ServerCallContext context) =>
        Run(context, "ListKeys", async (actor, ct) =>
        {
            if (request.PageSize > CredentialStore.ListPageMax)
            {
                throw Errors.Refused(StatusCode.InvalidArgument, CredentialRefusals.Name(AccessRefusal.PageSizeInvalid),
                    $"a page holds at most {CredentialStore.ListPageMax} credentials, not {request.PageSize}");
            }

            int pageSize = request.PageSize == 0 ? ListPageDefault : (int)request.PageSize;
            IReadOnlyList<CredentialInfo> page = await credentials.ListAsync(request.AfterCredentialId, pageSize, ct);
            var response = new ListKeysResponse { NextAfterCredentialId = page.Count == pageSize ? page[^1].CredentialId : 0 };
            response.Credentials.AddRange(page.Select(ToMessage));
            return response;
        });

    /// <summary>
    /// Runs a call as its authenticated caller. RefusalInterceptor turns credential refusals into statuses and
    /// logs them with the gRPC method, which <paramref name="method"/> names where the call is written.
    /// </summary>
    private Task<T> Run<T>(ServerCallContext context, string method, Func<Actor, CancellationToken, Task<T>> call) =>
        call(AuthenticationInterceptor.Caller(context), context.CancellationToken);

    private static EngineRole RoleOf(CredentialRole role) => role switch
    {
        CredentialRole.Provider => EngineRole.Provider,
        CredentialRole.Operator => EngineRole.Operator,
        CredentialRole.Auditor => EngineRole.Auditor,
        CredentialRole.Settlement => EngineRole.Settlement,
        _ => throw Errors.Refused(StatusCode.InvalidArgument, CredentialRefusals.Name(AccessRefusal.RoleUnknown),
            $"role {role} is not one of provider, operator, auditor or settlement"),
    };

    private static CredentialRole MessageRole(EngineRole role) => role switch
    {
        EngineRole.Provider => CredentialRole.Provider,
        EngineRole.Operator => CredentialRole.Operator,
        EngineRole.Auditor => CredentialRole.Auditor,
        EngineRole.Settlement => CredentialRole.Settlement,
        _ => CredentialRole.Unspecified,
    };

    private static Credential ToMessage(CredentialInfo info) => new()
    {
        CredentialId = info.CredentialId,
        Role = MessageRole(info.Role),
        Subject = info.Subject,
        Label = info.Label,
        IssuedBy = info.IssuedBy,
        IssuedAtUnixMs = info.IssuedAt.ToUnixTimeMilliseconds(),
        RevokedBy = info.RevokedBy ?? "",
        RevokedAtUnixMs = info.RevokedAt?.ToUnixTimeMilliseconds() ?? 0,
        ClientCertificateSha256 = info.ClientCertificateSha256 is { } pin ? ByteString.CopyFrom(pin) : ByteString.Empty,
    };

    [LoggerMessage(EventId = 8002, Level = LogLevel.Information, Message = "Issued credential {CredentialId} ({Role} {Subject}) by {Actor}")]
    private static partial void LogIssued(ILogger logger, long credentialId, string role, string subject, string actor);

    [LoggerMessage(EventId = 8003, Level = LogLevel.Information, Message = "Revoked credential {CredentialId} by {Actor}")]
    private static partial void LogRevoked(ILogger logger, long credentialId, string actor);
}
