using System.Security.Cryptography;
using System.Text;
using Dapper;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Metering.Engine.Storage;

/// <summary>One SQL migration shipped in the engine: Storage/Migrations/NNNN_name.sql.</summary>
public sealed record Migration(int Version, string Name, string Sql)
{
    public string Checksum { get; } = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(Sql)));
}

/// <summary>
/// Applies the engine's SQL migrations in version order, each in its own transaction, and
/// records them in schema_migrations. An applied migration whose file has since changed is an
/// error: history is never silently rewritten. After the migrations, every run grants the runtime
/// role its privileges and guards the evidence again (<see cref="SchemaGuard"/>), so a migration
/// that adds a table or a partition is covered as soon as it is applied.
/// </summary>
public sealed partial class Migrator(NpgsqlDataSource dataSource, ILogger logger)
{
    // Any constant shared by every migrator; serialises concurrent migrations of one database.
    private const long AdvisoryLockKey = 0x4d45_5445_5249_4e47;

    /// <summary>The role the server runs as; created when missing, granted what <see cref="SchemaTables"/> says.</summary>
    public string RuntimeRole { get; init; } = SchemaGuard.DefaultRuntimeRole;

    /// <summary>After the migrations, lay the tables out on Citus (<see cref="CitusLayout"/>) before granting and guarding them.</summary>
    public bool Distributed { get; init; }

    /// <summary>Monthly partitions made ahead of the current month (<see cref="MonthlyPartitions"/>).</summary>
    public int PartitionMonthsAhead { get; init; } = MonthlyPartitions.MonthsAheadDefault;

    /// <summary>The clock whose month the partitions are made ahead of.</summary>
    public TimeProvider Time { get; init; } = TimeProvider.System;

    /// <summary>The monthly partitions the last <see cref="MigrateAsync"/> created.</summary>
    public IReadOnlyList<string> PartitionsCreated { get; private set; } = [];

    public static IReadOnlyList<Migration> Embedded()
    {
        var assembly = typeof(Migrator).Assembly;
        var migrations = new List<Migration>();
        foreach (string resource in assembly.GetManifestResourceNames().Where(n => n.StartsWith("migrations/", StringComparison.Ordinal)))
        {
            string file = resource["migrations/".Length..];
            int underscore = file.IndexOf('_', StringComparison.Ordinal);
            if (underscore <= 0 || !int.TryParse(file.AsSpan(0, underscore), out int version))
            {
                throw new InvalidDataException($"Migration file '{file}' is not named NNNN_name.sql.");
            }

            using var reader = new StreamReader(assembly.GetManifestResourceStream(resource)!);
            migrations.Add(new Migration(version, Path.GetFileNameWithoutExtension(file)[(underscore + 1)..], reader.ReadToEnd()));
        }

        migrations.Sort((a, b) => a.Version.CompareTo(b.Version));
        for (int i = 0; i < migrations.Count; i++)
        {
            if (migrations[i].Version != i + 1)
            {
                throw new InvalidDataException($"Migrations must be numbered 1, 2, 3… without gaps; found {migrations[i].Version} at position {i + 1}.");
            }
        }

        return migrations;
    }

    /// <summary>Applies what is missing; returns the migrations applied now.</summary>
    public async Task<IReadOnlyList<Migration>> MigrateAsync(CancellationToken cancellationToken = default)
    {
        var applied = new List<Migration>();
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await connection.ExecuteAsync("""
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version     integer     PRIMARY KEY,
                name        text        NOT NULL,
                checksum    text        NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT now())
            """);

        foreach (Migration migration in Embedded())
        {
            await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(cancellationToken);
            await connection.ExecuteAsync("SELECT pg_advisory_xact_lock(@key)", new { key = AdvisoryLockKey }, transaction);
            string? checksum = await connection.QuerySingleOrDefaultAsync<string>(
                "SELECT checksum FROM schema_migrations WHERE version = @version", new { version = migration.Version }, transaction);
            if (checksum is not null)
            {
                if (checksum != migration.Checksum)
                {
                    throw new InvalidOperationException(
                        $"Migration {migration.Version} ({migration.Name}) was applied with checksum {checksum} but the shipped file has {migration.Checksum}. Applied migrations must not change; add a new one.");
                }

                continue;
            }

            await connection.ExecuteAsync(migration.Sql, transaction: transaction);
            await connection.ExecuteAsync(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (@Version, @Name, @Checksum)", migration, transaction);
            await transaction.CommitAsync(cancellationToken);
            LogApplied(logger, migration.Version, migration.Name);
            applied.Add(migration);
        }

        if (Distributed)
        {
            // Session-level: the layout runs Citus's own functions, some outside one transaction.
            await connection.ExecuteAsync("SELECT pg_advisory_lock(@key)", new { key = AdvisoryLockKey });
            try
            {
                await CitusLayout.ApplyAsync(connection, logger, cancellationToken);
            }
            finally
            {
                await connection.ExecuteAsync("SELECT pg_advisory_unlock(@key)", new { key = AdvisoryLockKey });
            }
        }

        // Under the session lock, outside a transaction: on Citus each new partition is
        // distributed as it is created. Before the guard step, which grants and guards them.
        await connection.ExecuteAsync("SELECT pg_advisory_lock(@key)", new { key = AdvisoryLockKey });
        try
        {
            PartitionsCreated = await MonthlyPartitions.EnsureAsync(connection, Time.GetUtcNow(), PartitionMonthsAhead, logger, cancellationToken);
        }
        finally
        {
            await connection.ExecuteAsync("SELECT pg_advisory_unlock(@key)", new { key = AdvisoryLockKey });
        }

        await using (NpgsqlTransaction transaction = await connection.BeginTransactionAsync(cancellationToken))
        {
            await connection.ExecuteAsync("SELECT pg_advisory_xact_lock(@key)", new { key = AdvisoryLockKey }, transaction);
            if (Distributed || await connection.ExecuteScalarAsync<bool>("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')", transaction: transaction))
            {
                // On Citus, grants and guard triggers on a distributed table reach each of its
                // shards: over one connection per worker, so that they stay in this transaction,
                // and triggers only when Citus is told that they touch nothing but their own row.
                await connection.ExecuteAsync("SET LOCAL citus.multi_shard_modify_mode = 'sequential'; SET LOCAL citus.enable_unsafe_triggers = on", transaction: transaction);
            }

            await SchemaGuard.ApplyAsync(connection, transaction, RuntimeRole, logger, cancellationToken);
            await transaction.CommitAsync(cancellationToken);
        }

        return applied;
    }

    /// <summary>The highest applied version, or 0 when the database has none.</summary>
    public async Task<int> CurrentVersionAsync(CancellationToken cancellationToken = default)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        bool exists = await connection.ExecuteScalarAsync<bool>("SELECT to_regclass('schema_migrations') IS NOT NULL");
        return exists ? await connection.ExecuteScalarAsync<int>("SELECT coalesce(max(version), 0) FROM schema_migrations") : 0;
    }

    [LoggerMessage(EventId = 1001, Level = LogLevel.Information, Message = "Applied migration {Version} ({Name})")]
    private static partial void LogApplied(ILogger logger, int version, string name);
}
