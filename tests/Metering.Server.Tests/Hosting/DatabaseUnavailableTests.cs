using Grpc.Core;
using Metering.Engine.Fixtures;
using Metering.Fixtures;
using Metering.Protocol.V1;
using Metering.Server.Access;
using Metering.Server.Fixtures;

namespace Metering.Server.Tests.Hosting;

/// <summary>
/// A running server whose PostgreSQL stops under it: every service answers UNAVAILABLE with the
/// ErrorInfo reason DATABASE_UNAVAILABLE, never UNKNOWN or INTERNAL, both when the caller's key is
/// remembered (the handler meets the lost database) and when it must be looked up (the
/// authentication interceptor meets it). The test runs its own PostgreSQL, since it stops it.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class DatabaseUnavailableTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Every_service_answers_unavailable_database_unavailable_once_postgresql_is_stopped_under_the_server()
    {
        var (database, keys) = await OwnSeededDatabase.StartAsync("metering-db-down-");

        // Keys stay remembered for the whole test, so that the calls below reach their handlers.
        await using TestServer server = await TestServer.StartAsync(postgres, database: database.ConnectionString,
            callLimits: new CallLimits { AuthenticationCacheMs = 60_000 });
        Metadata provider = TestServer.Bearer(keys.Provider), operatorKey = TestServer.Bearer(keys.Operator), auditor = TestServer.Bearer(keys.Auditor),
            settlement = TestServer.Bearer(keys.Settlement);
        var access = new AccessService.AccessServiceClient(server.Channel);
        var vouchers = new VoucherService.VoucherServiceClient(server.Channel);
        var settlements = new SettlementService.SettlementServiceClient(server.Channel);
        var audit = new AuditService.AuditServiceClient(server.Channel);

        // While the database runs, each key authenticates and the calls are answered.
        Assert.NotEmpty((await access.ListKeysAsync(new ListKeysRequest(), operatorKey)).Credentials);
        await settlements.ListPendingDaysAsync(new ListPendingDaysRequest(), settlement);
        await audit.ListAuditQueriesAsync(new ListAuditQueriesRequest(), auditor);
        await server.CapacityClient().ListNodeKeysAsync(new ListNodeKeysRequest { CreditCode = TestRecords.Provider }, provider);

        await database.DisposeAsync();

        (string Service, Func<Task> Call)[] cases =
        [
            ("IngestService", async () => throw await IngestCall.OpenRefusedAsync(server.Client(), "db-down", keys.Provider)),
            ("RawLogService", () => server.RawLogClient().GetUploadAsync(new GetUploadRequest { UploadId = "u1" }, provider).ResponseAsync),
            ("RegistryService", () => server.RegistryClient().GetOrganisationAsync(new GetOrganisationRequest { CreditCode = TestRecords.Provider }, operatorKey).ResponseAsync),
            ("AccessService", () => access.ListKeysAsync(new ListKeysRequest(), operatorKey).ResponseAsync),
            ("CapacityService", () => server.CapacityClient().ListNodeKeysAsync(new ListNodeKeysRequest { CreditCode = TestRecords.Provider }, provider).ResponseAsync),
            ("VoucherService", () => vouchers.ListProgrammeParametersAsync(new ListProgrammeParametersRequest(), operatorKey).ResponseAsync),
            ("SettlementService", () => settlements.ListPendingDaysAsync(new ListPendingDaysRequest(), settlement).ResponseAsync),
            ("AuditService", () => audit.VerifyChainAsync(new VerifyChainRequest { CreditCode = TestRecords.Provider }, auditor).ResponseAsync),
            ("TransparencyService", () => new TransparencyService.TransparencyServiceClient(server.Channel).GetTreeHeadAsync(new GetTreeHeadRequest(), auditor).ResponseAsync),
            ("PublicationService", () => new PublicationService.PublicationServiceClient(server.Channel).GetAdmittedListAsync(new GetAdmittedListRequest()).ResponseAsync),
            // The sandbox answers its clock from memory; a key not yet looked up must reach the database first.
            ("SandboxService", () => new SandboxService.SandboxServiceClient(server.Channel).GetClockAsync(new GetClockRequest(), TestServer.Bearer(keys.SecondOperator)).ResponseAsync),
        ];

        foreach (var (service, call) in cases)
        {
            RpcException refused = await Assert.ThrowsAsync<RpcException>(call);
            Assert.Equal((service, StatusCode.Unavailable, "DATABASE_UNAVAILABLE"), (service, refused.StatusCode, IngestCall.Reason(refused)));
        }
    }
}
