using Dapper;
using Metering.Engine.Storage;
using Metering.Engine.Fixtures;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;

namespace Metering.Engine.IntegrationTests.Storage;

[Collection(PostgresCollection.Name)]
public sealed class MigratorTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Migrating_an_up_to_date_database_applies_nothing()
    {
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(await postgres.CreateDatabaseAsync());
        var migrator = new Migrator(dataSource, NullLogger.Instance);

        Assert.Empty(await migrator.MigrateAsync());
        Assert.Equal(Migrator.Embedded().Count, await migrator.CurrentVersionAsync());
    }

    [Fact]
    public async Task An_applied_migration_whose_file_changed_is_an_error()
    {
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(await postgres.CreateDatabaseAsync());
        await using (NpgsqlConnection connection = await dataSource.OpenConnectionAsync())
        {
            await connection.ExecuteAsync("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1");
        }

        var error = await Assert.ThrowsAsync<InvalidOperationException>(() => new Migrator(dataSource, NullLogger.Instance).MigrateAsync());
        Assert.Contains("must not change", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Usage_table_is_partitioned_by_month_and_keyed_by_provider_first()
    {
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(await postgres.CreateDatabaseAsync());
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync();

        string partitionKey = await connection.ExecuteScalarAsync<string>("SELECT pg_get_partkeydef('usage_records'::regclass)") ?? "";
        Assert.Equal("RANGE (start_at)", partitionKey);
        Assert.True(await connection.ExecuteScalarAsync<long>("SELECT count(*) FROM pg_inherits WHERE inhparent = 'usage_records'::regclass") >= 48);
        foreach (string table in new[] { "usage_records", "ingest_streams", "tamper_conflicts" })
        {
            string firstKeyColumn = await connection.ExecuteScalarAsync<string>("""
                SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                WHERE i.indrelid = @table::regclass AND i.indisprimary
                """, new { table }) ?? "";
            Assert.Equal("provider_id", firstKeyColumn);
        }
    }
}
