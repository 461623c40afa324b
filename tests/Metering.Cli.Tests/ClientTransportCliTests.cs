using Metering.Server.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>Where a client command sends its key: never in cleartext off the machine.</summary>
public sealed class ClientTransportCliTests
{
    [Theory]
    [InlineData("audit", "verify", "--provider", "91440300MA5FXXXXX0")]
    [InlineData("settle", "list")]
    [InlineData("key", "list")]
    public async Task A_client_refuses_cleartext_http_to_another_machine_before_sending_its_key(params string[] command)
    {
        // 192.0.2.1 is TEST-NET-1: nothing answers there, so a call that was attempted would hang or fail as unreachable (exit 5).
        var (exit, output) = await CliProcess.RunAsync([.. command, "--server", "http://192.0.2.1:7390", "--api-key", "not-sent"]);

        Assert.Equal(2, exit);
        Assert.Contains("the API key would travel in cleartext", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_server_address_from_the_environment_is_held_to_the_same_rule()
    {
        var (exit, output) = await CliProcess.RunWithEnvironmentAsync(
            new Dictionary<string, string> { ["METERING_SERVER"] = "http://192.0.2.1:7390", ["METERING_API_KEY"] = "not-sent" }, "settle", "list");

        Assert.Equal(2, exit);
        Assert.Contains("the API key would travel in cleartext", output, StringComparison.Ordinal);
    }
}
