using Grpc.Core;
using Grpc.Core.Interceptors;

namespace Metering.Server.Hosting;

/// <summary>
/// Holds every acknowledged write to the rule ingest follows: while the server requires durable
/// replication and the database does not provide it (<see cref="ReplicationMonitor"/>), a write rpc
/// is refused with UNAVAILABLE and reason REPLICATION_NOT_DURABLE before its handler runs, and a
/// write that committed while replication was lost is refused instead of answered, so that no
/// success is reported for a commit that a failover could undo. Reads pass: what they answer
/// claims nothing about durability. The ingest stream gates each of its own messages (it
/// acknowledges batch by batch), so duplex calls pass through here.
/// </summary>
internal sealed class DurableAcknowledgementInterceptor(ReplicationMonitor replication) : Interceptor
{
    /// <summary>The rpc names of the contract's reads; every other metering.v1 rpc writes.</summary>
    private static readonly string[] ReadVerbs = ["Get", "List", "Query", "Export", "Verify", "Detect", "Render"];

    private const string ContractPrefix = "/metering.v1.";

    /// <summary>Whether the method (`/package.Service/Rpc`) is one of the contract's writes, whose success must not outrun replication.</summary>
    public static bool IsAcknowledgedWrite(string method)
    {
        if (!method.StartsWith(ContractPrefix, StringComparison.Ordinal))
        {
            // Health and reflection belong to gRPC, not to the contract, and write nothing.
            return false;
        }

        string rpc = method[(method.LastIndexOf('/') + 1)..];
        return !ReadVerbs.Any(verb => rpc.StartsWith(verb, StringComparison.Ordinal));
    }

    public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        if (!IsAcknowledgedWrite(context.Method))
        {
            return await continuation(request, context);
        }

        ThrowIfNotDurable();
        TResponse response = await continuation(request, context);
        ThrowIfNotDurable();
        return response;
    }

    public override async Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
    {
        if (!IsAcknowledgedWrite(context.Method))
        {
            return await continuation(requestStream, context);
        }

        ThrowIfNotDurable();
        TResponse response = await continuation(requestStream, context);
        ThrowIfNotDurable();
        return response;
    }

    public override async Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        if (!IsAcknowledgedWrite(context.Method))
        {
            await continuation(request, responseStream, context);
            return;
        }

        ThrowIfNotDurable();
        // Each message is looked at before it goes: the last one of a write's stream is its result
        // (a settlement's hash), sent after the commit.
        await continuation(request, new GatedWriter<TResponse>(responseStream, this), context);
    }

    private void ThrowIfNotDurable()
    {
        if (replication.Refusal() is { } notDurable)
        {
            throw notDurable;
        }
    }

    private sealed class GatedWriter<T>(IServerStreamWriter<T> inner, DurableAcknowledgementInterceptor gate) : IServerStreamWriter<T>
    {
        public WriteOptions? WriteOptions
        {
            get => inner.WriteOptions;
            set => inner.WriteOptions = value;
        }

        public Task WriteAsync(T message)
        {
            gate.ThrowIfNotDurable();
            return inner.WriteAsync(message);
        }

        public Task WriteAsync(T message, CancellationToken cancellationToken)
        {
            gate.ThrowIfNotDurable();
            return inner.WriteAsync(message, cancellationToken);
        }
    }
}
