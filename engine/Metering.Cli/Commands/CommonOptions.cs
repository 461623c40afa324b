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
