using System.CommandLine;
using Metering.Engine.Sandbox;
using Metering.Engine.Storage;
using Microsoft.Extensions.Logging;

namespace Metering.Cli.Commands;

/// <summary>`metering db migrate`: applies the shipped SQL migrations in order.</summary>
internal static class DbCommand
{
    public static Command Create()
    {
        var connection = CommonOptions.Connection();
        var dataDirectory = CommonOptions.DataDirectory();
        var runtimeRole = CommonOptions.RuntimeRole();
        var logFormat = CommonOptions.LogFormat();
        var logLevel = CommonOptions.LogLevelOption(LogLevel.Information);
        var sandbox = new Option<bool>("--sandbox")
        {
            Description = "Also mark the database a sandbox, to be served with `metering serve --clock simulated` whose clock operators move forward (sandbox.proto). "
                + "Only a new, empty database can be marked; a mark cannot be removed.",
        };
        var distributed = new Option<bool>("--distributed")
        {
            Description = "After the migrations, lay the schema out on Citus: per-provider evidence tables distributed on provider_id and co-located, registry-wide tables "
                + "as reference tables, the rest on the coordinator (Storage/README.md, \"Citus\"). Needs the citus extension installed and preloaded, and the workers added; idempotent.",
        };
        var monthsAhead = new Option<int>("--partition-months-ahead")
        {
            Description = $"Make sure the monthly partitions of usage_records exist through the current month plus this many months (0 to {MonthlyPartitions.MonthsAheadMax}), "
                + "creating the missing ones (distributed too, on Citus); run migrate again before they run out (`serve` warns "
                + $"{MonthlyPartitions.WarningDays} days ahead).",
            DefaultValueFactory = _ => MonthlyPartitions.MonthsAheadDefault,
        };
        monthsAhead.Validators.Add(result =>
        {
            if (result.GetValueOrDefault<int>() is < 0 or > MonthlyPartitions.MonthsAheadMax)
            {
                result.AddError($"--partition-months-ahead must be 0 to {MonthlyPartitions.MonthsAheadMax}.");
            }
        });
        var migrate = new Command("migrate", "Apply the engine's SQL migrations (Storage/Migrations/NNNN_*.sql) that the database lacks, in order, recording each in schema_migrations; "
            + "then create (or check) the runtime role `serve` runs as and grant it only what serving needs. Run it as the schema's owner.")
        {
            connection,
            dataDirectory,
            runtimeRole,
            sandbox,
            distributed,
            monthsAhead,
            logLevel,
            logFormat,
        };
        migrate.SetAction(async (parse, cancellationToken) =>
        {
            using ILoggerFactory logging = CommonOptions.Logging(parse.GetValue(logLevel), parse.GetValue(logFormat)!);
            ILogger logger = logging.CreateLogger("metering.db");
            var (connectionString, embedded) = await CommonOptions.ResolveDatabaseAsync(parse.GetValue(connection), parse.GetValue(dataDirectory)!, logger, cancellationToken);
            await using (embedded)
            {
                await using var dataSource = Database.CreateDataSource(connectionString);
                var migrator = new Migrator(dataSource, logger) { RuntimeRole = parse.GetValue(runtimeRole)!, Distributed = parse.GetValue(distributed),
                    PartitionMonthsAhead = parse.GetValue(monthsAhead),
                };
                IReadOnlyList<Migration> applied;
                try
                {
                    applied = await migrator.MigrateAsync(cancellationToken);
                }
                catch (SchemaGuardException e)
                {
                    Console.Error.WriteLine($"error: {e.Message}");
                    return 2;
                }
                catch (CitusUnavailableException e)
                {
                    // The option does not apply to this server: a usage error, as for any option.
                    Console.Error.WriteLine($"error: {e.Message}");
                    return ExitCodes.Usage;
                }

                if (parse.GetValue(sandbox))
                {
                    try
                    {
                        bool marked = await new SandboxClockStore(dataSource).MarkAsync(cancellationToken);
                        Console.WriteLine(marked
                            ? "Marked the database a sandbox: serve it with `metering serve --clock simulated`, and move its clock with `metering clock advance`."
                            : "The database is a sandbox already.");
                    }
                    catch (SandboxException e)
                    {
                        // The engine's rule refuses, as the server would: the same code as a refusal.
                        Console.Error.WriteLine($"error: {e.Message}");
                        return ExitCodes.Refused;
                    }
                }

                int version = await migrator.CurrentVersionAsync(cancellationToken);
                Console.WriteLine(applied.Count == 0
                    ? $"Database is up to date at version {version}."
                    : $"Applied {applied.Count} migration(s); database is at version {version}.");
                if (migrator.Distributed)
                {
                    Console.WriteLine($"Laid out on Citus: {CitusLayout.Distributed.Count} table(s) distributed on provider_id, {CitusLayout.Reference.Count} reference table(s), the rest on the coordinator.");
                }

                if (migrator.PartitionsCreated.Count > 0)
                {
                    Console.WriteLine($"Created {migrator.PartitionsCreated.Count} monthly partition(s), {migrator.PartitionsCreated[0]} to {migrator.PartitionsCreated[^1]}.");
                }

                Console.WriteLine($"Runtime role {migrator.RuntimeRole} holds only what serving needs; serve with a connection string that logs in as it.");
            }

            return 0;
        });

        return new Command("db", "Database maintenance.") { migrate };
    }
}
