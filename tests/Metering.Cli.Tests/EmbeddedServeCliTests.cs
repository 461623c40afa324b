using System.Text.RegularExpressions;
using Metering.Server.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>
/// The embedded database as a small bureau runs it: one `metering serve` holds the data folder,
/// and the nightly settle, the keys and the audit are its clients. Before the CLI became a
/// client, a settle beside a running serve failed on the data folder's lock.
/// </summary>
public sealed partial class EmbeddedServeCliTests
{
    [Fact]
    public async Task Settle_and_key_issue_run_beside_serve_on_the_embedded_database()
    {
        string root = Directory.CreateTempSubdirectory("metering-embedded-serve-").FullName;
        // When the tests run as root, the embedded PostgreSQL's own user must be able to walk in.
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(root, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute);
        }

        string dataDirectory = Path.Combine(root, "pg");
        var (bootstrapExit, bootstrap) = await CliProcess.RunAsync("key", "bootstrap", "--name", "alice", "--data-dir", dataDirectory);
        Assert.True(bootstrapExit == 0, bootstrap);
        string operatorKey = Key(bootstrap);

        var address = new Uri($"http://127.0.0.1:{ServerProcess.FreePort()}");
        await using ServerProcess serve = await ServerProcess.StartAsync(address, "serve", "--data-dir", dataDirectory, "--listen", address.ToString());
        string server = address.ToString().TrimEnd('/');
        try
        {
            await RunBesideServeAsync(server, operatorKey, dataDirectory);
        }
        finally
        {
            await serve.StopAsync();
        }
    }

    private static async Task RunBesideServeAsync(string server, string operatorKey, string dataDirectory)
    {
        var (issueExit, issued) = await CliProcess.RunAsync("key", "issue", "--role", "settlement", "--subject", "nightly", "--server", server, "--api-key", operatorKey);
        Assert.True(issueExit == 0, issued);
        var (settleExit, settled) = await CliProcess.RunAsync("settle", "--day", "2026-11-01", "--allow-empty", "--server", server, "--api-key", Key(issued));
        var (listExit, listed) = await CliProcess.RunAsync("settle", "list", "--server", server, "--api-key", operatorKey);
        // The old way in is closed while serve runs: the data folder is held, and bootstrap says so.
        var (directExit, direct) = await CliProcess.RunAsync("key", "bootstrap", "--name", "mallory", "--data-dir", dataDirectory);

        Assert.True(settleExit == 0, settled);
        Assert.Contains("settlement hash", settled, StringComparison.OrdinalIgnoreCase);
        Assert.True(listExit == 0, listed);
        Assert.Contains("2026-11-01", listed, StringComparison.Ordinal);
        Assert.NotEqual(0, directExit);
        Assert.DoesNotMatch(KeyLine(), direct);
    }

    private static string Key(string output) =>
        output.Split('\n').Select(line => line.Trim()).Single(line => KeyLine().IsMatch(line));

    [GeneratedRegex("^[A-Za-z0-9_-]{43}$", RegexOptions.Multiline)]
    private static partial Regex KeyLine();
}
