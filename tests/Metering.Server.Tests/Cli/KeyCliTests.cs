using System.Security.Cryptography;
using System.Text;
using Metering.Engine.Access;
using Metering.Engine.Storage;
using Metering.Server.Tests.Infrastructure;
using Npgsql;

namespace Metering.Server.Tests.Cli;

[Collection(PostgresCollection.Name)]
public sealed class KeyCliTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Key_issue_stores_only_the_hash_and_the_printed_key_authenticates_as_its_role()
    {
        string database = await postgres.CreateDatabaseAsync();

        var (exit, output) = await CliProcess.RunAsync("key", "issue", "--role", "auditor", "--subject", "auditor-two", "--as", "ops-lead", "--connection", database);

        Assert.Equal(0, exit);
        string key = output.Split('\n')[0].Trim();
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(database);
        await using NpgsqlCommand find = dataSource.CreateCommand("SELECT count(*) FROM credentials WHERE key_sha256 = $1 AND issued_by = 'ops-lead'");
        find.Parameters.Add(new NpgsqlParameter { Value = SHA256.HashData(Encoding.UTF8.GetBytes(key)) });
        Assert.Equal(1L, await find.ExecuteScalarAsync());
        await using NpgsqlCommand plain = dataSource.CreateCommand("SELECT count(*) FROM credentials c WHERE to_jsonb(c)::text LIKE '%' || $1 || '%'");
        plain.Parameters.Add(new NpgsqlParameter { Value = key });
        Assert.Equal(0L, await plain.ExecuteScalarAsync());
        Assert.Equal(new Actor(Role.Auditor, "auditor-two"), await new CredentialStore(dataSource, TimeProvider.System).AuthenticateAsync(key, CancellationToken.None));
    }

    [Fact]
    public async Task Key_issue_for_an_invalid_credit_code_is_refused_and_writes_nothing()
    {
        string database = await postgres.CreateDatabaseAsync();
        long before = await CountAsync(database, "SELECT count(*) FROM credentials");

        var (exit, output) = await CliProcess.RunAsync("key", "issue", "--role", "provider", "--subject", "914403001922038217", "--connection", database);

        Assert.Equal(1, exit);
        Assert.Contains("CREDIT_CODE_INVALID", output, StringComparison.Ordinal);
        Assert.Equal(before, await CountAsync(database, "SELECT count(*) FROM credentials"));
    }

    [Fact]
    public async Task Key_issue_for_an_unregistered_provider_is_refused()
    {
        string database = await postgres.CreateDatabaseAsync();

        var (exit, output) = await CliProcess.RunAsync("key", "issue", "--role", "provider", "--subject", "9144030071526726XG", "--connection", database);

        Assert.Equal(1, exit);
        Assert.Contains("ORGANISATION_UNKNOWN", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Revoked_key_no_longer_authenticates_and_list_shows_who_revoked_it()
    {
        string database = await postgres.CreateDatabaseAsync();
        var (_, issued) = await CliProcess.RunAsync("key", "issue", "--role", "operator", "--subject", "operator-two", "--connection", database);
        string key = issued.Split('\n')[0].Trim();
        long id = await CountAsync(database, "SELECT max(credential_id) FROM credentials");

        var (exit, output) = await CliProcess.RunAsync("key", "revoke", id.ToString(System.Globalization.CultureInfo.InvariantCulture), "--as", "ops-lead", "--connection", database);
        Assert.Equal(0, exit);
        Assert.Contains("Revoked credential", output, StringComparison.Ordinal);

        await using NpgsqlDataSource dataSource = Database.CreateDataSource(database);
        Assert.Null(await new CredentialStore(dataSource, TimeProvider.System).AuthenticateAsync(key, CancellationToken.None));
        var (_, list) = await CliProcess.RunAsync("key", "list", "--connection", database);
        Assert.Contains("by ops-lead", list, StringComparison.Ordinal);
        Assert.DoesNotContain(key, list, StringComparison.Ordinal);

        var (again, refused) = await CliProcess.RunAsync("key", "revoke", id.ToString(System.Globalization.CultureInfo.InvariantCulture), "--connection", database);
        Assert.Equal(1, again);
        Assert.Contains("already revoked", refused, StringComparison.Ordinal);
    }

    private static async Task<long> CountAsync(string database, string sql)
    {
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(database);
        await using NpgsqlCommand command = dataSource.CreateCommand(sql);
        return (long)(await command.ExecuteScalarAsync())!;
    }
}
