using System.Globalization;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Grpc.Core;
using Metering.Engine.Access;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>
/// `metering key issue|revoke|pin|list` as clients of a running server over TLS, and
/// `metering key bootstrap`, the one key command that opens the database.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class KeyCliTests(PostgresFixture postgres)
{
    [Fact]
    public async Task An_operator_issues_pins_lists_and_revokes_keys_through_the_server_and_the_history_names_each_calling_operator()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string expectedPin = Convert.ToHexStringLower(TestCertificates.ProviderClient.GetCertHash(HashAlgorithmName.SHA256));

        var (issueExit, issued) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "key", "issue", "--role", "auditor", "--subject", "auditor-two", "--label", "laptop");
        Assert.Equal(0, issueExit);
        string key = issued.Split('\n')[0].Trim();
        long id = await server.ScalarAsync<long>("SELECT credential_id FROM credentials WHERE key_sha256 = @hash AND issued_by = 'operator-one'", new { hash = CredentialStore.Hash(key) });
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM credentials c WHERE to_jsonb(c)::text LIKE '%' || @key || '%'", new { key }));
        await server.RegistryClient().ListAdmissionBatchesAsync(new ListAdmissionBatchesRequest(), TestServer.Bearer(key));

        var (pinExit, pinned) = await CliProcess.RunAsAsync(server, TestServer.SecondOperatorKey, "key", "pin", Id(id), "--pin-cert", TestCertificates.ProviderClientPemPaths.Certificate);
        Assert.Equal(0, pinExit);
        Assert.Contains(expectedPin, pinned, StringComparison.Ordinal);
        // The change reaches this server's next call at once: the key now needs its certificate.
        RpcException withoutCertificate = await Assert.ThrowsAsync<RpcException>(() =>
            server.RegistryClient().ListAdmissionBatchesAsync(new ListAdmissionBatchesRequest(), TestServer.Bearer(key)).ResponseAsync);
        Assert.Equal("CLIENT_CERTIFICATE_REQUIRED", IngestCall.Reason(withoutCertificate));

        var (revokeExit, revoked) = await CliProcess.RunAsAsync(server, TestServer.SecondOperatorKey, "key", "revoke", Id(id));
        Assert.Equal(0, revokeExit);
        Assert.Contains($"Revoked credential {id} (auditor auditor-two)", revoked, StringComparison.Ordinal);
        RpcException afterRevocation = await Assert.ThrowsAsync<RpcException>(() =>
            server.RegistryClient().ListAdmissionBatchesAsync(new ListAdmissionBatchesRequest(), TestServer.Bearer(key)).ResponseAsync);
        Assert.Equal(StatusCode.Unauthenticated, afterRevocation.StatusCode);

        var (listExit, list) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "key", "list");
        Assert.Equal(0, listExit);
        string row = list.Split('\n').Single(line => line.TrimStart().StartsWith(Id(id) + " ", StringComparison.Ordinal));
        Assert.Contains("auditor-two", row, StringComparison.Ordinal);
        Assert.Contains("by operator-two", row, StringComparison.Ordinal);
        Assert.Contains(expectedPin, row, StringComparison.Ordinal);
        Assert.DoesNotContain(key, list, StringComparison.Ordinal);

        Assert.Equal(
            [("operator-one", "operator", "issue"), ("operator-two", "operator", "pin"), ("operator-two", "operator", "revoke")],
            await server.QueryAsync<(string, string, string)>(
                "SELECT actor, role, action FROM registry_history WHERE entity = 'credential' AND entity_key = @key ORDER BY change_id", new { key = Id(id) }));

        var (againExit, again) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "key", "revoke", Id(id));
        Assert.Equal(4, againExit);
        Assert.Contains("FailedPrecondition CREDENTIAL_REVOKED", again, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_provider_key_cannot_issue_itself_an_operator_key()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        long credentials = await server.ScalarAsync<long>("SELECT count(*) FROM credentials");
        long history = await server.ScalarAsync<long>("SELECT count(*) FROM registry_history");

        var (exit, output) = await CliProcess.RunAsAsync(server, TestServer.ProviderKey, "key", "issue", "--role", "operator", "--subject", TestRecords.Provider);

        Assert.Equal(4, exit);
        Assert.Contains("PermissionDenied ROLE_NOT_ALLOWED", output, StringComparison.Ordinal);
        Assert.Equal(credentials, await server.ScalarAsync<long>("SELECT count(*) FROM credentials"));
        Assert.Equal(history, await server.ScalarAsync<long>("SELECT count(*) FROM registry_history"));
    }

    [Fact]
    public async Task A_revoked_operator_key_can_no_longer_issue_or_list_keys()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        var (_, issued) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "key", "issue", "--role", "operator", "--subject", "operator-leaving");
        string leaving = issued.Split('\n')[0].Trim();
        long id = await server.ScalarAsync<long>("SELECT credential_id FROM credentials WHERE key_sha256 = @hash", new { hash = CredentialStore.Hash(leaving) });
        Assert.Equal(0, (await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "key", "revoke", Id(id))).ExitCode);
        long credentials = await server.ScalarAsync<long>("SELECT count(*) FROM credentials");

        var (issueExit, issueOutput) = await CliProcess.RunAsAsync(server, leaving, "key", "issue", "--role", "operator", "--subject", "operator-leaving-again");
        var (listExit, listOutput) = await CliProcess.RunAsAsync(server, leaving, "key", "list");

        Assert.Equal(4, issueExit);
        Assert.Contains("Unauthenticated UNAUTHENTICATED", issueOutput, StringComparison.Ordinal);
        Assert.Equal(4, listExit);
        Assert.Contains("Unauthenticated UNAUTHENTICATED", listOutput, StringComparison.Ordinal);
        Assert.Equal(credentials, await server.ScalarAsync<long>("SELECT count(*) FROM credentials"));
    }

    [Fact]
    public async Task Key_issue_for_an_invalid_credit_code_is_refused_by_the_server_and_writes_nothing()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        long before = await server.ScalarAsync<long>("SELECT count(*) FROM credentials");

        var (exit, output) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "key", "issue", "--role", "provider", "--subject", "914403001922038217");

        Assert.Equal(4, exit);
        Assert.Contains("InvalidArgument CREDIT_CODE_INVALID", output, StringComparison.Ordinal);
        Assert.Equal(before, await server.ScalarAsync<long>("SELECT count(*) FROM credentials"));
    }

    [Fact]
    public async Task Bootstrap_on_a_fresh_database_issues_an_operator_key_that_then_issues_keys_through_the_server_and_a_second_bootstrap_is_refused()
    {
        string database = await postgres.CreateUnseededDatabaseAsync();

        var (exit, output) = await CliProcess.RunAsync("key", "bootstrap", "--name", "alice", "--connection", database);
        var (againExit, again) = await CliProcess.RunAsync("key", "bootstrap", "--name", "mallory", "--connection", database);

        Assert.Equal(0, exit);
        string alice = output.Split('\n')[0].Trim();
        Assert.Equal(4, againExit);
        Assert.Contains("refused: OPERATOR_KEY_EXISTS", again, StringComparison.Ordinal);
        await using TestServer server = await TestServer.StartAsync(postgres, database: database);
        Assert.Equal(1L, await server.ScalarAsync<long>("SELECT count(*) FROM credentials"));
        var (issueExit, issued) = await CliProcess.RunAsAsync(server, alice, "key", "issue", "--role", "auditor", "--subject", "bob");
        Assert.Equal(0, issueExit);
        string bob = issued.Split('\n')[0].Trim();
        Assert.Equal("alice", await server.ScalarAsync<string>("SELECT issued_by FROM credentials WHERE key_sha256 = @hash", new { hash = CredentialStore.Hash(bob) }));
        Assert.Equal(
            [("alice", "bootstrap"), ("alice", "issue")],
            await server.QueryAsync<(string, string)>("SELECT actor, action FROM registry_history WHERE entity = 'credential' ORDER BY change_id"));
    }

    [Fact]
    public async Task Bootstrap_works_on_the_embedded_database_with_no_server_running_and_refuses_a_second_time()
    {
        string root = Directory.CreateTempSubdirectory("metering-bootstrap-").FullName;
        // When the tests run as root, the embedded PostgreSQL's own user must be able to walk in.
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(root, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute);
        }

        string dataDirectory = Path.Combine(root, "pg");

        var (exit, output) = await CliProcess.RunAsync("key", "bootstrap", "--name", "alice", "--data-dir", dataDirectory);
        var (againExit, again) = await CliProcess.RunAsync("key", "bootstrap", "--name", "alice", "--data-dir", dataDirectory);

        Assert.True(exit == 0, output);
        // The key is printed alone on its line, whatever the embedded database logged around it.
        Assert.Single(output.Split('\n'), line => Regex.IsMatch(line.Trim(), "^[A-Za-z0-9_-]{43}$"));
        Assert.Equal(4, againExit);
        Assert.Contains("refused: OPERATOR_KEY_EXISTS", again, StringComparison.Ordinal);
    }

    private static string Id(long id) => id.ToString(CultureInfo.InvariantCulture);
}
