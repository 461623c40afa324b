using Metering.Client.Streaming;
using Metering.Engine.Fixtures;
using Metering.Fixtures;
using Metering.Server.Fixtures;

namespace Metering.Server.Tests.Ingest;

/// <summary>
/// The C# streamer compares where the server reopens a stream with what the server acknowledged,
/// as the Python agent does: a server behind its own acknowledgement (an asynchronous failover, a
/// restore) or holding another head at it (a rewrite) stops the streamer before it sends anything.
/// The server's mark is rewound here by its superuser with the guards off, which is what a lost
/// failover looks like from the client.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class StreamerServerBehindTests(PostgresFixture postgres)
{
    private const string Stream = "behind";

    [Fact]
    public async Task A_streamer_whose_server_rewound_its_mark_stops_loudly_and_sends_nothing()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        var streamer = new UsageStreamer(server.Channel, TestServer.ProviderKey, new StreamerOptions { BatchRecords = 20 });
        Assert.Equal(60UL, (await streamer.RunAsync(Stream, TestRecords.Valid, 60, CancellationToken.None)).CommittedSequence);

        await RewindAsync(server, 40);
        ServerBehindException behind = await Assert.ThrowsAsync<ServerBehindException>(() => streamer.RunAsync(Stream, TestRecords.Valid, 80, CancellationToken.None));

        Assert.Equal((60UL, 40UL), (behind.AcknowledgedSequence, behind.ReopenedSequence));
        Assert.Contains("reopened the stream at 40, behind 60", behind.Message, StringComparison.Ordinal);
        Assert.Equal(40L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = @Stream", new { Stream }));
    }

    [Fact]
    public async Task A_restarted_streamer_given_its_last_acknowledgement_stops_when_the_server_is_behind_it_and_streams_on_when_the_server_is_ahead()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        StreamResult first = await new UsageStreamer(server.Channel, TestServer.ProviderKey, new StreamerOptions { BatchRecords = 20 })
            .RunAsync(Stream, TestRecords.Valid, 60, CancellationToken.None);
        byte[] headAt40 = await server.ScalarAsync<byte[]>("SELECT chain_hash FROM usage_records WHERE stream_id = @Stream AND sequence = 40", new { Stream });

        // Ahead of what the agent kept (an acknowledgement lost with the connection): normal.
        StreamResult resumed = await new UsageStreamer(server.Channel, TestServer.ProviderKey, new StreamerOptions { BatchRecords = 20, AcknowledgedBefore = (40, headAt40) })
            .RunAsync(Stream, TestRecords.Valid, 70, CancellationToken.None);
        Assert.Equal(70UL, resumed.CommittedSequence);

        await RewindAsync(server, 40);
        var restarted = new UsageStreamer(server.Channel, TestServer.ProviderKey, new StreamerOptions { BatchRecords = 20, AcknowledgedBefore = (first.CommittedSequence, first.ChainHead) });
        ServerBehindException behind = await Assert.ThrowsAsync<ServerBehindException>(() => restarted.RunAsync(Stream, TestRecords.Valid, 80, CancellationToken.None));

        Assert.Equal((60UL, 40UL), (behind.AcknowledgedSequence, behind.ReopenedSequence));
        Assert.Equal(40L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = @Stream", new { Stream }));
    }

    [Fact]
    public async Task A_streamer_stops_when_the_server_holds_another_head_at_the_mark_it_acknowledged()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        var streamer = new UsageStreamer(server.Channel, TestServer.ProviderKey, new StreamerOptions { BatchRecords = 20 });
        await streamer.RunAsync(Stream, TestRecords.Valid, 60, CancellationToken.None);

        byte[] forged = await InsiderRewrite.RewriteChainAsync(server.ConnectionString, TestRecords.Provider, Stream, 10, 60, TestRecords.Valid, record => record.DeviceCount = 4);
        ServerBehindException apart = await Assert.ThrowsAsync<ServerBehindException>(() => streamer.RunAsync(Stream, TestRecords.Valid, 80, CancellationToken.None));

        Assert.Contains($"holds chain head {Convert.ToHexStringLower(forged)} at 60", apart.Message, StringComparison.Ordinal);
        Assert.Equal(60L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = @Stream", new { Stream }));
    }

    /// <summary>What an asynchronous failover leaves: the stream as it stood at <paramref name="mark"/>, by the superuser with the guards off.</summary>
    private static Task RewindAsync(TestServer server, ulong mark) => server.ExecuteAsync("""
        SET session_replication_role = replica;
        DELETE FROM usage_records WHERE stream_id = @Stream AND sequence > @mark;
        UPDATE ingest_streams SET committed_sequence = @mark,
               chain_head = (SELECT chain_hash FROM usage_records WHERE stream_id = @Stream AND sequence = @mark) WHERE stream_id = @Stream;
        RESET session_replication_role;
        """, new { Stream, mark = (long)mark });
}
