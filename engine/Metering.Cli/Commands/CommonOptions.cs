using System.CommandLine;
using Metering.Engine.Access;
using Metering.Engine.Registry;
using Metering.Engine.Storage;
using Npgsql;
using Microsoft.Extensions.Logging;

namespace Metering.Cli.Commands;

/// <summary>Options several commands share, and how they resolve the database.</summary>
internal static class CommonOptions
{
    public static Option<string?> Connection() => new("--connection")
    {
        Description = "PostgreSQL connection string (Npgsql form). Defaults to METERING_CONNECTION, else the embedded PostgreSQL.",
    };

    public static Option<string> DataDirectory() => new("--data-dir")
    {
        Description = "Data folder of the embedded PostgreSQL.",
        DefaultValueFactory = _ => Path.Combine(".metering", "pg"),
    };

    /// <summary>The database role `serve` runs as, which `db migrate` creates (or takes) and grants.</summary>
    public static Option<string> RuntimeRole() => new("--runtime-role")
    {
        Description = "Database role the server runs as: created by migrate if missing (a role of that name that exists is checked and used), granted only what serving needs. Defaults to METERING_RUNTIME_ROLE, else metering_runtime.",
        DefaultValueFactory = _ => Environment.GetEnvironmentVariable("METERING_RUNTIME_ROLE") is { Length: > 0 } name ? name : SchemaGuard.DefaultRuntimeRole,
        Validators =
        {
            result =>
            {
                if (result.Tokens.Count == 1 && !SchemaGuard.IsValidRoleName(result.Tokens[0].Value))
                {
                    result.AddError($"--runtime-role '{result.Tokens[0].Value}' is not a plain SQL identifier (lower-case letters, digits and _).");
                }
            },
        },
    };

    /// <summary>An http://IP:PORT address option (System.CommandLine has no Uri parser of its own).</summary>
    public static Option<Uri> HttpAddress(string name, string description) => new(name)
    {
        Description = description,
        DefaultValueFactory = _ => new Uri("http://127.0.0.1:7390"),
        CustomParser = result =>
        {
            string text = result.Tokens.Single().Value;
            if (Uri.TryCreate(text, UriKind.Absolute, out Uri? uri) && uri.Scheme == Uri.UriSchemeHttp
                && (uri.Host == "localhost" || System.Net.IPAddress.TryParse(uri.DnsSafeHost, out _)))
            {
                return uri;
            }

            result.AddError($"{name} '{text}' is not an http://IP:PORT address (for example http://127.0.0.1:7390).");
            return null;
        },
    };

    public static ILoggerFactory Logging(LogLevel minimum = LogLevel.Information) =>
        LoggerFactory.Create(builder => builder
            .AddSimpleConsole(console =>
            {
                console.SingleLine = true;
                console.TimestampFormat = "HH:mm:ss ";
            })
            .SetMinimumLevel(minimum));

    /// <summary>Who the CLI acts as in the registry history; operators run it on the bureau's side.</summary>
    public static Option<string> ActingOperator() => new("--as")
    {
        Description = "Operator name recorded in the registry history for this change.",
        DefaultValueFactory = _ => $"{Environment.UserName}@cli",
    };

    /// <summary>
    /// Runs a command against the database the options name: migrated if it is the embedded one,
    /// refused if it is behind the engine's schema. Registry refusals print their reason and
    /// message and exit with 1; nothing was changed.
    /// </summary>
    public static async Task<int> WithDatabaseAsync(string? connection, string dataDirectory, Func<NpgsqlDataSource, Task<int>> action, CancellationToken cancellationToken)
    {
        using ILoggerFactory logging = Logging(LogLevel.Warning);
        ILogger logger = logging.CreateLogger("metering");
        string connectionString;
        EmbeddedPostgres? embedded;
        try
        {
            (connectionString, embedded) = await ResolveDatabaseAsync(connection, dataDirectory, logger, cancellationToken);
        }
        catch (EmbeddedPostgresException e)
        {
            // Most often the data folder is held by a running `metering serve`: say so, without a stack trace.
            Console.Error.WriteLine($"error: {e.Message} Stop the other process, or pass --connection to use its database through PostgreSQL.");
            return 2;
        }

        await using (embedded)
        {
            await using NpgsqlDataSource dataSource = Database.CreateDataSource(connectionString);
            var migrator = new Migrator(dataSource, logger) { RuntimeRole = RuntimeRoleFromEnvironment() };
            if (embedded is not null)
            {
                await migrator.MigrateAsync(cancellationToken);
            }

            int current = await migrator.CurrentVersionAsync(cancellationToken);
            if (current != Migrator.Embedded().Count)
            {
                Console.Error.WriteLine($"error: the database is at schema version {current}, this engine needs {Migrator.Embedded().Count}. Run `metering db migrate`.");
                return 2;
            }

            try
            {
                return await action(dataSource);
            }
            catch (RegistryRefusedException refused)
            {
                Console.Error.WriteLine($"refused: {Metering.Engine.Ingest.ProtocolNames.Of(refused.Reason)}: {refused.Message}");
                return 1;
            }
        }
    }

    private static string RuntimeRoleFromEnvironment() =>
        Environment.GetEnvironmentVariable("METERING_RUNTIME_ROLE") is { Length: > 0 } name ? name : SchemaGuard.DefaultRuntimeRole;

    public static Actor Operator(string name) => new(Role.Operator, name);

    /// <summary>
    /// The connection string to use: the explicit option, else METERING_CONNECTION, else a freshly
    /// started embedded PostgreSQL, which the caller must dispose.
    /// </summary>
    public static async Task<(string ConnectionString, EmbeddedPostgres? Embedded)> ResolveDatabaseAsync(
        string? connection, string dataDirectory, ILogger logger, CancellationToken cancellationToken, string? runtimeRole = null)
    {
        connection ??= Environment.GetEnvironmentVariable("METERING_CONNECTION");
        if (!string.IsNullOrWhiteSpace(connection))
        {
            return (connection, null);
        }

        EmbeddedPostgres embedded = await EmbeddedPostgres.StartAsync(new EmbeddedPostgresOptions { DataDirectory = dataDirectory, RuntimeRole = runtimeRole ?? RuntimeRoleFromEnvironment() }, logger, cancellationToken);
        return (embedded.ConnectionString, embedded);
    }
}
