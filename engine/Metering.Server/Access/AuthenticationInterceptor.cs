using Grpc.Core;
using Grpc.Core.Interceptors;
using Metering.Protocol.V1;

namespace Metering.Server.Access;

/// <summary>
/// Authenticates every call before its handler runs: a call without a valid
/// "authorization: Bearer &lt;key&gt;" header ends with UNAUTHENTICATED and touches nothing.
/// </summary>
internal sealed class AuthenticationInterceptor(ApiKeys keys) : Interceptor
{
    private const string IdentityKey = "metering.identity";

    public static CallerIdentity Caller(ServerCallContext context) =>
        context.UserState.TryGetValue(IdentityKey, out object? identity) && identity is CallerIdentity caller
            ? caller
            : throw new InvalidOperationException("The call was not authenticated.");

    public override Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        Authenticate(context);
        return continuation(request, context);
    }

    public override Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Authenticate(context);
        return continuation(requestStream, context);
    }

    public override Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Authenticate(context);
        return continuation(request, responseStream, context);
    }

    public override Task DuplexStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, DuplexStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Authenticate(context);
        return continuation(requestStream, responseStream, context);
    }

    private void Authenticate(ServerCallContext context)
    {
        string? header = context.RequestHeaders.GetValue("authorization");
        string? key = header is not null && header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase) ? header["Bearer ".Length..].Trim() : null;
        CallerIdentity identity = keys.Authenticate(key)
            ?? throw Errors.Refused(StatusCode.Unauthenticated, IngestRefusal.Unauthenticated,
                header is null ? "no authorization header; send 'authorization: Bearer <api key>'" : "the API key is not valid");
        context.UserState[IdentityKey] = identity;
    }
}
