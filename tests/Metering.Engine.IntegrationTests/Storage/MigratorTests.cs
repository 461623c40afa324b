using Dapper;
using Metering.Engine.Storage;
using Metering.Engine.Fixtures;
using Metering.Fixtures;
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

    [Fact]
    public async Task Migrate_past_2027_creates_the_months_ahead_once_and_a_2028_03_record_lands_in_its_own_partition()
    {
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(await postgres.CreateDatabaseAsync());
        var later = new ManualClock(new DateTimeOffset(2028, 2, 15, 8, 0, 0, TimeSpan.Zero));

        var migrator = new Migrator(dataSource, NullLogger.Instance) { Time = later, PartitionMonthsAhead = 2 };
        await migrator.MigrateAsync();
        var again = new Migrator(dataSource, NullLogger.Instance) { Time = later, PartitionMonthsAhead = 2 };
        await again.MigrateAsync();

        Assert.Equal(["usage_records_2028_01", "usage_records_2028_02", "usage_records_2028_03", "usage_records_2028_04"], migrator.PartitionsCreated);
        Assert.Empty(again.PartitionsCreated);
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync();
        string landed = await connection.ExecuteScalarAsync<string>(
            PartitionRows.Insert + " RETURNING tableoid::regclass::text", PartitionRows.Row("P-2028", "s", new DateTimeOffset(2028, 3, 10, 8, 0, 0, TimeSpan.Zero))) ?? "";
        Assert.Equal("usage_records_2028_03", landed);
        // Made as the migrations make a month: midnight UTC bounds, and the row guards it inherits
        // with the TRUNCATE guard that the guard step adds to every partition.
        Assert.Equal("FOR VALUES FROM ('2028-03-01 00:00:00+00') TO ('2028-04-01 00:00:00+00')",
            await connection.ExecuteScalarAsync<string>("SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = 'usage_records_2028_03'::regclass"));
        Assert.Equal(
            await connection.QueryAsync<string>("SELECT tgname::text FROM pg_trigger WHERE tgrelid = 'usage_records_2027_12'::regclass AND NOT tgisinternal ORDER BY 1"),
            await connection.QueryAsync<string>("SELECT tgname::text FROM pg_trigger WHERE tgrelid = 'usage_records_2028_03'::regclass AND NOT tgisinternal ORDER BY 1"));
    }

    [Fact]
    public async Task A_month_whose_rows_already_sit_in_the_default_partition_is_skipped_and_later_months_are_still_created()
    {
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(await postgres.CreateDatabaseAsync());
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync();
        // A record of 2028-02 written before any migrate made its month: it lands in the default partition.
        string landed = await connection.ExecuteScalarAsync<string>(
            PartitionRows.Insert + " RETURNING tableoid::regclass::text", PartitionRows.Row("P-2028", "s", new DateTimeOffset(2028, 2, 10, 8, 0, 0, TimeSpan.Zero))) ?? "";
        Assert.Equal("usage_records_default", landed);

        var migrator = new Migrator(dataSource, NullLogger.Instance) { Time = new ManualClock(new DateTimeOffset(2028, 2, 15, 8, 0, 0, TimeSpan.Zero)), PartitionMonthsAhead = 1 };
        await migrator.MigrateAsync();

        // 2028-02 cannot be made without moving evidence out of the default partition; its row stays there, readable through the parent.
        Assert.Equal(["usage_records_2028_01", "usage_records_2028_03"], migrator.PartitionsCreated);
        Assert.Null(await connection.ExecuteScalarAsync<string>("SELECT to_regclass('usage_records_2028_02')::text"));
        Assert.Equal(1L, await connection.ExecuteScalarAsync<long>("SELECT count(*) FROM usage_records WHERE provider_id = 'P-2028'"));
    }

    [Fact]
    public async Task Every_range_partitioned_table_of_the_schema_is_one_that_migrate_keeps_partitions_ahead_for()
    {
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(await postgres.CreateDatabaseAsync());
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync();
        var partitioned = await connection.QueryAsync<string>("""
            SELECT c.relname::text FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid
            WHERE c.relnamespace = current_schema()::regnamespace AND p.partstrat = 'r' ORDER BY 1
            """);
        Assert.Equal(MonthlyPartitions.Tables.Select(t => t.Table).Order(StringComparer.Ordinal), partitioned);
    }
}
