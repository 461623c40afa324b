using Metering.Server.Fixtures;

namespace Metering.Cli.Tests;

public sealed class CliTests
{
    [Fact]
    public async Task Help_lists_every_command()
    {
        var (exit, output) = await RunAsync("--help");
        Assert.Equal(0, exit);
        Assert.Equal(
            new SortedSet<string>(["serve", "db", "key", "registry", "capacity", "config", "demo", "ingest-file", "voucher", "settle", "audit", "clock"], StringComparer.Ordinal),
            new SortedSet<string>(CliHelp.Commands(output), StringComparer.Ordinal));
        Assert.Superset(new HashSet<string>(["--verbose", "--help", "-h", "--version"]), new HashSet<string>(CliHelp.Options(output)));
    }

    [Fact]
    public async Task Serve_help_names_every_service_the_protos_define()
    {
        var (exit, output) = await RunAsync("serve", "--help");
        Assert.Equal(0, exit);
        string[] services = typeof(Metering.Protocol.V1.IngestRequest).Assembly.GetTypes()
            .Where(type => type.Namespace == "Metering.Protocol.V1" && type.Name.EndsWith("Reflection", StringComparison.Ordinal))
            .Select(type => (Google.Protobuf.Reflection.FileDescriptor)type.GetProperty("Descriptor")!.GetValue(null)!)
            .SelectMany(file => file.Services)
            .Select(service => service.Name)
            .ToArray();
        Assert.NotEmpty(services);
        Assert.All(services, service => Assert.Contains(service, output, StringComparison.Ordinal));
    }

    [Fact]
    public async Task Serve_with_a_non_http_address_is_a_usage_error()
    {
        var (exit, output) = await RunAsync("serve", "--listen", "ftp://127.0.0.1:1");
        Assert.NotEqual(0, exit);
        Assert.Contains("is not an https://IP:PORT or http://IP:PORT address", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Serve_refuses_a_limit_out_of_range_before_it_starts_anything()
    {
        var (exit, output) = await RunAsync("serve", "--streams-per-key", "0", "--data-dir", Path.Combine(Path.GetTempPath(), "metering-never-created"));
        Assert.Equal(2, exit);
        Assert.Contains("StreamsPerKeyMax must be between 1 and 100,000", output, StringComparison.Ordinal);
        Assert.False(Directory.Exists(Path.Combine(Path.GetTempPath(), "metering-never-created")));
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
