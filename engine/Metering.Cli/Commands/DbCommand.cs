using System.CommandLine;
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
        var migrate = new Command("migrate", "Apply the engine's SQL migrations (Storage/Migrations/NNNN_*.sql) that the database lacks, in order, recording each in schema_migrations.")
        {
            connection,
            dataDirectory,
        };
        migrate.SetAction(async (parse, cancellationToken) =>
        {
            using ILoggerFactory logging = CommonOptions.Logging();
            ILogger logger = logging.CreateLogger("metering.db");
            var (connectionString, embedded) = await CommonOptions.ResolveDatabaseAsync(parse.GetValue(connection), parse.GetValue(dataDirectory)!, logger, cancellationToken);
            await using (embedded)
            {
                await using var dataSource = Database.CreateDataSource(connectionString);
                var migrator = new Migrator(dataSource, logger);
                var applied = await migrator.MigrateAsync(cancellationToken);
                int version = await migrator.CurrentVersionAsync(cancellationToken);
                Console.WriteLine(applied.Count == 0
                    ? $"Database is up to date at version {version}."
                    : $"Applied {applied.Count} migration(s); database is at version {version}.");
            }

            return 0;
        });

        return new Command("db", "Database maintenance.") { migrate };
    }
}
