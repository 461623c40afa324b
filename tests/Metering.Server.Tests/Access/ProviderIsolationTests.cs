using Grpc.Core;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;
using Npgsql;
using Anomaly = Metering.Engine.Audit.Anomaly;
using AnomalyKind = Metering.Engine.Audit.AnomalyKind;

namespace Metering.Server.Tests.Access;

/// <summary>A provider never reads or writes another provider's data, on any service.</summary>
[Collection(PostgresCollection.Name)]
public sealed class ProviderIsolationTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Ingest_writes_only_under_the_callers_own_code_whatever_stream_it_names()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using (IngestCall other = await IngestCall.OpenAsync(server.Client(), "shared-name", TestServer.OtherProviderKey))
        {
            await other.SendAsync(TestRecords.Range(1, 5));
        }

        // The same stream name under the caller's key is the caller's own, empty stream.
        await using IngestCall mine = await IngestCall.OpenAsync(server.Client(), "shared-name");
        Assert.Equal(0UL, mine.Opened.CommittedSequence);
        await mine.SendAsync(TestRecords.Range(1, 2));

        var rows = await server.QueryAsync<(string Provider, long Count)>(
            "SELECT provider_id, count(*) FROM usage_records WHERE stream_id = 'shared-name' GROUP BY provider_id ORDER BY 1");
        Assert.Equal([(TestRecords.Provider, 2L), (TestRecords.OtherProvider, 5L)], rows);
    }

    [Fact]
    public async Task Heartbeats_cover_only_the_callers_own_stream_whatever_stream_it_names()
    {
        long day0 = TestRecords.BaseStartMs;
        var clock = new ManualClock(DateTimeOffset.FromUnixTimeMilliseconds(day0 + 20 * 60_000L));
        await using TestServer server = await TestServer.StartAsync(postgres, time: clock);
        // The caller's "shared-name" has records to 00:15 and then nothing; the other provider's
        // stream of the same name sends a heartbeat every ten minutes from 00:20 to 04:00.
        await using (IngestCall mine = await IngestCall.OpenAsync(server.Client(), "shared-name"))
        {
            await mine.SendAsync(TestRecords.Range(1, 2));
        }

        await using (IngestCall other = await IngestCall.OpenAsync(server.Client(), "shared-name", TestServer.OtherProviderKey))
        {
            for (long t = day0 + 20 * 60_000L; t <= day0 + 4 * 3_600_000L; t += 10 * 60_000L)
            {
                clock.Now = DateTimeOffset.FromUnixTimeMilliseconds(t);
                Assert.True((await other.HeartbeatAsync()).Recorded);
            }
        }

        var owners = await server.QueryAsync<(string Provider, long Count)>("SELECT provider_id, count(*) FROM stream_heartbeats GROUP BY provider_id");
        Assert.Equal([(TestRecords.OtherProvider, 23L)], owners);
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(server.ConnectionString);
        var detectors = new Metering.Engine.Audit.AnomalyDetectors(dataSource, clock);
        DateTimeOffset from = DateTimeOffset.FromUnixTimeMilliseconds(day0), until = DateTimeOffset.FromUnixTimeMilliseconds(day0 + 4 * 3_600_000L);
        Anomaly silence = Assert.Single(await detectors.DetectAsync(TestRecords.Provider, from, until, CancellationToken.None), a => a.Kind == AnomalyKind.SilentStream);
        Assert.Equal(("shared-name", day0 + 15 * 60_000L), (silence.StreamId, silence.FromUnixMs));
        Assert.Contains(new Metering.Engine.Audit.Fact("last_heartbeat_before", "none"), silence.Facts);
        Assert.DoesNotContain(await detectors.DetectAsync(TestRecords.OtherProvider, from, until, CancellationToken.None), a => a.Kind == AnomalyKind.SilentStream);
    }

    [Fact]
    public async Task Raw_log_uploads_are_found_only_by_their_owner()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        byte[] log = System.Text.Encoding.UTF8.GetBytes(RawLogSamples.Sacct);
        using (var upload = server.RawLogClient().UploadLog(TestServer.Bearer(TestServer.OtherProviderKey)))
        {
            await upload.RequestStream.WriteAsync(new LogChunk
            {
                Header = new UploadHeader { UploadId = "theirs", StreamId = "slurm", Format = LogFormat.SacctParsable2, Mapping = RawLogSamples.Mapping(), TotalBytes = (ulong)log.Length },
            });
            await upload.RequestStream.WriteAsync(new LogChunk { Data = Google.Protobuf.ByteString.CopyFrom(log) });
            await upload.RequestStream.CompleteAsync();
            Assert.Equal((ulong)RawLogSamples.SacctRecords, (await upload.ResponseAsync).Records);
        }

        RpcException error = await Assert.ThrowsAsync<RpcException>(() => server.RawLogClient().GetUploadAsync(new GetUploadRequest { UploadId = "theirs" }, TestServer.Bearer()).ResponseAsync);
        Assert.Equal(StatusCode.NotFound, error.StatusCode);
        UploadReport own = await server.RawLogClient().GetUploadAsync(new GetUploadRequest { UploadId = "theirs" }, TestServer.Bearer(TestServer.OtherProviderKey));
        Assert.True(own.Complete);
    }

    [Fact]
    public async Task Registry_reads_and_writes_are_confined_to_the_callers_own_entries()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        RegistryService.RegistryServiceClient registry = server.RegistryClient();
        Metadata mine = TestServer.Bearer();
        long theirs = (await registry.ListApplicationsAsync(new ListApplicationsRequest { CreditCode = TestRecords.OtherProvider }, TestServer.Bearer(TestServer.AuditorKey))).Applications.Single().ApplicationId;

        await AssertOtherProviderAsync(registry.GetOrganisationAsync(new GetOrganisationRequest { CreditCode = TestRecords.OtherProvider }, mine).ResponseAsync);
        await AssertOtherProviderAsync(registry.ListApplicationsAsync(new ListApplicationsRequest { CreditCode = TestRecords.OtherProvider }, mine).ResponseAsync);
        await AssertOtherProviderAsync(registry.FileApplicationAsync(RegistryScene.Filing(TestRecords.OtherProvider, "another-item"), mine).ResponseAsync);
        await AssertOtherProviderAsync(registry.FileFeeScheduleAsync(new FileFeeScheduleRequest
        {
            CreditCode = TestRecords.OtherProvider,
            ServiceItem = Admissions.ServiceItem,
            Lines = { new FeeLine { DeviceModel = "H100-SXM", Unit = FeeUnit.PerCardHour, PriceFen = 1 } },
        }, mine).ResponseAsync);

        // Another provider's application reads as unknown, so ids reveal nothing.
        RpcException hidden = await Assert.ThrowsAsync<RpcException>(() => registry.GetApplicationAsync(new GetApplicationRequest { ApplicationId = theirs }, mine).ResponseAsync);
        Assert.Equal((StatusCode.NotFound, "APPLICATION_UNKNOWN"), (hidden.StatusCode, IngestCall.Reason(hidden)));

        // Listing without a filter returns only the caller's own.
        ListApplicationsResponse listed = await registry.ListApplicationsAsync(new ListApplicationsRequest(), mine);
        Assert.All(listed.Applications, a => Assert.Equal(TestRecords.Provider, a.CreditCode));
        Assert.NotEmpty(listed.Applications);

        // Its own entries it may read and change.
        Assert.Equal(TestRecords.Provider, (await registry.GetOrganisationAsync(new GetOrganisationRequest { CreditCode = TestRecords.Provider }, mine)).CreditCode);
        FeeSchedule fees = await registry.FileFeeScheduleAsync(new FileFeeScheduleRequest
        {
            CreditCode = TestRecords.Provider,
            ServiceItem = Admissions.ServiceItem,
            Lines = { new FeeLine { DeviceModel = "H100-SXM", Unit = FeeUnit.PerCardHour, PriceFen = 1_700 } },
        }, mine);
        Assert.Equal(2U, fees.Version);
    }

    [Fact]
    public async Task Audit_chains_roots_and_proofs_are_open_to_a_provider_only_for_its_own_records()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using (IngestCall other = await IngestCall.OpenAsync(server.Client(), "cluster-x", TestServer.OtherProviderKey))
        {
            await other.SendAsync(TestRecords.Range(1, 5));
        }

        await using (IngestCall mine = await IngestCall.OpenAsync(server.Client(), "cluster-x"))
        {
            await mine.SendAsync(TestRecords.Range(1, 3));
        }

        var audit = new AuditService.AuditServiceClient(server.Channel);
        Metadata me = TestServer.Bearer();
        await AssertOtherProviderAsync(audit.VerifyChainAsync(new VerifyChainRequest { CreditCode = TestRecords.OtherProvider }, me).ResponseAsync);
        await AssertOtherProviderAsync(audit.VerifyChainAsync(new VerifyChainRequest(), me).ResponseAsync);
        await AssertOtherProviderAsync(audit.GetMerkleRootAsync(new GetMerkleRootRequest { CreditCode = TestRecords.OtherProvider, Day = "2026-11-20" }, me).ResponseAsync);
        await AssertOtherProviderAsync(audit.GetInclusionProofAsync(new GetInclusionProofRequest { CreditCode = TestRecords.OtherProvider, StreamId = "cluster-x", Sequence = 1 }, me).ResponseAsync);

        // Its own: only its own streams, its own leaves.
        VerifyChainResponse chains = await audit.VerifyChainAsync(new VerifyChainRequest { CreditCode = TestRecords.Provider }, me);
        Assert.Equal(["cluster-x", Admissions.ProofStream], chains.Streams.Select(s => s.StreamId).Order(StringComparer.Ordinal));
        Assert.Equal(3UL, chains.Streams.Single(s => s.StreamId == "cluster-x").RecordsChecked);
        MerkleRoot root = await audit.GetMerkleRootAsync(new GetMerkleRootRequest { CreditCode = TestRecords.Provider, Day = "2026-11-20" }, me);
        Assert.Equal(3u, root.LeafCount);
        InclusionProof proof = await audit.GetInclusionProofAsync(new GetInclusionProofRequest { CreditCode = TestRecords.Provider, StreamId = "cluster-x", Sequence = 2 }, me);
        Assert.Equal(root.Root, proof.Root);
    }

    private static async Task AssertOtherProviderAsync(Task call)
    {
        RpcException error = await Assert.ThrowsAsync<RpcException>(() => call);
        Assert.Equal((StatusCode.PermissionDenied, "OTHER_PROVIDER"), (error.StatusCode, IngestCall.Reason(error)));
    }
}
