using Grpc.Core;
using Metering.Client.Simulation;
using Metering.Client.Streaming;
using Metering.Engine.Ingest;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Ingest;

/// <summary>
/// Heartbeats on an open ingest stream: recorded by the server's clock, at most one row and one
/// write per stream and minute, refused before open and past their bounds, and never in the way
/// of batches. The server runs on a manual clock, so minutes pass without waiting for them.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class HeartbeatTests(PostgresFixture postgres)
{
    /// <summary>2026-11-20T00:00:30Z: half a minute into a minute, a day after the test records start.</summary>
    private static readonly DateTimeOffset Start = DateTimeOffset.FromUnixTimeMilliseconds(TestRecords.BaseStartMs + 86_400_000 + 30_000);

    private static long MinuteOf(DateTimeOffset at) => HeartbeatMinutes.MinuteOf(at.ToUnixTimeMilliseconds());

    private static Task<long> HeartbeatRowsAsync(TestServer server, string stream = "cluster-a") =>
        server.ScalarAsync<long>("SELECT count(*) FROM stream_heartbeats WHERE stream_id = @stream", new { stream });

    [Fact]
    public async Task A_heartbeat_is_recorded_once_per_minute_however_often_it_comes()
    {
        var clock = new ManualClock(Start);
        await using TestServer server = await TestServer.StartAsync(postgres, time: clock);
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a");
        Assert.Equal(60u, call.Opened.HeartbeatsPerMinuteMax);
        // The client's clock is 45 s behind, in the minute before: the server's clock decides.
        long clientMs = Start.ToUnixTimeMilliseconds() - 45_000;

        HeartbeatAck first = await call.HeartbeatAsync(clientMs);

        Assert.True(first.Recorded);
        Assert.Equal(MinuteOf(Start), first.MinuteUnixMs);
        Assert.Equal(Start.ToUnixTimeMilliseconds(), first.ServerUnixMs);

        // From here on any write to the table fails: the rest of the minute must be answered
        // from the session's memory, without a statement.
        await server.ExecuteAsync("""
            CREATE FUNCTION refuse_heartbeat_write() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'a second heartbeat write in one minute'; END $$;
            CREATE TRIGGER refuse_heartbeat_write BEFORE INSERT ON stream_heartbeats FOR EACH ROW EXECUTE FUNCTION refuse_heartbeat_write();
            """);
        for (int i = 0; i < 25; i++)
        {
            clock.Advance(TimeSpan.FromSeconds(1));
            HeartbeatAck again = await call.HeartbeatAsync(clock.Now.ToUnixTimeMilliseconds());
            Assert.False(again.Recorded);
            Assert.Equal(MinuteOf(Start), again.MinuteUnixMs);
        }

        await server.ExecuteAsync("DROP TRIGGER refuse_heartbeat_write ON stream_heartbeats");
        clock.Now = Start.AddSeconds(30);
        HeartbeatAck nextMinute = await call.HeartbeatAsync();
        Assert.True(nextMinute.Recorded);
        Assert.Equal(MinuteOf(Start) + 60_000, nextMinute.MinuteUnixMs);
        await call.CompleteAsync();

        // A reconnect within the same minute finds it on record: the row stays one.
        await using (IngestCall reconnected = await IngestCall.OpenAsync(server.Client(), "cluster-a"))
        {
            clock.Advance(TimeSpan.FromSeconds(10));
            HeartbeatAck afterReconnect = await reconnected.HeartbeatAsync();
            Assert.False(afterReconnect.Recorded);
            Assert.Equal(MinuteOf(Start) + 60_000, afterReconnect.MinuteUnixMs);
        }

        var rows = await server.QueryAsync<(string Provider, DateTime Minute, DateTime Received, DateTime? Client)>(
            "SELECT provider_id, minute_at, received_at, client_at FROM stream_heartbeats ORDER BY minute_at");
        Assert.Equal(2, rows.Count);
        Assert.All(rows, r => Assert.Equal(TestRecords.Provider, r.Provider));
        Assert.Equal((Start.UtcDateTime.AddSeconds(-30), Start.UtcDateTime, (DateTime?)DateTimeOffset.FromUnixTimeMilliseconds(clientMs).UtcDateTime), (rows[0].Minute, rows[0].Received, rows[0].Client));
        Assert.Equal((Start.UtcDateTime.AddSeconds(30), Start.UtcDateTime.AddSeconds(30), (DateTime?)null), (rows[1].Minute, rows[1].Received, rows[1].Client));
    }

    [Fact]
    public async Task Heartbeats_and_batches_interleave_with_their_answers_in_order()
    {
        var clock = new ManualClock(Start);
        await using TestServer server = await TestServer.StartAsync(postgres, time: clock);
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a");

        // All three go out before any answer is read, so the answers' order is the server's.
        var first = new UsageBatch();
        first.Records.AddRange(TestRecords.Range(1, 5));
        var second = new UsageBatch();
        second.Records.AddRange(TestRecords.Range(6, 8));
        await call.WriteRawAsync(new IngestRequest { Batch = first });
        await call.WriteRawAsync(new IngestRequest { Heartbeat = new Heartbeat() });
        await call.WriteRawAsync(new IngestRequest { Batch = second });
        IngestResponse[] answers = [await call.ReadAsync(), await call.ReadAsync(), await call.ReadAsync()];

        Assert.Equal([IngestResponse.KindOneofCase.Ack, IngestResponse.KindOneofCase.HeartbeatAck, IngestResponse.KindOneofCase.Ack], answers.Select(a => a.KindCase));
        Assert.Equal(5UL, answers[0].Ack.CommittedSequence);
        Assert.Equal(5UL, answers[1].HeartbeatAck.CommittedSequence);
        Assert.Equal(8UL, answers[2].Ack.CommittedSequence);
        Assert.Equal(8L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = 'cluster-a'"));
        Assert.Equal(1L, await HeartbeatRowsAsync(server));
    }

    [Fact]
    public async Task A_heartbeat_before_open_is_refused_and_records_nothing()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        using var call = server.Client().Stream(TestServer.Bearer());
        await call.RequestStream.WriteAsync(new IngestRequest { Heartbeat = new Heartbeat() });

        RpcException error = await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext(CancellationToken.None));

        Assert.Equal(StatusCode.FailedPrecondition, error.StatusCode);
        Assert.Equal("STREAM_NOT_OPEN", IngestCall.Reason(error));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM stream_heartbeats"));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM ingest_streams WHERE stream_id NOT LIKE 'proof:%'"));
    }

    [Fact]
    public async Task Heartbeats_past_the_per_minute_bound_end_the_call_and_record_nothing_more()
    {
        var clock = new ManualClock(Start);
        await using TestServer server = await TestServer.StartAsync(postgres, new IngestLimits { HeartbeatsPerMinuteMax = 3 }, time: clock);
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a");
        Assert.Equal(3u, call.Opened.HeartbeatsPerMinuteMax);
        for (int i = 0; i < 3; i++)
        {
            await call.HeartbeatAsync();
        }

        await call.WriteRawAsync(new IngestRequest { Heartbeat = new Heartbeat() });
        RpcException error = await Assert.ThrowsAsync<RpcException>(call.ReadAsync);

        Assert.Equal(StatusCode.ResourceExhausted, error.StatusCode);
        Assert.Equal("HEARTBEATS_TOO_FREQUENT", IngestCall.Reason(error));
        Assert.Equal(1L, await HeartbeatRowsAsync(server));
    }

    [Theory]
    [InlineData(-86_400_001L)]
    [InlineData(86_400_001L)]
    [InlineData(long.MinValue)]
    public async Task A_heartbeat_whose_client_clock_is_more_than_a_day_off_is_refused_and_records_nothing(long offsetMs)
    {
        var clock = new ManualClock(Start);
        await using TestServer server = await TestServer.StartAsync(postgres, time: clock);
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a");
        long clientMs = offsetMs == long.MinValue ? long.MinValue : Start.ToUnixTimeMilliseconds() + offsetMs;

        await call.WriteRawAsync(new IngestRequest { Heartbeat = new Heartbeat { ClientUnixMs = clientMs } });
        RpcException error = await Assert.ThrowsAsync<RpcException>(call.ReadAsync);

        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Equal("CLIENT_CLOCK_OUT_OF_RANGE", IngestCall.Reason(error));
        Assert.Equal(0L, await HeartbeatRowsAsync(server));
    }

    [Fact]
    public async Task A_client_clock_a_day_off_is_still_taken_as_evidence()
    {
        var clock = new ManualClock(Start);
        await using TestServer server = await TestServer.StartAsync(postgres, time: clock);
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a");

        HeartbeatAck ack = await call.HeartbeatAsync(Start.ToUnixTimeMilliseconds() - 86_400_000);

        Assert.True(ack.Recorded);
        Assert.Equal(Start.UtcDateTime.AddDays(-1), await server.ScalarAsync<DateTime>("SELECT client_at FROM stream_heartbeats"));
    }

    [Fact]
    public async Task A_provider_whose_admission_has_ended_may_still_send_heartbeats_and_they_are_recorded()
    {
        // The test providers' admission ends at the start of 2028; the server's clock stands after it.
        var clock = new ManualClock(Admissions.ValidityEndsAt.AddMonths(5));
        await using TestServer server = await TestServer.StartAsync(postgres, time: clock);
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a");

        HeartbeatAck ack = await call.HeartbeatAsync(clock.Now.ToUnixTimeMilliseconds());

        Assert.True(ack.Recorded);
        Assert.Equal(1L, await HeartbeatRowsAsync(server));

        // Usage at that time is refused as before: a heartbeat admits nothing.
        UsageRecord record = TestRecords.Valid(1);
        record.StartUnixMs = clock.Now.AddHours(-1).ToUnixTimeMilliseconds();
        record.EndUnixMs = record.StartUnixMs + 300_000;
        RpcException error = await call.SendRefusedAsync([record]);
        Assert.Equal("ADMISSION_EXPIRED", IngestCall.Reason(error));
    }

    [Fact]
    public async Task Heartbeats_on_a_proof_stream_are_answered_but_not_recorded()
    {
        var clock = new ManualClock(Start);
        await using TestServer server = await TestServer.StartAsync(postgres, time: clock);
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), Admissions.ProofStream);

        HeartbeatAck ack = await call.HeartbeatAsync();

        Assert.False(ack.Recorded);
        Assert.Equal(MinuteOf(Start), ack.MinuteUnixMs);
        Assert.Equal(call.Opened.CommittedSequence, ack.CommittedSequence);
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM stream_heartbeats"));
    }

    [Fact]
    public async Task The_sample_agent_sends_heartbeats_while_its_platform_has_nothing_new_and_none_by_default()
    {
        // The server takes up to 100 heartbeats a second, so the agent's 50 ms interval stands.
        await using TestServer server = await TestServer.StartAsync(postgres, new IngestLimits { HeartbeatsPerMinuteMax = 6_000 });
        SimulatedCluster site = SimulatedCluster.DemoSites(new DateTimeOffset(2026, 11, 1, 0, 0, 0, TimeSpan.FromHours(8)), jobsPerInterval: 4, seed: 3)[0];

        // Off by default: a replayed day is sent without a heartbeat.
        await new UsageStreamer(server.Channel, TestServer.ProviderKey, new StreamerOptions()).RunAsync("replayed", site.RecordAt, 40, CancellationToken.None);
        Assert.Equal(0L, await HeartbeatRowsAsync(server, "replayed"));

        // Live: the platform holds 20 records, then nothing new until the agent has sent three
        // heartbeats, then 20 more.
        ulong recorded = 20;
        int heartbeats = 0;
        var streamer = new UsageStreamer(server.Channel, TestServer.ProviderKey, new StreamerOptions
        {
            RecordedThrough = () => Volatile.Read(ref recorded),
            IdlePollInterval = TimeSpan.FromMilliseconds(20),
            HeartbeatInterval = TimeSpan.FromMilliseconds(50),
            HeartbeatAcknowledged = ack =>
            {
                if (Interlocked.Increment(ref heartbeats) == 3)
                {
                    Volatile.Write(ref recorded, 40);
                }
            },
        });

        StreamResult result = await streamer.RunAsync("live", site.RecordAt, 40, CancellationToken.None).WaitAsync(TimeSpan.FromMinutes(1));

        Assert.Equal(40UL, result.CommittedSequence);
        Assert.True(Volatile.Read(ref heartbeats) >= 3);
        // Three heartbeats 50 ms apart fall in one minute of the server's clock, or two.
        Assert.InRange(await HeartbeatRowsAsync(server, "live"), 1L, 2L);
    }
}
