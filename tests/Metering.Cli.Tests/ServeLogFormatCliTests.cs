using System.Globalization;
using System.Text.Json;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>
/// `serve --log-format json`: one JSON object a line from Microsoft.Extensions.Logging's JSON
/// console formatter, stamped in UTC with the offset, as a log collector reads it.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class ServeLogFormatCliTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Serve_with_log_format_json_writes_each_message_as_one_json_object_with_a_utc_iso_8601_timestamp()
    {
        string database = PostgresFixture.AsRuntimeRole(await postgres.CreateDatabaseAsync());
        int port = ServerProcess.FreePort();
        var address = new Uri($"http://127.0.0.1:{port}");

        await using ServerProcess server = await ServerProcess.StartAsync(address,
            "serve", "--connection", database, "--listen", address.ToString(), "--signing-key", ServerProcess.SigningKeyPath, "--log-format", "json");

        string serving = Assert.Single(server.Output, line => line.Contains("Serving gRPC on", StringComparison.Ordinal));
        using JsonDocument json = JsonDocument.Parse(serving);
        JsonElement root = json.RootElement;
        Assert.Equal(4001, root.GetProperty("EventId").GetInt32());
        Assert.Equal("Information", root.GetProperty("LogLevel").GetString());
        Assert.Equal("metering.serve", root.GetProperty("Category").GetString());
        Assert.StartsWith($"Serving gRPC on http://127.0.0.1:{port}", root.GetProperty("Message").GetString(), StringComparison.Ordinal);
        Assert.StartsWith($"http://127.0.0.1:{port}", root.GetProperty("State").GetProperty("Address").GetString(), StringComparison.Ordinal);

        string timestamp = root.GetProperty("Timestamp").GetString()!;
        Assert.Matches(@"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+00:00$", timestamp);
        DateTimeOffset stamped = DateTimeOffset.ParseExact(timestamp, "yyyy-MM-dd'T'HH:mm:ss.fffzzz", CultureInfo.InvariantCulture);
        Assert.Equal(TimeSpan.Zero, stamped.Offset);
        Assert.InRange(DateTimeOffset.UtcNow - stamped, TimeSpan.Zero, TimeSpan.FromMinutes(2));

        // Every line the server wrote is JSON, not only the one looked at: a collector parses them all.
        Assert.All(server.Output.Where(line => line.Length > 0), line => JsonDocument.Parse(line).Dispose());
    }

    [Fact]
    public async Task Serve_refuses_an_unknown_log_format_with_exit_2_naming_the_choices_before_it_starts_anything()
    {
        string folder = Path.Combine(Path.GetTempPath(), $"metering-log-format-{Guid.NewGuid():N}");
        var (exit, output) = await CliProcess.RunAsync("serve", "--log-format", "xml", "--data-dir", folder);

        Assert.Equal(2, exit);
        Assert.Contains("xml", output, StringComparison.Ordinal);
        Assert.Contains("json", output, StringComparison.Ordinal);
        Assert.False(Directory.Exists(folder));
    }
}
