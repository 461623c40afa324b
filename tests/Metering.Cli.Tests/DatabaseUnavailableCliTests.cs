using Metering.Engine.Fixtures;
using Metering.Fixtures;
using Metering.Server.Access;
using Metering.Server.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>
/// A server that answers but has lost its database (UNAVAILABLE / DATABASE_UNAVAILABLE) is a
/// fault to retry, not a refusal: the CLI says so in one line and exits 5, as for a server that
/// does not answer at all, not 4. The test runs its own PostgreSQL, since it stops it.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class DatabaseUnavailableCliTests(PostgresFixture postgres)
{
    [Fact]
    public async Task A_server_whose_database_is_gone_makes_the_cli_exit_5_with_one_line_not_4()
    {
        var (database, keys) = await OwnSeededDatabase.StartAsync("metering-cli-db-down-");

        // The key stays remembered, so that the second call reaches the handler, which meets the lost database.
        await using TestServer server = await TestServer.StartAsync(postgres, database: database.ConnectionString,
            callLimits: new CallLimits { AuthenticationCacheMs = 60_000 });
        var before = await CliProcess.RunAsAsync(server, keys.Operator, "key", "list");
        Assert.True(before.ExitCode == 0, before.Output);

        await database.DisposeAsync();
        var after = await CliProcess.RunAsAsync(server, keys.Operator, "key", "list");

        Assert.True(after.ExitCode == 5, after.Output);
        Assert.Contains("cannot reach its database", after.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("refused:", after.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", after.Output, StringComparison.Ordinal);
    }
}
