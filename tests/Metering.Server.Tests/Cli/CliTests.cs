using Metering.Server.Tests.Infrastructure;

namespace Metering.Server.Tests.Cli;

public sealed class CliTests
{
    [Fact]
    public async Task Help_lists_every_command()
    {
        var (exit, output) = await RunAsync("--help");
        Assert.Equal(0, exit);
        foreach (string command in new[] { "serve", "db", "apikey", "demo" })
        {
            Assert.Contains(command, output, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Apikey_for_an_invalid_credit_code_is_refused_and_writes_nothing()
    {
        string keys = Path.Combine(Directory.CreateTempSubdirectory("metering-cli-").FullName, "keys.txt");
        var (exit, output) = await RunAsync("apikey", "new", "--provider", "914403001922038217", "--keys", keys);
        Assert.Equal(2, exit);
        Assert.Contains("not a valid unified social credit code", output, StringComparison.Ordinal);
        Assert.False(File.Exists(keys));
    }

    [Fact]
    public async Task Apikey_appends_only_the_hash_and_prints_the_key_once()
    {
        string keys = Path.Combine(Directory.CreateTempSubdirectory("metering-cli-").FullName, "keys.txt");
        var (exit, output) = await RunAsync("apikey", "new", "--provider", "914403001922038216", "--keys", keys);
        Assert.Equal(0, exit);
        string key = output.Split('\n')[0].Trim();
        string line = File.ReadAllText(keys).Trim();
        Assert.Equal($"914403001922038216 {Metering.Server.Access.ApiKeys.Hash(key)}", line);
        Assert.DoesNotContain(key, line, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Serve_without_a_key_file_says_how_to_make_one()
    {
        var (exit, output) = await RunAsync("serve", "--keys", "/nonexistent/keys.txt", "--connection", "Host=/nonexistent");
        Assert.Equal(2, exit);
        Assert.Contains("metering apikey new", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Serve_with_a_non_http_address_is_a_usage_error()
    {
        var (exit, output) = await RunAsync("serve", "--listen", "ftp://127.0.0.1:1");
        Assert.NotEqual(0, exit);
        Assert.Contains("is not an http://IP:PORT address", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Demo_refuses_a_day_that_has_not_ended()
    {
        var (exit, output) = await RunAsync("demo", "--day", "2999-01-01");
        Assert.Equal(2, exit);
        Assert.Contains("--day must be", output, StringComparison.Ordinal);
    }

    private static Task<(int ExitCode, string Output)> RunAsync(params string[] arguments) => CliProcess.RunAsync(arguments);
}
