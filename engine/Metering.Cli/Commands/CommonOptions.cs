using System.CommandLine;
using Metering.Client.Channels;
using Metering.Engine.Access;
using Metering.Engine.Registry;
using Metering.Engine.Signing;
using Metering.Engine.Storage;
using Npgsql;
using Microsoft.Extensions.Logging;

namespace Metering.Cli.Commands;

/// <summary>Options several commands share, and how they resolve the database.</summary>
internal static partial class CommonOptions
{
    /// <summary>The root's --verbose, which every command takes: stack traces on failure, and `demo`'s informational log lines.</summary>
    public const string VerboseName = "--verbose";

    /// <summary>The --verbose option, declared once on the root and inherited by every command.</summary>
    public static Option<bool> Verbose() => new(VerboseName)
    {
        Description = "On a failure, print the stack trace too; `demo` also shows the server's and the database's informational log lines.",
        Recursive = true,
    };

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

    /// <summary>An http:// or https://IP:PORT address to listen on (System.CommandLine has no Uri parser of its own).</summary>
    public static Option<Uri> ListenAddress(string name, string description) => new(name)
    {
        Description = description,
        DefaultValueFactory = _ => new Uri("http://127.0.0.1:7390"),
        CustomParser = result =>
        {
            string text = result.Tokens.Single().Value;
            if (Uri.TryCreate(text, UriKind.Absolute, out Uri? uri) && (uri.Scheme == Uri.UriSchemeHttp || uri.Scheme == Uri.UriSchemeHttps)
                && (uri.Host == "localhost" || System.Net.IPAddress.TryParse(uri.DnsSafeHost, out _)))
            {
                return uri;
            }

            result.AddError($"{name} '{text}' is not an https://IP:PORT or http://IP:PORT address (for example https://0.0.0.0:7390 or http://127.0.0.1:7390).");
            return null;
        },
    };

    /// <summary>
    /// The server to call, http:// or https:// with a host name or an IP address; or several
    /// stateless servers on one database, comma-separated, which the channel balances round-robin.
    /// </summary>
    public static Option<ServerList> ServerAddress() => new("--server")
    {
        Description = "The Metering server, as https://HOST:PORT (or http:// on loopback); several servers on one database as a comma-separated list (https://a:7390,https://b:7390), balanced round-robin. Defaults to METERING_SERVER, else http://127.0.0.1:7390.",
        DefaultValueFactory = result =>
        {
            string text = Environment.GetEnvironmentVariable("METERING_SERVER") is { Length: > 0 } server ? server : "http://127.0.0.1:7390";
            if (ServerList.TryParse(text, "METERING_SERVER", out ServerList? servers, out string? problem))
            {
                return servers!;
            }

            result.AddError(problem! + ".");
            return null!;
        },
        CustomParser = result =>
        {
            if (ServerList.TryParse(result.Tokens.Single().Value, "--server", out ServerList? servers, out string? problem))
            {
                return servers;
            }

            result.AddError(problem! + ".");
            return null;
        },
    };

    public static Option<string?> SigningKey() => new("--signing-key")
    {
        Description = "PEM file with the server's ECDSA P-256 signing key (receipts, tree heads). Defaults to METERING_SIGNING_KEY; "
            + "on the embedded database, to signing-key.pem beside the data folder, made on first use. Make one with `metering key signing new`.",
    };

    /// <summary>
    /// The server's signing key: the file the option or METERING_SIGNING_KEY names; for the embedded
    /// database, signing-key.pem beside its data folder, made on first start. An external database
    /// needs the key named, since a key made afresh on each start would sign nothing anyone could
    /// check later.
    /// </summary>
    public static ServerSigningKey ResolveSigningKey(string? path, string? embeddedDataDirectory, ILogger logger)
    {
        path ??= Environment.GetEnvironmentVariable("METERING_SIGNING_KEY");
        if (string.IsNullOrWhiteSpace(path))
        {
            if (embeddedDataDirectory is null)
            {
                throw new SigningKeyException("No signing key: pass --signing-key FILE or set METERING_SIGNING_KEY (make one with `metering key signing new --out FILE`).");
            }

            path = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(embeddedDataDirectory))!, "signing-key.pem");
            if (!File.Exists(path))
            {
                using ServerSigningKey made = ServerSigningKey.CreateNew();
                made.WritePrivateKey(path);
                LogSigningKeyMade(logger, path, made.KeyId);
            }
        }

        return ServerSigningKey.Load(path);
    }

    /// <summary>
    /// `--log-format text|json`, on every command that logs (serve, db migrate, demo): text for a
    /// person at a terminal, json (one object a line) for a log collector.
    /// </summary>
    public static Option<string> LogFormat() => new Option<string>("--log-format")
    {
        Description = "How log lines are written: text (one line, the default) or json (one JSON object a line: Timestamp, EventId, LogLevel, Category, Message, State). Timestamps are ISO 8601 in UTC with the offset either way.",
        DefaultValueFactory = _ => "text",
    }.AcceptOnlyFromAmong("text", "json");

    /// <summary>
    /// `--log-level`: the least severe messages a command that logs writes. Each command has its own
    /// default (serve and db migrate Information, demo and key bootstrap Warning, since their own
    /// output is what the user reads).
    /// </summary>
    public static Option<LogLevel> LogLevelOption(LogLevel defaultLevel) => new("--log-level")
    {
        Description = $"The least severe messages logged: Trace, Debug, Information, Warning, Error, Critical or None (default {defaultLevel}).",
        DefaultValueFactory = _ => defaultLevel,
    };

    public static ILoggerFactory Logging(LogLevel minimum = LogLevel.Information, string format = "text") =>
        LoggerFactory.Create(builder => ConsoleLines(builder, format).SetMinimumLevel(minimum));

    /// <summary>
    /// One line per message, stamped in ISO 8601 with its offset, in UTC, so that a line read on
    /// another host or beside another program's log is never taken for local time; as text, or as
    /// Microsoft.Extensions.Logging's JSON console formatter writes it.
    /// </summary>
    public static ILoggingBuilder ConsoleLines(ILoggingBuilder builder, string format = "text") =>
        format == "json"
            ? builder.AddJsonConsole(console =>
            {
                console.UseUtcTimestamp = true;
                console.TimestampFormat = LogTimestampFormat;
                console.JsonWriterOptions = new System.Text.Json.JsonWriterOptions { Indented = false };
            })
            : builder.AddSimpleConsole(console =>
            {
                console.SingleLine = true;
                console.UseUtcTimestamp = true;
                console.TimestampFormat = LogTimestampFormat + " ";
            });

    /// <summary>ISO 8601 to the millisecond with the offset (always +00:00: logs are in UTC).</summary>
    private const string LogTimestampFormat = "yyyy-MM-dd'T'HH:mm:ss.fffzzz";

    /// <summary>
    /// Runs a command that opens the database itself (`key bootstrap`) against the database the
    /// options name: migrated if it is the embedded one, refused if it is behind the engine's schema.
    /// </summary>
    public static async Task<int> WithDatabaseAsync(string? connection, string dataDirectory, Func<NpgsqlDataSource, Task<int>> action, CancellationToken cancellationToken,
        LogLevel logLevel = LogLevel.Warning, string logFormat = "text")
    {
        using ILoggerFactory logging = Logging(logLevel, logFormat);
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

            return await action(dataSource);
        }
    }

    private static string RuntimeRoleFromEnvironment() =>
        Environment.GetEnvironmentVariable("METERING_RUNTIME_ROLE") is { Length: > 0 } name ? name : SchemaGuard.DefaultRuntimeRole;

    /// <summary>Whether commands with this option value run on the embedded PostgreSQL.</summary>
    public static bool UsesEmbedded(string? connection) =>
        string.IsNullOrWhiteSpace(connection ?? Environment.GetEnvironmentVariable("METERING_CONNECTION"));

    /// <summary>
    /// The connection string to use: the explicit option, else METERING_CONNECTION, else a freshly
    /// started embedded PostgreSQL, which the caller must dispose.
    /// </summary>
    public static async Task<(string ConnectionString, EmbeddedPostgres? Embedded)> ResolveDatabaseAsync(
        string? connection, string dataDirectory, ILogger logger, CancellationToken cancellationToken, string? runtimeRole = null)
    {
        if (!UsesEmbedded(connection))
        {
            return ((connection ?? Environment.GetEnvironmentVariable("METERING_CONNECTION"))!, null);
        }

        EmbeddedPostgres embedded = await EmbeddedPostgres.StartAsync(new EmbeddedPostgresOptions { DataDirectory = dataDirectory, RuntimeRole = runtimeRole ?? RuntimeRoleFromEnvironment() }, logger, cancellationToken);
        return (embedded.ConnectionString, embedded);
    }

    [LoggerMessage(EventId = 4101, Level = LogLevel.Warning, Message = "Made a new signing key {Path} (key id {KeyId}); back it up and publish its public key (`metering key signing show {Path}`)")]
    private static partial void LogSigningKeyMade(ILogger logger, string path, string keyId);
}
