using System.Text;
using Google.Protobuf;
using Grpc.Core;
using Metering.Engine.Fixtures;
using Metering.Fixtures;
using Metering.Protocol.V1;
using Metering.Server.Fixtures;
using Metering.Server.Hosting;
using Npgsql;

namespace Metering.Server.Tests.Hosting;

/// <summary>
/// Every acknowledged write, not only an ingest batch, waits for durable replication: on the test's
/// single PostgreSQL, which has no standby attached, a server that requires durable replication
/// refuses a raw-log upload, a settlement run, a registry write and a voucher write with
/// UNAVAILABLE / REPLICATION_NOT_DURABLE and writes nothing, while it still answers reads; a
/// server on the same database that does not require it accepts the very same calls.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class DurableAcknowledgementTests(PostgresFixture postgres)
{
    private static readonly byte[] Sacct = Encoding.UTF8.GetBytes(RawLogSamples.Sacct);

    [Fact]
    public async Task A_raw_log_upload_is_refused_and_stores_nothing_while_no_synchronous_standby_is_attached()
    {
        string database = await DatabaseAsync();
        await using (TestServer required = await TestServer.StartAsync(postgres, database: database, requireDurableReplication: true))
        {
            RpcException refused = await Assert.ThrowsAsync<RpcException>(() => UploadAsync(required, "durable-upload"));

            AssertNotDurable(refused);
            Assert.Equal(0L, await required.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = 'durable-upload'"));
            Assert.Equal(0L, await required.ScalarAsync<long>("SELECT count(*) FROM raw_log_uploads WHERE upload_id = 'durable-upload'"));
        }

        await using TestServer notRequired = await TestServer.StartAsync(postgres, database: database);
        UploadReport report = await UploadAsync(notRequired, "durable-upload");
        Assert.True(report.Records > 0);
        Assert.Equal((long)report.Records, await notRequired.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = 'durable-upload'"));
    }

    [Fact]
    public async Task A_settlement_run_is_refused_and_closes_nothing_while_no_synchronous_standby_is_attached_and_reads_are_answered()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, VoucherScene.Day, 10));
        string database = WithSynchronousCommit(scene.ConnectionString);
        Metadata batch = TestServer.Bearer(TestServer.SettlementKey);
        var request = new SettleDayRequest { Day = "2026-11-20" };

        await using (TestServer required = await TestServer.StartAsync(postgres, time: scene.Clock, database: database, requireDurableReplication: true))
        {
            var settlement = new SettlementService.SettlementServiceClient(required.Channel);
            AssertNotDurable(await Assert.ThrowsAsync<RpcException>(() => settlement.SettleDayAsync(request, batch).ResponseAsync));
            AssertNotDurable(await Assert.ThrowsAsync<RpcException>(async () =>
            {
                using AsyncServerStreamingCall<SettleDayProgress> call = settlement.SettleDayWithProgress(request, batch);
                await foreach (SettleDayProgress _ in call.ResponseStream.ReadAllAsync())
                {
                }
            }));

            Assert.Equal(0L, await scene.ScalarAsync<long>("SELECT count(*) FROM settlement_runs"));
            Assert.Equal(0L, await scene.ScalarAsync<long>("SELECT count(*) FROM ledger_lines"));
            Assert.Contains((await settlement.ListPendingDaysAsync(new ListPendingDaysRequest(), batch)).Days, d => d.Day == "2026-11-20" && d.Records == 10);
        }

        await using TestServer notRequired = await TestServer.StartAsync(postgres, time: scene.Clock, database: database);
        Protocol.V1.Settlement settled = await new SettlementService.SettlementServiceClient(notRequired.Channel).SettleDayAsync(request, batch);
        Assert.False(settled.AlreadyClosed);
        Assert.Equal(1L, await scene.ScalarAsync<long>("SELECT count(*) FROM settlement_runs"));
    }

    [Fact]
    public async Task Registry_and_voucher_writes_are_refused_and_change_nothing_while_no_synchronous_standby_is_attached()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync(VoucherScene.NewCode(), approve: false);
        string newcomer = VoucherScene.NewCode();
        string database = WithSynchronousCommit(scene.ConnectionString);
        Metadata operatorKey = TestServer.Bearer(TestServer.OperatorKey);

        await using (TestServer required = await TestServer.StartAsync(postgres, time: scene.Clock, database: database, requireDurableReplication: true))
        {
            var vouchers = new VoucherService.VoucherServiceClient(required.Channel);
            AssertNotDurable(await Assert.ThrowsAsync<RpcException>(() =>
                vouchers.ApproveHolderAsync(new ApproveHolderRequest { CreditCode = holder }, operatorKey).ResponseAsync));
            AssertNotDurable(await Assert.ThrowsAsync<RpcException>(() => required.RegistryClient().RegisterOrganisationAsync(
                new RegisterOrganisationRequest { Organisation = new Organisation { CreditCode = newcomer, Name = "Newcomer" } }, operatorKey).ResponseAsync));

            Assert.Equal(HolderStatus.HolderApplicant, (await vouchers.GetHolderAsync(new GetHolderRequest { CreditCode = holder }, operatorKey)).Status);
            RpcException unknown = await Assert.ThrowsAsync<RpcException>(() =>
                required.RegistryClient().GetOrganisationAsync(new GetOrganisationRequest { CreditCode = newcomer }, operatorKey).ResponseAsync);
            Assert.Equal("ORGANISATION_UNKNOWN", IngestCall.Reason(unknown));
        }

        await using TestServer notRequired = await TestServer.StartAsync(postgres, time: scene.Clock, database: database);
        Holder approved = await new VoucherService.VoucherServiceClient(notRequired.Channel).ApproveHolderAsync(new ApproveHolderRequest { CreditCode = holder }, operatorKey);
        Assert.Equal(HolderStatus.HolderApproved, approved.Status);
    }

    [Theory]
    [InlineData("/metering.v1.RawLogService/UploadLog", true)]
    [InlineData("/metering.v1.SettlementService/SettleDay", true)]
    [InlineData("/metering.v1.SettlementService/SettleDayWithProgress", true)]
    [InlineData("/metering.v1.RegistryService/RegisterOrganisation", true)]
    [InlineData("/metering.v1.VoucherService/IssueVoucher", true)]
    [InlineData("/metering.v1.AccessService/IssueKey", true)]
    [InlineData("/metering.v1.CapacityService/SubmitAttestation", true)]
    [InlineData("/metering.v1.RawLogService/GetUpload", false)]
    [InlineData("/metering.v1.SettlementService/ListPendingDays", false)]
    [InlineData("/metering.v1.AuditService/QueryUsage", false)]
    [InlineData("/metering.v1.AuditService/VerifyChain", false)]
    [InlineData("/grpc.health.v1.Health/Check", false)]
    public void Writes_are_the_contracts_rpcs_that_are_not_reads(string method, bool write) =>
        Assert.Equal(write, DurableAcknowledgementInterceptor.IsAcknowledgedWrite(method));

    private static void AssertNotDurable(RpcException refused)
    {
        Assert.Equal(StatusCode.Unavailable, refused.StatusCode);
        Assert.Equal(("REPLICATION_NOT_DURABLE", "NO_SYNCHRONOUS_STANDBY"), (IngestCall.Reason(refused), IngestCall.Metadata(refused, "why")));
    }

    /// <summary>The server's sessions commit with synchronous_commit on, so that the missing standby is what the check finds.</summary>
    private static string WithSynchronousCommit(string database) =>
        new NpgsqlConnectionStringBuilder(database) { Options = "-c synchronous_commit=on" }.ConnectionString;

    private async Task<string> DatabaseAsync() => WithSynchronousCommit(await postgres.CreateDatabaseAsync());

    private static async Task<UploadReport> UploadAsync(TestServer server, string streamId)
    {
        using AsyncClientStreamingCall<LogChunk, UploadReport> call = server.RawLogClient().UploadLog(TestServer.Bearer());
        try
        {
            await call.RequestStream.WriteAsync(new LogChunk
            {
                Header = new UploadHeader
                {
                    UploadId = streamId, StreamId = streamId, Format = LogFormat.SacctParsable2, Mapping = RawLogSamples.Mapping(), TotalBytes = (ulong)Sacct.Length,
                },
            });
            await call.RequestStream.WriteAsync(new LogChunk { Data = ByteString.CopyFrom(Sacct) });
            await call.RequestStream.CompleteAsync();
        }
        catch (RpcException)
        {
            // The server answered before reading the file (a refusal); the answer says why.
        }

        return await call.ResponseAsync;
    }
}
