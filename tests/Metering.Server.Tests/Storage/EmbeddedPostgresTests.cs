using Metering.Engine.Storage;
using Metering.Server.Tests.Infrastructure;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;

namespace Metering.Server.Tests.Storage;

[Collection(PostgresCollection.Name)]
public sealed class EmbeddedPostgresTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Embedded_server_listens_only_on_a_private_unix_socket()
    {
        await using var connection = new NpgsqlConnection(postgres.Server.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand("SELECT current_setting('listen_addresses'), current_setting('unix_socket_permissions')", connection);
        await using var reader = await command.ExecuteReaderAsync();
        Assert.True(await reader.ReadAsync());
        Assert.Equal("", reader.GetString(0));
        Assert.Equal("0700", reader.GetString(1));
        Assert.StartsWith(Path.GetTempPath().TrimEnd('/'), postgres.Server.SocketDirectory, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_second_engine_on_the_same_data_folder_is_refused()
    {
        var options = new EmbeddedPostgresOptions { DataDirectory = postgres.Server.DataDirectory, Durable = false };

        var error = await Assert.ThrowsAsync<EmbeddedPostgresException>(() => EmbeddedPostgres.StartAsync(options, NullLogger.Instance));

        Assert.Contains("in use by another metering process", error.Message, StringComparison.Ordinal);
        // The running cluster is untouched.
        await using var connection = new NpgsqlConnection(postgres.Server.ConnectionString);
        await connection.OpenAsync();
    }

    [Fact]
    public void Server_binaries_are_found_on_this_machine()
    {
        string? bin = EmbeddedPostgres.FindBinaries();
        Assert.NotNull(bin);
        Assert.True(File.Exists(Path.Combine(bin, "postgres")));
    }
}
