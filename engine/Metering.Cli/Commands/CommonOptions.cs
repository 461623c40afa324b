using System.CommandLine;
using Metering.Engine.Storage;
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

    public static ILoggerFactory Logging(LogLevel minimum = LogLevel.Information) =>
        LoggerFactory.Create(builder => builder
            .AddSimpleConsole(console =>
            {
                console.SingleLine = true;
                console.TimestampFormat = "HH:mm:ss ";
            })
            .SetMinimumLevel(minimum));

    /// <summary>
    /// The connection string to use: the explicit option, else METERING_CONNECTION, else a freshly
    /// started embedded PostgreSQL, which the caller must dispose.
    /// </summary>
    public static async Task<(string ConnectionString, EmbeddedPostgres? Embedded)> ResolveDatabaseAsync(
        string? connection, string dataDirectory, ILogger logger, CancellationToken cancellationToken)
    {
        connection ??= Environment.GetEnvironmentVariable("METERING_CONNECTION");
        if (!string.IsNullOrWhiteSpace(connection))
        {
            return (connection, null);
        }

        EmbeddedPostgres embedded = await EmbeddedPostgres.StartAsync(new EmbeddedPostgresOptions { DataDirectory = dataDirectory }, logger, cancellationToken);
        return (embedded.ConnectionString, embedded);
    }
}
