using Google.Rpc;
using Grpc.Core;
using Metering.Protocol.V1;

namespace Metering.Server.Fixtures;

/// <summary>A thin driver of one ingest stream call, for tests that need message-level control.</summary>
public sealed class IngestCall : IAsyncDisposable
{
    private readonly AsyncDuplexStreamingCall<IngestRequest, IngestResponse> _call;

    private IngestCall(AsyncDuplexStreamingCall<IngestRequest, IngestResponse> call) => _call = call;

    public StreamOpened Opened { get; private set; } = null!;

    public static async Task<IngestCall> OpenAsync(IngestService.IngestServiceClient client, string streamId, string? key = null)
    {
        var call = new IngestCall(client.Stream(TestServer.Bearer(key)));
        await call._call.RequestStream.WriteAsync(new IngestRequest { Open = new OpenStream { StreamId = streamId } });
        IngestResponse response = await call.ReadAsync();
        Assert.Equal(IngestResponse.KindOneofCase.Opened, response.KindCase);
        call.Opened = response.Opened;
        return call;
    }

    /// <summary>Opens a stream that must be refused at its open, and returns the error.</summary>
    public static async Task<RpcException> OpenRefusedAsync(IngestService.IngestServiceClient client, string streamId, string? key = null)
    {
        using AsyncDuplexStreamingCall<IngestRequest, IngestResponse> call = client.Stream(TestServer.Bearer(key));
        try
        {
            await call.RequestStream.WriteAsync(new IngestRequest { Open = new OpenStream { StreamId = streamId } });
        }
        catch (RpcException)
        {
            // The server may end the call first; its status comes from the response side.
        }

        return await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext(CancellationToken.None));
    }

    public async Task<BatchAck> SendAsync(IEnumerable<UsageRecord> records)
    {
        var batch = new UsageBatch();
        batch.Records.Add(records);
        await _call.RequestStream.WriteAsync(new IngestRequest { Batch = batch });
        IngestResponse response = await ReadAsync();
        Assert.Equal(IngestResponse.KindOneofCase.Ack, response.KindCase);
        return response.Ack;
    }

    /// <summary>Sends a batch that must be refused and returns the error.</summary>
    public async Task<RpcException> SendRefusedAsync(IEnumerable<UsageRecord> records)
    {
        var batch = new UsageBatch();
        batch.Records.Add(records);
        try
        {
            await _call.RequestStream.WriteAsync(new IngestRequest { Batch = batch });
        }
        catch (RpcException)
        {
            // The server may end the call before it has read the whole message; the status it
            // ended with comes from the response side.
        }

        return await Assert.ThrowsAsync<RpcException>(ReadAsync);
    }

    /// <summary>Sends a heartbeat and returns its acknowledgement.</summary>
    public async Task<HeartbeatAck> HeartbeatAsync(long? clientUnixMs = null)
    {
        var heartbeat = new Heartbeat();
        if (clientUnixMs is long client)
        {
            heartbeat.ClientUnixMs = client;
        }

        await _call.RequestStream.WriteAsync(new IngestRequest { Heartbeat = heartbeat });
        IngestResponse response = await ReadAsync();
        Assert.Equal(IngestResponse.KindOneofCase.HeartbeatAck, response.KindCase);
        return response.HeartbeatAck;
    }

    public Task WriteRawAsync(IngestRequest request) => _call.RequestStream.WriteAsync(request);

    public async Task<IngestResponse> ReadAsync()
    {
        Assert.True(await _call.ResponseStream.MoveNext(CancellationToken.None), "the server ended the stream");
        return _call.ResponseStream.Current;
    }

    public async Task CompleteAsync()
    {
        await _call.RequestStream.CompleteAsync();
        Assert.False(await _call.ResponseStream.MoveNext(CancellationToken.None));
    }

    public ValueTask DisposeAsync()
    {
        _call.Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>The ErrorInfo reason of a refusal.</summary>
    public static string? Reason(RpcException error) => error.GetRpcStatus()?.GetDetail<ErrorInfo>()?.Reason;

    public static string? Metadata(RpcException error, string key) =>
        error.GetRpcStatus()?.GetDetail<ErrorInfo>()?.Metadata.TryGetValue(key, out string? value) == true ? value : null;
}
