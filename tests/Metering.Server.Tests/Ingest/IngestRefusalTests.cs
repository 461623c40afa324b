using Grpc.Core;
using Metering.Engine.Ingest;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Ingest;

[Collection(PostgresCollection.Name)]
public sealed class IngestRefusalTests(PostgresFixture postgres)
{
    public static TheoryData<string, StatusCode, string> InvalidRecords => new()
    {
        { "unknown model", StatusCode.InvalidArgument, "UNKNOWN_DEVICE_MODEL" },
        { "end equals start", StatusCode.InvalidArgument, "END_NOT_AFTER_START" },
        { "longer than 24 h", StatusCode.InvalidArgument, "DURATION_TOO_LONG" },
        { "end 6 minutes in the future", StatusCode.InvalidArgument, "TIME_IN_FUTURE" },
        { "start before 2024", StatusCode.InvalidArgument, "TIME_TOO_OLD" },
        { "zero devices", StatusCode.InvalidArgument, "DEVICE_COUNT_OUT_OF_RANGE" },
        { "too many devices", StatusCode.InvalidArgument, "DEVICE_COUNT_OUT_OF_RANGE" },
        { "zero share", StatusCode.InvalidArgument, "SHARE_OUT_OF_RANGE" },
        { "share above one", StatusCode.InvalidArgument, "SHARE_OUT_OF_RANGE" },
        { "holder check character wrong", StatusCode.InvalidArgument, "HOLDER_CODE_INVALID" },
        { "empty job id", StatusCode.InvalidArgument, "JOB_ID_INVALID" },
        { "empty site", StatusCode.InvalidArgument, "SITE_INVALID" },
        { "NUL in job id", StatusCode.InvalidArgument, "JOB_ID_INVALID" },
        { "NUL in site", StatusCode.InvalidArgument, "SITE_INVALID" },
        { "more UUIDs than devices", StatusCode.InvalidArgument, "DEVICE_UUIDS_INVALID" },
        { "energy above 5 kW per device", StatusCode.InvalidArgument, "ENERGY_OUT_OF_RANGE" },
        { "SM activity of 10001 basis points", StatusCode.InvalidArgument, "SM_ACTIVE_OUT_OF_RANGE" },
        { "SM activity of the largest u32", StatusCode.InvalidArgument, "SM_ACTIVE_OUT_OF_RANGE" },
    };

    [Theory]
    [MemberData(nameof(InvalidRecords))]
    public async Task Invalid_record_refuses_its_whole_batch_and_changes_nothing(string mutation, StatusCode status, string reason)
    {
        // The test clock stands a day after the records, as RecordValidatorTests assume.
        var clock = new FixedClock(DateTimeOffset.FromUnixTimeMilliseconds(TestRecords.BaseStartMs + 86_400_000));
        await using TestServer server = await TestServer.StartAsync(postgres, time: clock);
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a");
        await call.SendAsync(TestRecords.Range(1, 3));

        var batch = TestRecords.Range(4, 9);
        batch[3] = RecordMutations.Apply(batch[3], mutation, clock.GetUtcNow().ToUnixTimeMilliseconds());
        RpcException error = await call.SendRefusedAsync(batch);

        Assert.Equal(status, error.StatusCode);
        Assert.Equal(reason, IngestCall.Reason(error));
        Assert.Equal("7", IngestCall.Metadata(error, "sequence"));
        Assert.Equal(3L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id NOT LIKE 'proof:%'"));
        Assert.Equal(3L, await server.ScalarAsync<long>("SELECT committed_sequence FROM ingest_streams WHERE stream_id NOT LIKE 'proof:%'"));
    }

    [Fact]
    public async Task Batch_over_the_size_limit_is_refused()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, new IngestLimits { BatchRecordsMax = 10 });
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a");
        Assert.Equal(10u, call.Opened.BatchRecordsMax);

        RpcException error = await call.SendRefusedAsync(TestRecords.Range(1, 11));

        Assert.Equal(StatusCode.ResourceExhausted, error.StatusCode);
        Assert.Equal("BATCH_TOO_LARGE", IngestCall.Reason(error));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id NOT LIKE 'proof:%'"));
    }

    [Fact]
    public async Task Message_over_the_byte_limit_is_refused_by_the_transport()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, new IngestLimits { MessageBytesMax = 64 * 1024 });
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a");

        RpcException error = await call.SendRefusedAsync(TestRecords.Range(1, 1_000));

        Assert.Equal(StatusCode.ResourceExhausted, error.StatusCode);
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id NOT LIKE 'proof:%'"));
    }

    [Fact]
    public async Task Empty_batch_is_refused()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a");
        RpcException error = await call.SendRefusedAsync([]);
        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Equal("BATCH_EMPTY", IngestCall.Reason(error));
    }

    [Theory]
    [InlineData(null)]
    [InlineData("not-a-valid-key")]
    [InlineData("")]
    public async Task Call_without_a_valid_key_is_unauthenticated_and_opens_nothing(string? key)
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        var headers = key is null ? new Metadata() : TestServer.Bearer(key);
        using var call = server.Client().Stream(headers);
        try
        {
            await call.RequestStream.WriteAsync(new IngestRequest { Open = new OpenStream { StreamId = "cluster-a" } });
        }
        catch (RpcException)
        {
            // The server may refuse the call before the open message is written; the status
            // read below is the same either way.
        }

        RpcException error = await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext(CancellationToken.None));

        Assert.Equal(StatusCode.Unauthenticated, error.StatusCode);
        Assert.Equal("UNAUTHENTICATED", IngestCall.Reason(error));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM ingest_streams WHERE stream_id NOT LIKE 'proof:%'"));
    }

    [Theory]
    [InlineData("")]
    [InlineData("has space")]
    [InlineData("slash/inside")]
    [InlineData("流")]
    public async Task Invalid_stream_id_is_refused(string streamId)
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        using var call = server.Client().Stream(TestServer.Bearer());
        await call.RequestStream.WriteAsync(new IngestRequest { Open = new OpenStream { StreamId = streamId } });

        RpcException error = await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext(CancellationToken.None));

        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Equal("STREAM_ID_INVALID", IngestCall.Reason(error));
    }

    [Fact]
    public async Task Stream_id_longer_than_64_characters_is_refused()
    {
        await Invalid_stream_id_is_refused(new string('s', 65));
    }

    [Fact]
    public async Task Batch_before_open_is_refused()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        using var call = server.Client().Stream(TestServer.Bearer());
        var batch = new UsageBatch();
        batch.Records.Add(TestRecords.Valid(1));
        await call.RequestStream.WriteAsync(new IngestRequest { Batch = batch });

        RpcException error = await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext(CancellationToken.None));

        Assert.Equal(StatusCode.FailedPrecondition, error.StatusCode);
        Assert.Equal("STREAM_NOT_OPEN", IngestCall.Reason(error));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id NOT LIKE 'proof:%'"));
    }

    [Fact]
    public async Task Second_open_on_one_call_is_refused()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a");
        await call.WriteRawAsync(new IngestRequest { Open = new OpenStream { StreamId = "cluster-b" } });

        RpcException error = await Assert.ThrowsAsync<RpcException>(call.ReadAsync);

        Assert.Equal("STREAM_NOT_OPEN", IngestCall.Reason(error));
    }

    private sealed class FixedClock(DateTimeOffset now) : TimeProvider
    {
        public override DateTimeOffset GetUtcNow() => now;
    }
}
