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

    [Fact]
    public async Task Migration_28_moves_the_notice_numbers_of_a_database_holding_admissions_into_their_programme_wide_table()
    {
        // A database at migration 27, as a deployment of the previous release leaves it, holding
        // an admitted application with its notice number and a pending one of another provider.
        var admin = new NpgsqlConnectionStringBuilder(postgres.Server.ConnectionString) { Database = "postgres", Pooling = false };
        string name = $"at27_{Environment.ProcessId}_{Guid.NewGuid():N}";
        await using (var connection = new NpgsqlConnection(admin.ConnectionString))
        {
            await connection.OpenAsync();
            await connection.ExecuteAsync($"CREATE DATABASE {name} TEMPLATE template0");
        }

        await using NpgsqlDataSource dataSource = Database.CreateDataSource(new NpgsqlConnectionStringBuilder(postgres.Server.ConnectionString) { Database = name }.ConnectionString);
        long admitted, pending;
        await using (NpgsqlConnection connection = await dataSource.OpenConnectionAsync())
        {
            await connection.ExecuteAsync("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())");
            foreach (Migration migration in Migrator.Embedded().Where(m => m.Version <= 27))
            {
                await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync();
                await connection.ExecuteAsync(migration.Sql, transaction: transaction);
                await connection.ExecuteAsync("INSERT INTO schema_migrations (version, name, checksum) VALUES (@Version, @Name, @Checksum)", migration, transaction);
                await transaction.CommitAsync();
            }

            await connection.ExecuteAsync("""
                INSERT INTO organisations (provider_id, name, legal_form, district, established_on, registered_at)
                VALUES (@a, 'A', 'enterprise', 'nanshan', '2015-06-01', now()), (@b, 'B', 'enterprise', 'futian', '2015-06-01', now())
                """, new { a = TestRecords.Provider, b = TestRecords.OtherProvider });
            const string insert = """
                INSERT INTO applications (provider_id, batch_id, service_item, state, filed_at, financial_report_kind, declared_fp16_gflops, service_content,
                                          service_standards, metering_proof_stream, metering_proof_records, fee_lines, notice_number)
                VALUES (@provider, '2025', 'gpu-training', @state, now(), 'audited', 316608000, 'content', 'standards', 'proof', 2, '[]', @number)
                RETURNING application_id
                """;
            admitted = await connection.ExecuteScalarAsync<long>(insert, new { provider = TestRecords.Provider, state = "admitted", number = "SZ-2025-0001" });
            pending = await connection.ExecuteScalarAsync<long>(insert, new { provider = TestRecords.OtherProvider, state = "awaiting_admission_notice", number = (string?)null });
        }

        IReadOnlyList<Migration> applied = await new Migrator(dataSource, NullLogger.Instance).MigrateAsync();

        Assert.Equal(new[] { 28 }, applied.Select(m => m.Version).Where(v => v <= 28));
        await using (NpgsqlConnection connection = await dataSource.OpenConnectionAsync())
        {
            Assert.Equal(new[] { ("SZ-2025-0001", TestRecords.Provider, admitted) },
                await connection.QueryAsync<(string, string, long)>("SELECT notice_number, provider_id, application_id FROM admission_notice_numbers"));

            // The number stays unique programme-wide: the other provider can neither register it
            // again nor write it on its application without a registration of its own.
            var registered = await Assert.ThrowsAsync<PostgresException>(() => connection.ExecuteAsync(
                "INSERT INTO admission_notice_numbers (notice_number, provider_id, application_id) VALUES ('SZ-2025-0001', @b, @pending)", new { b = TestRecords.OtherProvider, pending }));
            Assert.Equal((PostgresErrorCodes.UniqueViolation, "admission_notice_numbers_pkey"), (registered.SqlState, registered.ConstraintName));
            var written = await Assert.ThrowsAsync<PostgresException>(() => connection.ExecuteAsync(
                "UPDATE applications SET notice_number = 'SZ-2025-0001' WHERE provider_id = @b AND application_id = @pending", new { b = TestRecords.OtherProvider, pending }));
            Assert.Equal((PostgresErrorCodes.ForeignKeyViolation, "applications_notice_number_fkey"), (written.SqlState, written.ConstraintName));

            // Every unique key of the applications component now names provider_id.
            var withoutProvider = await connection.QueryAsync<string>("""
                SELECT i.indexrelid::regclass::text FROM pg_index i
                WHERE i.indisunique AND i.indrelid::regclass::text = ANY(@tables)
                  AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) AND a.attname = 'provider_id')
                """, new { tables = ApplicationComponent });
            Assert.Empty(withoutProvider);
        }
    }

    /// <summary>The 18 tables tied by foreign keys to applications (Storage/README.md, "Citus").</summary>
    private static readonly string[] ApplicationComponent =
    [
        "applications", "application_materials", "application_capacity", "application_stages", "verification_parts", "stage_proposals", "stage_proposal_parts",
        "reconsiderations", "service_items", "service_item_suspensions", "fee_schedules", "contracts", "contract_other_support", "vouchers", "claims", "claim_lines",
        "redeemed_usage", "voucher_holds",
    ];
}
