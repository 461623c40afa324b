using Grpc.Core;
using Metering.Engine.Audit;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Ingest;

[Collection(PostgresCollection.Name)]
public sealed class IngestStreamTests(PostgresFixture postgres)
{
    [Fact]
    public async Task New_stream_opens_at_zero_with_the_genesis_head()
    {
        // The catalog version announced is the one in force on the server's clock, so the clock is fixed.
        await using TestServer server = await TestServer.StartAsync(postgres, time: new ManualClock(new DateTimeOffset(2026, 11, 21, 0, 0, 0, TimeSpan.Zero)));
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a");

        Assert.Equal(0ul, call.Opened.CommittedSequence);
        Assert.Equal(new byte[32], call.Opened.ChainHead.ToByteArray());
        Assert.Equal(10_000u, call.Opened.BatchRecordsMax);
        Assert.Equal("2025.1", call.Opened.CatalogVersion);
    }

    [Fact]
    public async Task Batches_are_acknowledged_after_commit_with_the_new_mark_and_head()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a");

        BatchAck first = await call.SendAsync(TestRecords.Range(1, 100));
        BatchAck second = await call.SendAsync(TestRecords.Range(101, 150));

        Assert.Equal((1ul, 100ul, 100ul, 0u), (first.FirstSequence, first.LastSequence, first.CommittedSequence, first.ReplayedRecords));
        Assert.Equal((101ul, 150ul, 150ul), (second.FirstSequence, second.LastSequence, second.CommittedSequence));
        Assert.Equal(150L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id NOT LIKE 'proof:%'"));
        byte[] storedHead = await server.ScalarAsync<byte[]>("SELECT chain_head FROM ingest_streams WHERE stream_id = 'cluster-a'");
        Assert.Equal(storedHead, second.ChainHead.ToByteArray());
        await call.CompleteAsync();

        ChainVerification verification = await new ChainVerifier(Database.CreateDataSource(server.ConnectionString)).VerifyStreamAsync(TestRecords.Provider, "cluster-a");
        Assert.True(verification.Intact, verification.Evidence);
        Assert.Equal(150ul, verification.RecordsChecked);
        Assert.Equal(storedHead, verification.ComputedHead);
    }

    [Fact]
    public async Task Stored_records_keep_normalised_usage_and_catalog_version()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a");
        var record = TestRecords.Valid(1);
        record.DeviceModel = "A100-SXM";
        record.DeviceCount = 1;
        record.ShareNumerator = 3;
        record.ShareDenominator = 7;
        record.EndUnixMs = record.StartUnixMs + 1_800_000;
        record.DeviceUuids.Clear();
        await call.SendAsync([record]);

        var row = (await server.QueryAsync<(long Usage, string Catalog, string Holder)>("SELECT usage_npfh, catalog_version, holder_code FROM usage_records WHERE stream_id NOT LIKE 'proof:%'")).Single();
        // 0.312 PFLOPS × 3/7 × 0.5 h = 0.066857142… PFLOPS·h, rounded down to whole nPFh.
        Assert.Equal(66_857_142L, row.Usage);
        Assert.Equal("2025.1", row.Catalog);
        Assert.Equal(TestRecords.Holder, row.Holder);
    }

    [Fact]
    public async Task Reconnecting_client_learns_the_committed_mark_and_head()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        BatchAck ack;
        await using (IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a"))
        {
            ack = await call.SendAsync(TestRecords.Range(1, 40));
        }

        await using IngestCall again = await IngestCall.OpenAsync(server.Client(), "cluster-a");
        Assert.Equal(40ul, again.Opened.CommittedSequence);
        Assert.Equal(ack.ChainHead, again.Opened.ChainHead);
        BatchAck next = await again.SendAsync(TestRecords.Range(41, 50));
        Assert.Equal(50ul, next.CommittedSequence);
    }

    [Fact]
    public async Task Replay_of_committed_records_with_identical_content_is_acknowledged_idempotently()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a");
        BatchAck original = await call.SendAsync(TestRecords.Range(1, 20));

        BatchAck replay = await call.SendAsync(TestRecords.Range(5, 20));
        BatchAck overlapping = await call.SendAsync(TestRecords.Range(15, 30));

        Assert.Equal((16u, 20ul, original.ChainHead), (replay.ReplayedRecords, replay.CommittedSequence, replay.ChainHead));
        Assert.Equal((6u, 30ul), (overlapping.ReplayedRecords, overlapping.CommittedSequence));
        Assert.Equal(30L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id NOT LIKE 'proof:%'"));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM tamper_conflicts"));
    }

    [Fact]
    public async Task Replayed_sequence_with_different_content_is_refused_and_recorded_as_a_tamper_conflict()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using (IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a"))
        {
            await call.SendAsync(TestRecords.Range(1, 10));
        }

        byte[] committedHash = await server.ScalarAsync<byte[]>("SELECT chain_hash FROM usage_records WHERE sequence = 7");
        var forged = TestRecords.Range(6, 8);
        forged[1].DeviceCount = 4;
        await using IngestCall replay = await IngestCall.OpenAsync(server.Client(), "cluster-a");
        RpcException error = await replay.SendRefusedAsync(forged);

        Assert.Equal(StatusCode.AlreadyExists, error.StatusCode);
        Assert.Equal("TAMPER_CONFLICT", IngestCall.Reason(error));
        Assert.Equal("7", IngestCall.Metadata(error, "sequence"));
        var conflict = (await server.QueryAsync<(string Provider, string Stream, long Sequence, byte[] Committed, byte[] Offered)>(
            "SELECT provider_id, stream_id, sequence, committed_hash, offered_hash FROM tamper_conflicts")).Single();
        Assert.Equal((TestRecords.Provider, "cluster-a", 7L), (conflict.Provider, conflict.Stream, conflict.Sequence));
        Assert.Equal(committedHash, conflict.Committed);
        Assert.NotEqual(committedHash, conflict.Offered);
        Assert.Equal(8, await server.ScalarAsync<int>("SELECT device_count FROM usage_records WHERE sequence = 7"));
        Assert.Equal(10L, await server.ScalarAsync<long>("SELECT committed_sequence FROM ingest_streams WHERE stream_id NOT LIKE 'proof:%'"));
    }

    [Fact]
    public async Task A_forged_replay_that_is_also_invalid_is_still_recorded_as_a_tamper_conflict()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using (IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a"))
        {
            await call.SendAsync(TestRecords.Range(1, 10));
        }

        var forged = TestRecords.Range(7, 7);
        forged[0].DeviceCount = 0;
        forged[0].JobId = new string('j', 70_000);
        await using IngestCall replay = await IngestCall.OpenAsync(server.Client(), "cluster-a");
        RpcException tooLong = await replay.SendRefusedAsync(forged);
        Assert.Equal("JOB_ID_INVALID", IngestCall.Reason(tooLong));

        forged[0].JobId = "job-000007";
        await using IngestCall again = await IngestCall.OpenAsync(server.Client(), "cluster-a");
        RpcException error = await again.SendRefusedAsync(forged);

        Assert.Equal("TAMPER_CONFLICT", IngestCall.Reason(error));
        Assert.Equal(7L, await server.ScalarAsync<long>("SELECT sequence FROM tamper_conflicts"));
    }

    [Fact]
    public async Task Sequence_gap_is_refused_and_names_the_expected_sequence()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a");
        await call.SendAsync(TestRecords.Range(1, 10));

        RpcException error = await call.SendRefusedAsync(TestRecords.Range(12, 15));

        Assert.Equal(StatusCode.FailedPrecondition, error.StatusCode);
        Assert.Equal("SEQUENCE_GAP", IngestCall.Reason(error));
        Assert.Equal("11", IngestCall.Metadata(error, "expected"));
        Assert.Equal(10L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id NOT LIKE 'proof:%'"));
    }

    [Fact]
    public async Task Gap_inside_a_batch_is_refused_and_nothing_of_it_is_committed()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a");
        var records = TestRecords.Range(1, 5);
        records.Add(TestRecords.Valid(7));

        RpcException error = await call.SendRefusedAsync(records);

        Assert.Equal("SEQUENCE_GAP", IngestCall.Reason(error));
        Assert.Equal("6", IngestCall.Metadata(error, "expected"));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id NOT LIKE 'proof:%'"));
    }

    [Fact]
    public async Task Sequence_zero_is_refused()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a");
        RpcException error = await call.SendRefusedAsync([TestRecords.Valid(0)]);
        Assert.Equal("SEQUENCE_GAP", IngestCall.Reason(error));
    }

    [Fact]
    public async Task Streams_of_different_providers_with_one_name_are_separate()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using (IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a"))
        {
            await call.SendAsync(TestRecords.Range(1, 10));
        }

        await using IngestCall other = await IngestCall.OpenAsync(server.Client(), "cluster-a", TestServer.OtherProviderKey);
        Assert.Equal(0ul, other.Opened.CommittedSequence);
        await other.SendAsync(TestRecords.Range(1, 3));

        var perProvider = await server.QueryAsync<(string Provider, long Count)>("SELECT provider_id, count(*) FROM usage_records WHERE stream_id NOT LIKE 'proof:%' GROUP BY provider_id ORDER BY 1");
        Assert.Equal([(TestRecords.Provider, 10L), (TestRecords.OtherProvider, 3L)], perProvider.OrderBy(p => p.Provider == TestRecords.OtherProvider));
    }

    [Fact]
    public async Task A_second_connection_takes_the_stream_over_and_the_first_is_aborted()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using IngestCall first = await IngestCall.OpenAsync(server.Client(), "cluster-a");
        await first.SendAsync(TestRecords.Range(1, 5));

        await using IngestCall second = await IngestCall.OpenAsync(server.Client(), "cluster-a");
        Assert.Equal(5ul, second.Opened.CommittedSequence);

        RpcException error = await Assert.ThrowsAsync<RpcException>(first.ReadAsync);
        Assert.Equal(StatusCode.Aborted, error.StatusCode);
        Assert.Equal("STREAM_TAKEN_OVER", IngestCall.Reason(error));
        Assert.Equal(10ul, (await second.SendAsync(TestRecords.Range(6, 10))).CommittedSequence);
    }

    [Fact]
    public async Task Committed_rows_cannot_be_updated_or_deleted()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using (IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a"))
        {
            await call.SendAsync(TestRecords.Range(1, 3));
        }

        var update = await Assert.ThrowsAsync<Npgsql.PostgresException>(() => server.ScalarAsync<int>("UPDATE usage_records SET device_count = 1 RETURNING 1"));
        Assert.Contains("append-only", update.MessageText, StringComparison.Ordinal);
        await Assert.ThrowsAsync<Npgsql.PostgresException>(() => server.ScalarAsync<int>("DELETE FROM usage_records RETURNING 1"));
        await Assert.ThrowsAsync<Npgsql.PostgresException>(() => server.ScalarAsync<int>("TRUNCATE usage_records; SELECT 1"));
        Assert.Equal(3L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id NOT LIKE 'proof:%'"));
    }
}
