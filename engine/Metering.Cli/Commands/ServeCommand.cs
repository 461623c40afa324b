using System.CommandLine;
using Metering.Engine.Storage;
using Metering.Server.Access;
using Metering.Server.Hosting;
using Microsoft.Extensions.Logging;

namespace Metering.Cli.Commands;

/// <summary>`metering serve`: runs the gRPC server until Ctrl+C or SIGTERM.</summary>
internal static partial class ServeCommand
{
    public static Command Create()
    {
        var listen = CommonOptions.HttpAddress("--listen", "Address to serve gRPC (HTTP/2 cleartext) on, as http://IP:PORT.");
        var keys = new Option<FileInfo>("--keys")
        {
            Description = "API key file ('<credit code> <sha256 hex>' per line), written by `metering apikey new`.",
            DefaultValueFactory = _ => new FileInfo(Path.Combine(".metering", "api-keys.txt")),
        };
        var migrate = new Option<bool>("--migrate")
        {
            Description = "Apply pending migrations before serving (always done for the embedded database).",
        };
        var connection = CommonOptions.Connection();
        var dataDirectory = CommonOptions.DataDirectory();
        var command = new Command("serve", "Run the gRPC server (IngestService) against PostgreSQL.") { listen, keys, migrate, connection, dataDirectory };
        command.SetAction(async (parse, cancellationToken) =>
        {
            using ILoggerFactory logging = CommonOptions.Logging();
            ILogger logger = logging.CreateLogger("metering.serve");
            FileInfo keyFile = parse.GetValue(keys)!;
            if (!keyFile.Exists)
            {
                Console.Error.WriteLine($"error: no API key file at {keyFile.FullName}. Issue one with: metering apikey new --provider <credit code> --keys {keyFile.FullName}");
                return 2;
            }

            ApiKeys apiKeys;
            try
            {
                apiKeys = ApiKeys.Load(keyFile.FullName);
            }
            catch (FormatException e)
            {
                Console.Error.WriteLine($"error: {e.Message}");
                return 2;
            }

            var (connectionString, embedded) = await CommonOptions.ResolveDatabaseAsync(parse.GetValue(connection), parse.GetValue(dataDirectory)!, logger, cancellationToken);
            await using (embedded)
            {
                await using (var dataSource = Database.CreateDataSource(connectionString))
                {
                    var migrator = new Migrator(dataSource, logger);
                    if (embedded is not null || parse.GetValue(migrate))
                    {
                        await migrator.MigrateAsync(cancellationToken);
                    }

                    int current = await migrator.CurrentVersionAsync(cancellationToken);
                    int shipped = Migrator.Embedded().Count;
                    if (current != shipped)
                    {
                        Console.Error.WriteLine($"error: the database is at schema version {current}, this engine needs {shipped}. Run `metering db migrate` (or pass --migrate).");
                        return 2;
                    }
                }

                await using MeteringServer server = await MeteringServer.StartAsync(new ServerSettings
                {
                    Listen = parse.GetValue(listen)!,
                    ConnectionString = connectionString,
                    ApiKeys = apiKeys,
                    ConfigureLogging = builder => builder
                        .AddSimpleConsole(console =>
                        {
                            console.SingleLine = true;
                            console.TimestampFormat = "HH:mm:ss ";
                        })
                        // One line per request is noise at this volume; the services log what matters.
                        .AddFilter("Microsoft.AspNetCore", LogLevel.Warning),
                }, cancellationToken);
                LogServing(logger, server.Address, apiKeys.Count);
                await server.WaitForShutdownAsync(cancellationToken);
            }

            return 0;
        });
        return command;
    }

    [LoggerMessage(EventId = 4001, Level = LogLevel.Information, Message = "Serving gRPC on {Address} for {Keys} provider key(s). Ctrl+C stops.")]
    private static partial void LogServing(ILogger logger, Uri address, int keys);
}
