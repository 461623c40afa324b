using System.Security.Cryptography.X509Certificates;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Metering.Engine.Access;
using Metering.Engine.Storage;
using Metering.Protocol.V1;

namespace Metering.Server.Access;

/// <summary>
/// Authenticates and authorises every call before its handler runs. A call without a valid,
/// unrevoked "authorization: Bearer &lt;key&gt;" ends with UNAUTHENTICATED; a role the access
/// policy does not allow for the method ends with PERMISSION_DENIED. A key pinned to a client
/// certificate that the connection did not present ends with UNAUTHENTICATED and the reason
/// CLIENT_CERTIFICATE_REQUIRED or CLIENT_CERTIFICATE_MISMATCH: without the certificate the caller
/// has not proven who it is, so the call is unauthenticated rather than denied. None touches anything.
/// Results are cached briefly (<see cref="KeyLookupCache"/>); a key not seen valid lately costs
/// its peer a token of the unknown-key bucket before it is looked up, so a peer cycling through
/// bogus keys is refused with UNKNOWN_KEYS_PER_PEER_EXCEEDED without a database query each.
/// The published lists (<see cref="AccessPolicy.IsPublic"/>) are served to anyone, unauthenticated.
/// </summary>
internal sealed class AuthenticationInterceptor(KeyLookupCache credentials, CallLimiter limiter) : Interceptor
{
    private const string ActorKey = "metering.actor";

    /// <summary>The key of an "authorization: Bearer &lt;key&gt;" header, or null.</summary>
    public static string? KeyOf(ServerCallContext context)
    {
        string? header = context.RequestHeaders.GetValue("authorization");
        return header is not null && header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase) ? header["Bearer ".Length..].Trim() : null;
    }

    public static Actor Caller(ServerCallContext context) =>
        CallerOrNull(context) ?? throw new InvalidOperationException("The call was not authenticated.");

    /// <summary>The authenticated caller, or null for a published method, which is served without a key.</summary>
    public static Actor? CallerOrNull(ServerCallContext context) =>
        context.UserState.TryGetValue(ActorKey, out object? actor) && actor is Actor caller ? caller : null;

    public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        await AuthoriseAsync(context);
        return await continuation(request, context);
    }

    public override async Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
    {
        await AuthoriseAsync(context);
        return await continuation(requestStream, context);
    }

    public override async Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        await AuthoriseAsync(context);
        await continuation(request, responseStream, context);
    }

    public override async Task DuplexStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, DuplexStreamingServerMethod<TRequest, TResponse> continuation)
    {
        await AuthoriseAsync(context);
        await continuation(requestStream, responseStream, context);
    }

    private async Task AuthoriseAsync(ServerCallContext context)
    {
        if (AccessPolicy.IsPublic(context.Method))
        {
            // Published lists are for everyone; no key is looked up, and none is recorded.
            return;
        }

        string? header = context.RequestHeaders.GetValue("authorization");
        Authentication found = await LookUpAsync(KeyOf(context), context)
            ?? throw CallerRefusals.Refused(CallerRefusal.Unauthenticated,
                header is null ? "no authorization header; send 'authorization: Bearer <api key>'" : "the API key is not valid, or it was revoked");
        X509Certificate2? presented = context.GetHttpContext().Connection.ClientCertificate;
        if (ClientCertificatePin.Check(found.ClientCertificateSha256, presented) is { } refused)
        {
            Dictionary<string, string>? metadata = presented is null ? null
                : new() { ["presented_sha256"] = Convert.ToHexStringLower(ClientCertificatePin.Sha256(presented)) };
            throw CallerRefusals.Refused(refused.Reason, refused.Message, metadata);
        }

        Actor actor = found.Actor;
        AccessPolicy.Authorise(context.Method, actor);
        context.UserState[ActorKey] = actor;
    }

    private async ValueTask<Authentication?> LookUpAsync(string? key, ServerCallContext context)
    {
        if (!KeyLookupCache.IsWellFormed(key))
        {
            return null;
        }

        if (credentials.TryGetFresh(key!, out Authentication? remembered))
        {
            return remembered;
        }

        if (!credentials.WasSeenValid(key!))
        {
            string peer = CallLimiter.PeerOf(context);
            if (!limiter.TakeUnknownKeyToken(peer))
            {
                throw limiter.UnknownKeysRefusal(peer);
            }
        }

        try
        {
            return await credentials.LookUpAsync(key!, context.CancellationToken);
        }
        catch (Exception e) when (ReplicationDurability.IsDatabaseLostWithin(e))
        {
            // The look-up runs outside RefusalInterceptor; its database going away reads as it does
            // in every handler, not as an unknown fault.
            throw Errors.CallLostDatabase();
        }
    }
}
