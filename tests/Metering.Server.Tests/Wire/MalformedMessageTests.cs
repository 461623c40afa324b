using Google.Protobuf;
using Grpc.Core;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Wire;

/// <summary>
/// What a client written from the .proto files alone meets when its bytes are not a valid
/// message: invalid UTF-8 in a string field, or bytes that do not parse at all. Each ends the call
/// with INVALID_ARGUMENT and an ErrorInfo reason, and nothing is stored.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class MalformedMessageTests(PostgresFixture postgres)
{
    private static readonly Marshaller<byte[]> Raw = Marshallers.Create(bytes => bytes, bytes => bytes);

    private static readonly Method<byte[], byte[]> IngestStream = new(
        MethodType.DuplexStreaming, "metering.v1.IngestService", "Stream", Raw, Raw);

    private static readonly Method<byte[], byte[]> GetMerkleRoot = new(
        MethodType.Unary, "metering.v1.AuditService", "GetMerkleRoot", Raw, Raw);

    [Fact]
    public async Task A_job_id_with_invalid_utf8_ends_the_stream_with_invalid_argument_and_stores_nothing()
    {
        // The message is refused while it is parsed, before any record is validated or stored.
        await using TestServer server = await TestServer.StartAsync(postgres);
        byte[] batch = new IngestRequest { Batch = new UsageBatch { Records = { TestRecords.Range(1, 1) } } }.ToByteArray();
        byte[] jobId = System.Text.Encoding.UTF8.GetBytes(TestRecords.Range(1, 1)[0].JobId);
        int at = IndexOf(batch, jobId);
        Assert.True(at >= 0);
        batch[at] = 0xC3; // a lead byte followed by an ASCII byte: not UTF-8
        RpcException error = await SendAsync(server, [Open(), batch]);

        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Equal("MESSAGE_MALFORMED", IngestCall.Reason(error));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id NOT LIKE 'proof:%'"));
    }

    [Theory]
    [InlineData("garbage as the first message", true)]
    [InlineData("garbage after open", false)]
    public async Task Bytes_that_are_no_message_end_the_stream_with_invalid_argument(string _, bool first)
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        byte[] garbage = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x01, 0x02];
        RpcException error = await SendAsync(server, first ? [garbage] : [Open(), garbage]);

        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Equal("MESSAGE_MALFORMED", IngestCall.Reason(error));
    }

    [Fact]
    public async Task A_message_with_no_kind_after_open_is_malformed_not_a_missing_open()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        RpcException error = await SendAsync(server, [Open(), new IngestRequest().ToByteArray()]);

        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Equal("MESSAGE_MALFORMED", IngestCall.Reason(error));
    }

    [Fact]
    public async Task Garbage_as_a_unary_request_of_another_service_is_invalid_argument_with_the_same_reason()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        var call = server.Channel.CreateCallInvoker().AsyncUnaryCall(GetMerkleRoot, null, new CallOptions(TestServer.Bearer(TestServer.AuditorKey)), [0xFF, 0xFF, 0xFF, 0xFF]);
        RpcException error = await Assert.ThrowsAsync<RpcException>(async () => await call.ResponseAsync);

        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Equal("MESSAGE_MALFORMED", IngestCall.Reason(error));
    }

    private static byte[] Open() => new IngestRequest { Open = new OpenStream { StreamId = "cluster-a" } }.ToByteArray();

    private static async Task<RpcException> SendAsync(TestServer server, byte[][] messages)
    {
        using var call = server.Channel.CreateCallInvoker().AsyncDuplexStreamingCall(IngestStream, null, new CallOptions(TestServer.Bearer()));
        foreach (byte[] message in messages)
        {
            await call.RequestStream.WriteAsync(message);
        }

        await call.RequestStream.CompleteAsync();
        return await Assert.ThrowsAsync<RpcException>(async () =>
        {
            while (await call.ResponseStream.MoveNext(CancellationToken.None))
            {
            }
        });
    }

    private static int IndexOf(byte[] haystack, byte[] needle) =>
        haystack.AsSpan().IndexOf(needle);
}
