using Google.Protobuf;
using Grpc.Core;
using Metering.Engine.Access;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Metering.Server.Access;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;
using Npgsql;

namespace Metering.Server.Tests.Access;

/// <summary>AccessService over TLS: who may manage keys, what bad requests get, and the first operator key's bootstrap.</summary>
[Collection(PostgresCollection.Name)]
public sealed class AccessServiceTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Provider_auditor_and_settlement_keys_are_refused_every_key_rpc_and_change_nothing()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        var access = new AccessService.AccessServiceClient(server.Channel);
        long victim = await server.ScalarAsync<long>("SELECT credential_id FROM credentials WHERE subject = 'operator-one'");
        string before = await SnapshotAsync(server);
        var failures = new List<string>();

        foreach (string key in new[] { TestServer.ProviderKey, TestServer.AuditorKey, TestServer.SettlementKey })
        {
            Metadata caller = TestServer.Bearer(key);
            var calls = new (string Rpc, Func<Task> Call)[]
            {
                ("IssueKey", () => access.IssueKeyAsync(new IssueKeyRequest { Role = CredentialRole.Operator, Subject = "mallory" }, caller).ResponseAsync),
                ("RevokeKey", () => access.RevokeKeyAsync(new RevokeKeyRequest { CredentialId = victim }, caller).ResponseAsync),
                ("PinKey", () => access.PinKeyAsync(new PinKeyRequest { CredentialId = victim, ClientCertificateSha256 = ByteString.CopyFrom(new byte[32]) }, caller).ResponseAsync),
                ("ListKeys", () => access.ListKeysAsync(new ListKeysRequest(), caller).ResponseAsync),
            };
            foreach (var (rpc, call) in calls)
            {
                RpcException? error = await Record.ExceptionAsync(call) as RpcException;
                if (error is not { StatusCode: StatusCode.PermissionDenied } || IngestCall.Reason(error) != "ROLE_NOT_ALLOWED")
                {
                    failures.Add($"{rpc} with a non-operator key answered {error?.StatusCode.ToString() ?? "OK"} {(error is null ? "" : IngestCall.Reason(error))}");
                }
            }
        }

        Assert.Empty(failures);
        Assert.Equal(before, await SnapshotAsync(server));
    }

    [Fact]
    public async Task Bad_requests_are_refused_with_their_status_and_reason_and_change_nothing()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        var access = new AccessService.AccessServiceClient(server.Channel);
        Metadata op = TestServer.Bearer(TestServer.OperatorKey);
        long auditor = await server.ScalarAsync<long>("SELECT credential_id FROM credentials WHERE subject = 'auditor-one'");
        long unknown = await server.ScalarAsync<long>("SELECT max(credential_id) + 1000 FROM credentials");
        string before = await SnapshotAsync(server);

        var cases = new (string Case, StatusCode Status, string Reason, Func<Task> Call)[]
        {
            ("no role", StatusCode.InvalidArgument, "ROLE_UNKNOWN",
                () => access.IssueKeyAsync(new IssueKeyRequest { Subject = "someone" }, op).ResponseAsync),
            ("a role number no client was given", StatusCode.InvalidArgument, "ROLE_UNKNOWN",
                () => access.IssueKeyAsync(new IssueKeyRequest { Role = (CredentialRole)99, Subject = "someone" }, op).ResponseAsync),
            ("a provider subject with a wrong check character", StatusCode.InvalidArgument, "CREDIT_CODE_INVALID",
                () => access.IssueKeyAsync(new IssueKeyRequest { Role = CredentialRole.Provider, Subject = "914403001922038217" }, op).ResponseAsync),
            ("a valid credit code nobody registered", StatusCode.NotFound, "ORGANISATION_UNKNOWN",
                () => access.IssueKeyAsync(new IssueKeyRequest { Role = CredentialRole.Provider, Subject = "9144030071526726XG" }, op).ResponseAsync),
            ("a blank subject", StatusCode.InvalidArgument, "SUBJECT_INVALID",
                () => access.IssueKeyAsync(new IssueKeyRequest { Role = CredentialRole.Auditor, Subject = "   " }, op).ResponseAsync),
            ("a subject of 65 characters", StatusCode.InvalidArgument, "SUBJECT_INVALID",
                () => access.IssueKeyAsync(new IssueKeyRequest { Role = CredentialRole.Auditor, Subject = new string('a', 65) }, op).ResponseAsync),
            ("a label of 201 characters", StatusCode.InvalidArgument, "LABEL_INVALID",
                () => access.IssueKeyAsync(new IssueKeyRequest { Role = CredentialRole.Auditor, Subject = "someone", Label = new string('l', 201) }, op).ResponseAsync),
            ("an issue pin of 31 bytes", StatusCode.InvalidArgument, "PIN_INVALID",
                () => access.IssueKeyAsync(new IssueKeyRequest { Role = CredentialRole.Auditor, Subject = "someone", ClientCertificateSha256 = ByteString.CopyFrom(new byte[31]) }, op).ResponseAsync),
            ("a pin of 33 bytes", StatusCode.InvalidArgument, "PIN_INVALID",
                () => access.PinKeyAsync(new PinKeyRequest { CredentialId = auditor, ClientCertificateSha256 = ByteString.CopyFrom(new byte[33]) }, op).ResponseAsync),
            ("an empty pin", StatusCode.InvalidArgument, "PIN_INVALID",
                () => access.PinKeyAsync(new PinKeyRequest { CredentialId = auditor, ClientCertificateSha256 = ByteString.Empty }, op).ResponseAsync),
            ("a pin request with no change", StatusCode.InvalidArgument, "PIN_INVALID",
                () => access.PinKeyAsync(new PinKeyRequest { CredentialId = auditor }, op).ResponseAsync),
            ("unpin = false", StatusCode.InvalidArgument, "PIN_INVALID",
                () => access.PinKeyAsync(new PinKeyRequest { CredentialId = auditor, Unpin = false }, op).ResponseAsync),
            ("pinning an unknown credential", StatusCode.NotFound, "CREDENTIAL_UNKNOWN",
                () => access.PinKeyAsync(new PinKeyRequest { CredentialId = unknown, Unpin = true }, op).ResponseAsync),
            ("revoking an unknown credential", StatusCode.NotFound, "CREDENTIAL_UNKNOWN",
                () => access.RevokeKeyAsync(new RevokeKeyRequest { CredentialId = unknown }, op).ResponseAsync),
            ("revoking credential 0", StatusCode.NotFound, "CREDENTIAL_UNKNOWN",
                () => access.RevokeKeyAsync(new RevokeKeyRequest(), op).ResponseAsync),
            ("a page of 1001", StatusCode.InvalidArgument, "PAGE_SIZE_INVALID",
                () => access.ListKeysAsync(new ListKeysRequest { PageSize = 1001 }, op).ResponseAsync),
        };

        var failures = new List<string>();
        foreach (var (name, status, reason, call) in cases)
        {
            RpcException? error = await Record.ExceptionAsync(call) as RpcException;
            if (error is null || error.StatusCode != status || IngestCall.Reason(error) != reason)
            {
                failures.Add($"{name}: expected {status} {reason}, got {error?.StatusCode.ToString() ?? "OK"} {(error is null ? "" : IngestCall.Reason(error))}");
            }
        }

        Assert.Empty(failures);
        Assert.Equal(before, await SnapshotAsync(server));
    }

    [Fact]
    public async Task A_revoked_credential_cannot_be_pinned_or_revoked_again()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        var access = new AccessService.AccessServiceClient(server.Channel);
        Metadata op = TestServer.Bearer(TestServer.OperatorKey);
        IssueKeyResponse issued = await access.IssueKeyAsync(new IssueKeyRequest { Role = CredentialRole.Settlement, Subject = "night-batch" }, op);
        Credential revoked = await access.RevokeKeyAsync(new RevokeKeyRequest { CredentialId = issued.Credential.CredentialId }, op);
        Assert.Equal("operator-one", revoked.RevokedBy);
        string before = await SnapshotAsync(server);

        RpcException pin = await Assert.ThrowsAsync<RpcException>(() => access.PinKeyAsync(
            new PinKeyRequest { CredentialId = revoked.CredentialId, ClientCertificateSha256 = ByteString.CopyFrom(new byte[32]) }, op).ResponseAsync);
        RpcException again = await Assert.ThrowsAsync<RpcException>(() => access.RevokeKeyAsync(new RevokeKeyRequest { CredentialId = revoked.CredentialId }, op).ResponseAsync);

        Assert.Equal((StatusCode.FailedPrecondition, "CREDENTIAL_REVOKED"), (pin.StatusCode, IngestCall.Reason(pin)));
        Assert.Equal((StatusCode.FailedPrecondition, "CREDENTIAL_REVOKED"), (again.StatusCode, IngestCall.Reason(again)));
        Assert.Equal(before, await SnapshotAsync(server));
    }

    [Fact]
    public async Task A_provider_key_revoked_through_the_service_loses_its_open_stream_within_the_default_recheck_interval()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        var access = new AccessService.AccessServiceClient(server.Channel);
        Metadata op = TestServer.Bearer(TestServer.OperatorKey);
        IssueKeyResponse issued = await access.IssueKeyAsync(new IssueKeyRequest { Role = CredentialRole.Provider, Subject = TestRecords.Provider, Label = "leaked" }, op);
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a", issued.Key);
        await call.SendAsync(TestRecords.Range(1, 3));

        await access.RevokeKeyAsync(new RevokeKeyRequest { CredentialId = issued.Credential.CredentialId }, op);
        await Task.Delay(CredentialRecheckPolicy.Default.Interval + TimeSpan.FromMilliseconds(300));

        RpcException error = await call.SendRefusedAsync(TestRecords.Range(4, 6));
        Assert.Equal(StatusCode.Unauthenticated, error.StatusCode);
        Assert.Equal(3L, await server.ScalarAsync<long>("SELECT committed_sequence FROM ingest_streams WHERE stream_id = 'cluster-a'"));
    }

    [Fact]
    public async Task List_keys_pages_through_every_credential_without_a_key()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        var access = new AccessService.AccessServiceClient(server.Channel);
        Metadata op = TestServer.Bearer(TestServer.OperatorKey);

        var seen = new List<long>();
        long after = 0;
        int pages = 0;
        do
        {
            ListKeysResponse page = await access.ListKeysAsync(new ListKeysRequest { AfterCredentialId = after, PageSize = 2 }, op);
            Assert.True(page.Credentials.Count <= 2);
            seen.AddRange(page.Credentials.Select(c => c.CredentialId));
            Assert.DoesNotContain(page.Credentials, c => c.ToString().Contains(TestServer.OperatorKey, StringComparison.Ordinal));
            after = page.NextAfterCredentialId;
            pages++;
        }
        while (after != 0);

        Assert.Equal(await server.QueryAsync<long>("SELECT credential_id FROM credentials ORDER BY credential_id"), seen);
        Assert.True(pages >= 3, $"six seeded credentials in pages of two took {pages} page(s)");
    }

    [Fact]
    public async Task Concurrent_bootstraps_on_one_database_issue_exactly_one_operator_key()
    {
        string database = await postgres.CreateUnseededDatabaseAsync();
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(database);
        var store = new CredentialStore(dataSource, TimeProvider.System);

        Task<(CredentialInfo, string)>[] attempts = Enumerable.Range(0, 8)
            .Select(i => Task.Run(() => store.BootstrapOperatorAsync($"operator-{i}", "bootstrap", CancellationToken.None)))
            .ToArray();
        Exception?[] outcomes = await Task.WhenAll(attempts.Select(a => Record.ExceptionAsync(() => a)));

        Assert.Single(outcomes, o => o is null);
        Assert.All(outcomes.Where(o => o is not null), o => Assert.Equal(CredentialRefusal.OperatorKeyExists, Assert.IsType<CredentialRefusedException>(o).Reason));
        await using NpgsqlCommand count = dataSource.CreateCommand("SELECT count(*) FROM credentials WHERE role = 'operator'");
        Assert.Equal(1L, await count.ExecuteScalarAsync());
    }

    /// <summary>Every credential and every history row, as text: equal before and after means nothing changed.</summary>
    private static async Task<string> SnapshotAsync(TestServer server) =>
        string.Join('\n', await server.QueryAsync<string>("SELECT to_jsonb(c)::text FROM credentials c ORDER BY credential_id"))
        + "\n--\n" + await server.ScalarAsync<long>("SELECT count(*) FROM registry_history");
}
