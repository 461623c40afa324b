using Dapper;
using Metering.Engine.Storage;
using Metering.Server.Hosting;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;

namespace Metering.Server.Tests.Storage;

/// <summary>
/// Plays the insider who holds the server's database login: the runtime role. Everything here
/// connects as that role (or as the owner, to look), after the server itself has written real
/// evidence through it.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class RuntimeRoleTests(PostgresFixture postgres)
{
    private const string Role = SchemaGuard.DefaultRuntimeRole;

    [Fact]
    public async Task Runtime_role_can_neither_update_delete_nor_truncate_any_evidence_table_or_partition()
    {
        string owner = await SeededDatabaseAsync();
        List<string> relations = await EvidenceRelationsAsync(owner);
        Assert.Contains("usage_records_2026_11", relations);
        Assert.Contains("usage_records_default", relations);
        Assert.Contains("settlement_statements", relations);
        Dictionary<string, string> before = await ChecksumsAsync(owner, relations);
        Assert.True(before.Count(c => !c.Value.StartsWith("0:", StringComparison.Ordinal)) >= 5, "the server wrote evidence in several tables first");

        int attempts = 0;
        await using (NpgsqlConnection runtime = await OpenAsync(PostgresFixture.AsRuntimeRole(owner)))
        {
            foreach (string relation in relations)
            {
                string column = await runtime.ExecuteScalarAsync<string?>("""
                    SELECT attname FROM pg_attribute
                    WHERE attrelid = @relation::regclass AND attnum > 0 AND NOT attisdropped AND attidentity = '' AND attgenerated = '' AND NOT has_column_privilege(@relation::regclass, attnum, 'UPDATE')
                    ORDER BY attnum LIMIT 1
                    """, new { relation }) ?? throw new InvalidOperationException($"{relation}: the runtime role may update every column");
                foreach (string sql in new[]
                {
                    $"UPDATE {relation} SET {column} = {column}",
                    $"DELETE FROM {relation}",
                    $"TRUNCATE {relation}",
                    $"TRUNCATE {relation} CASCADE",
                })
                {
                    var refused = await Assert.ThrowsAsync<PostgresException>(() => runtime.ExecuteAsync(sql));
                    Assert.True(refused.SqlState == PostgresErrorCodes.InsufficientPrivilege, $"{sql}: {refused.SqlState} {refused.MessageText}");
                    attempts++;
                }
            }
        }

        Assert.Equal(relations.Count * 4, attempts);
        Assert.Equal(before, await ChecksumsAsync(owner, relations));
    }

    [Fact]
    public async Task Runtime_role_can_neither_drop_a_trigger_alter_a_table_create_one_nor_become_the_owner()
    {
        string owner = await postgres.CreateDatabaseAsync();
        await using NpgsqlConnection runtime = await OpenAsync(PostgresFixture.AsRuntimeRole(owner));

        foreach (string sql in new[]
        {
            "DROP TRIGGER usage_records_append_only ON usage_records",
            "DROP TRIGGER evidence_refuses_truncate ON usage_records_2026_11",
            "ALTER TABLE usage_records DISABLE TRIGGER USER",
            "ALTER TABLE ingest_streams DISABLE TRIGGER ingest_streams_forward_only",
            "ALTER TABLE settlement_statements DROP CONSTRAINT settlement_statements_pkey",
            "DROP TABLE audit_query_log",
            "CREATE TABLE shadow_usage (id bigint)",
            "CREATE FUNCTION refuse_nothing() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
            "SET session_replication_role = replica",
            "SET ROLE metering",
        })
        {
            var refused = await Assert.ThrowsAsync<PostgresException>(() => runtime.ExecuteAsync(sql));
            Assert.True(refused.SqlState == PostgresErrorCodes.InsufficientPrivilege, $"{sql}: {refused.SqlState} {refused.MessageText}");
        }

        await using NpgsqlConnection look = await OpenAsync(owner);
        Assert.Equal(0L, await look.ExecuteScalarAsync<long>("SELECT count(*) FROM pg_class WHERE relname = 'shadow_usage'"));
        Assert.True(await look.ExecuteScalarAsync<bool>("SELECT tgenabled = 'O' FROM pg_trigger WHERE tgname = 'usage_records_append_only' AND tgrelid = 'usage_records'::regclass"));
    }

    [Fact]
    public async Task Runtime_role_cannot_move_a_stream_head_backwards_or_sideways()
    {
        string owner = await postgres.CreateDatabaseAsync();
        await using (TestServer server = await TestServer.StartAsync(postgres, database: owner))
        {
            await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a");
            await call.SendAsync(TestRecords.Range(1, 5));
            await call.CompleteAsync();
        }

        const string Where = "WHERE stream_id = 'cluster-a'";
        await using NpgsqlConnection look = await OpenAsync(owner);
        var head = await look.QuerySingleAsync<(long Sequence, byte[] Head)>($"SELECT committed_sequence, chain_head FROM ingest_streams {Where}");
        Assert.Equal(5L, head.Sequence);
        // The writer names the partition of the record at the mark, so that the trigger's check searches one partition.
        Assert.True(await look.ExecuteScalarAsync<bool>(
            $"SELECT head_start_at = (SELECT start_at FROM usage_records {Where} AND sequence = 5) FROM ingest_streams {Where}"));

        await using NpgsqlConnection runtime = await OpenAsync(PostgresFixture.AsRuntimeRole(owner));
        foreach (var (sql, says) in new[]
        {
            ($"UPDATE ingest_streams SET committed_sequence = 2, chain_head = (SELECT chain_hash FROM usage_records {Where} AND sequence = 2) {Where}", "may not go back"),
            ($"UPDATE ingest_streams SET chain_head = sha256('forged') {Where}", "without the committed mark advancing"),
            ($"UPDATE ingest_streams SET committed_sequence = 99, chain_head = sha256('forged') {Where}", "only advance to a committed record"),
            ($"UPDATE ingest_streams SET committed_sequence = 6, chain_head = sha256('forged') {Where}", "only advance to a committed record"),
            // The partition hint is only a hint: pointing it at a real record's partition lets no forged head through.
            ($"UPDATE ingest_streams SET committed_sequence = 6, chain_head = sha256('forged'), head_start_at = (SELECT start_at FROM usage_records {Where} AND sequence = 5) {Where}", "only advance to a committed record"),
            ($"UPDATE ingest_streams SET committed_sequence = 6, chain_head = (SELECT chain_hash FROM usage_records {Where} AND sequence = 5), head_start_at = (SELECT start_at FROM usage_records {Where} AND sequence = 5) {Where}", "only advance to a committed record"),
            ($"UPDATE ingest_streams SET stream_id = 'cluster-b' {Where}", "permission denied"),
            ($"DELETE FROM ingest_streams {Where}", "permission denied"),
        })
        {
            var refused = await Assert.ThrowsAsync<PostgresException>(() => runtime.ExecuteAsync(sql));
            Assert.Equal(PostgresErrorCodes.InsufficientPrivilege, refused.SqlState);
            Assert.Contains(says, refused.MessageText, StringComparison.Ordinal);
        }

        var after = await look.QuerySingleAsync<(long Sequence, byte[] Head)>($"SELECT committed_sequence, chain_head FROM ingest_streams {Where}");
        Assert.Equal(head.Sequence, after.Sequence);
        Assert.Equal(head.Head, after.Head);
    }

    [Fact]
    public async Task The_owner_too_cannot_truncate_a_usage_partition_or_move_a_head_back()
    {
        string owner = await SeededDatabaseAsync();
        await using NpgsqlConnection look = await OpenAsync(owner);
        long rows = await look.ExecuteScalarAsync<long>("SELECT count(*) FROM usage_records");

        foreach (string sql in new[]
        {
            "TRUNCATE usage_records_2026_11",
            "TRUNCATE usage_records_default",
            "TRUNCATE settlement_statements CASCADE",
            "TRUNCATE capacity_attestations CASCADE",
            "UPDATE ingest_streams SET committed_sequence = 0",
        })
        {
            await Assert.ThrowsAsync<PostgresException>(() => look.ExecuteAsync(sql));
        }

        Assert.Equal(rows, await look.ExecuteScalarAsync<long>("SELECT count(*) FROM usage_records"));
    }

    [Fact]
    public async Task Migrate_guards_a_partition_added_later_and_the_runtime_role_gets_nothing_on_it()
    {
        string owner = await postgres.CreateDatabaseAsync();
        await using NpgsqlConnection look = await OpenAsync(owner);
        await look.ExecuteAsync("CREATE TABLE usage_records_2028_01 PARTITION OF usage_records FOR VALUES FROM ('2028-01-01 00:00:00+00') TO ('2028-02-01 00:00:00+00')");
        await using (NpgsqlConnection runtime = await OpenAsync(PostgresFixture.AsRuntimeRole(owner)))
        {
            // Before the next migrate the new partition has no grants at all: closed by default.
            var refused = await Assert.ThrowsAsync<PostgresException>(() => runtime.ExecuteAsync("TRUNCATE usage_records_2028_01"));
            Assert.Equal(PostgresErrorCodes.InsufficientPrivilege, refused.SqlState);
        }

        Assert.False(await look.ExecuteScalarAsync<bool>("SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'usage_records_2028_01'::regclass AND tgname = 'evidence_refuses_truncate')"));
        await using (NpgsqlDataSource dataSource = Database.CreateDataSource(owner))
        {
            await new Migrator(dataSource, NullLogger.Instance).MigrateAsync();
            // Rerunnable: a second run finds everything in place.
            await new Migrator(dataSource, NullLogger.Instance).MigrateAsync();
        }

        Assert.Equal(1L, await look.ExecuteScalarAsync<long>("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'usage_records_2028_01'::regclass AND tgname = 'evidence_refuses_truncate'"));
        Assert.False(await look.ExecuteScalarAsync<bool>("SELECT has_table_privilege(@Role, 'usage_records_2028_01', 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')", new { Role }));
        var ownerRefused = await Assert.ThrowsAsync<PostgresException>(() => look.ExecuteAsync("TRUNCATE usage_records_2028_01"));
        Assert.Contains("append-only", ownerRefused.MessageText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Migrate_fails_loudly_on_a_table_nobody_classified()
    {
        string owner = await postgres.CreateDatabaseAsync();
        await using NpgsqlConnection look = await OpenAsync(owner);
        await look.ExecuteAsync("CREATE TABLE receipts_unclassified (id bigint PRIMARY KEY)");
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(owner);

        var error = await Assert.ThrowsAsync<SchemaGuardException>(() => new Migrator(dataSource, NullLogger.Instance).MigrateAsync());

        Assert.Contains("receipts_unclassified", error.Message, StringComparison.Ordinal);
        Assert.Contains("SchemaTables.cs", error.Message, StringComparison.Ordinal);
        Assert.False(await look.ExecuteScalarAsync<bool>("SELECT has_table_privilege(@Role, 'receipts_unclassified', 'SELECT')", new { Role }));
    }

    [Fact]
    public async Task Migrate_passes_over_an_extensions_relations_and_the_server_starts_but_a_hand_added_table_beside_them_is_still_refused()
    {
        // pg_autoctl installs pg_stat_statements into the database it creates: its views belong to
        // the extension, not to the schema the guard classifies.
        string owner = await postgres.CreateDatabaseAsync();
        await using NpgsqlConnection look = await OpenAsync(owner);
        await look.ExecuteAsync("CREATE EXTENSION pg_stat_statements");
        Assert.True(await look.ExecuteScalarAsync<bool>("SELECT to_regclass('pg_stat_statements') IS NOT NULL"));
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(owner);

        await new Migrator(dataSource, NullLogger.Instance).MigrateAsync();
        await using (TestServer server = await TestServer.StartAsync(postgres, database: owner))
        {
            await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "beside-an-extension");
            Assert.Equal(1UL, (await call.SendAsync([TestRecords.Valid(1)])).CommittedSequence);
        }

        // The cheater's table is no extension's, whatever sits beside it.
        await look.ExecuteAsync("CREATE TABLE pg_stat_statements_shadow (id bigint PRIMARY KEY)");
        var error = await Assert.ThrowsAsync<SchemaGuardException>(() => new Migrator(dataSource, NullLogger.Instance).MigrateAsync());
        Assert.Contains("pg_stat_statements_shadow", error.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("pg_stat_statements,", error.Message, StringComparison.Ordinal);
        Assert.False(await look.ExecuteScalarAsync<bool>("SELECT has_table_privilege(@Role, 'pg_stat_statements_shadow', 'SELECT')", new { Role }));
    }

    [Fact]
    public async Task Migrate_takes_an_existing_role_by_name_and_refuses_one_that_could_act_as_the_owner()
    {
        string owner = await postgres.CreateDatabaseAsync();
        string suffix = Guid.NewGuid().ToString("N")[..8];
        string named = "named_runtime_" + suffix, superuser = "super_runtime_" + suffix, member = "member_runtime_" + suffix;
        await using NpgsqlConnection look = await OpenAsync(owner);
        await look.ExecuteAsync($"CREATE ROLE {named} LOGIN; CREATE ROLE {superuser} LOGIN SUPERUSER; CREATE ROLE {member} LOGIN IN ROLE metering");
        try
        {
            await using NpgsqlDataSource dataSource = Database.CreateDataSource(owner);
            await new Migrator(dataSource, NullLogger.Instance) { RuntimeRole = named }.MigrateAsync();
            Assert.True(await look.ExecuteScalarAsync<bool>("SELECT has_table_privilege(@named, 'usage_records', 'INSERT') AND has_table_privilege(@named, 'audit_query_log', 'SELECT')", new { named }));
            Assert.False(await look.ExecuteScalarAsync<bool>("SELECT has_table_privilege(@named, 'usage_records', 'UPDATE') OR has_table_privilege(@named, 'usage_records', 'TRUNCATE')", new { named }));

            foreach (string unfit in new[] { superuser, member, "metering" })
            {
                var error = await Assert.ThrowsAsync<SchemaGuardException>(() => new Migrator(dataSource, NullLogger.Instance) { RuntimeRole = unfit }.MigrateAsync());
                Assert.Contains(unfit, error.Message, StringComparison.Ordinal);
            }
        }
        finally
        {
            await look.ExecuteAsync($"DROP OWNED BY {named}; DROP ROLE {named}; DROP ROLE {superuser}; DROP ROLE {member}");
        }
    }

    [Fact]
    public async Task Server_refuses_to_run_as_a_superuser_or_a_table_owner_unless_told_to()
    {
        string owner = await postgres.CreateDatabaseAsync();
        var asSuperuser = new ServerSettings { Listen = new Uri("http://127.0.0.1:0"), SigningKey = TestServer.SigningKey, ConnectionString = owner };

        var refused = await Assert.ThrowsAsync<PrivilegedRoleException>(() => MeteringServer.StartAsync(asSuperuser));
        Assert.Contains("'metering'", refused.Message, StringComparison.Ordinal);
        Assert.Contains("superuser", refused.Message, StringComparison.Ordinal);
        Assert.Contains("--allow-privileged-role", refused.Message, StringComparison.Ordinal);

        string tableOwner = "table_owner_" + Guid.NewGuid().ToString("N")[..8];
        await using (NpgsqlConnection look = await OpenAsync(owner))
        {
            await look.ExecuteAsync($"CREATE ROLE {tableOwner} LOGIN; GRANT CONNECT ON DATABASE \"{look.Database}\" TO {tableOwner}; GRANT USAGE ON SCHEMA public TO {tableOwner}; ALTER TABLE credentials OWNER TO {tableOwner}");
        }

        var asOwner = new ServerSettings { Listen = new Uri("http://127.0.0.1:0"), SigningKey = TestServer.SigningKey, ConnectionString = new NpgsqlConnectionStringBuilder(owner) { Username = tableOwner }.ConnectionString };
        var ownerRefused = await Assert.ThrowsAsync<PrivilegedRoleException>(() => MeteringServer.StartAsync(asOwner));
        Assert.Contains($"'{tableOwner}'", ownerRefused.Message, StringComparison.Ordinal);
        Assert.Contains("owns the engine's tables", ownerRefused.Message, StringComparison.Ordinal);

        await using (MeteringServer allowed = await MeteringServer.StartAsync(new ServerSettings { Listen = new Uri("http://127.0.0.1:0"), SigningKey = TestServer.SigningKey, ConnectionString = owner, AllowPrivilegedRole = true }))
        {
            Assert.NotNull(allowed.Address);
        }
    }

    [Fact]
    public async Task Serve_command_refuses_the_owners_login_and_names_the_role_and_the_flag()
    {
        string owner = await postgres.CreateDatabaseAsync();

        var (exit, output) = await CliProcess.RunAsync("serve", "--connection", owner, "--listen", $"http://127.0.0.1:{ServerProcess.FreePort()}", "--signing-key", ServerProcess.SigningKeyPath);

        Assert.Equal(2, exit);
        Assert.Contains("refusing to serve as database role 'metering'", output, StringComparison.Ordinal);
        Assert.Contains("--allow-privileged-role", output, StringComparison.Ordinal);
    }

    /// <summary>A database in which the server, logged in as the runtime role, has written usage, heartbeats, a tamper conflict and an audit query.</summary>
    private async Task<string> SeededDatabaseAsync()
    {
        string owner = await postgres.CreateDatabaseAsync();
        await using TestServer server = await TestServer.StartAsync(postgres, database: owner);
        await using (IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a"))
        {
            await call.SendAsync(TestRecords.Range(1, 20));
            await call.HeartbeatAsync();
        }

        var forged = TestRecords.Valid(3);
        forged.DeviceCount = 4;
        await using IngestCall replay = await IngestCall.OpenAsync(server.Client(), "cluster-a");
        await replay.SendRefusedAsync([forged]);
        return owner;
    }

    /// <summary>Every evidence table of <see cref="SchemaTables"/> and every partition of one, read from pg_catalog.</summary>
    private static async Task<List<string>> EvidenceRelationsAsync(string owner)
    {
        await using NpgsqlConnection look = await OpenAsync(owner);
        return (await EvidenceRelations.ListAsync(look, CancellationToken.None)).Select(r => r.Relation).ToList();
    }

    private static async Task<Dictionary<string, string>> ChecksumsAsync(string owner, List<string> relations)
    {
        await using NpgsqlConnection look = await OpenAsync(owner);
        var sums = new Dictionary<string, string>();
        foreach (string relation in relations)
        {
            sums[relation] = await look.ExecuteScalarAsync<string>($"SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM ONLY {relation} t") ?? "";
        }

        return sums;
    }

    private static async Task<NpgsqlConnection> OpenAsync(string connectionString)
    {
        var connection = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(connectionString) { Pooling = false }.ConnectionString);
        await connection.OpenAsync();
        return connection;
    }
}
