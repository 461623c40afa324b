using System.CommandLine;
using Grpc.Core;
using Grpc.Net.Client;

namespace Metering.Cli.Commands;

/// <summary>
/// How a client command reaches a running server: the address, the caller's API key, and the
/// channel. Kept in one place so that transport options (https, a CA file) are added once for
/// every client command.
/// </summary>
internal static class ServerClient
{
    /// <summary>The environment variable a key comes from when --api-key is not given.</summary>
    public const string ApiKeyVariable = "METERING_API_KEY";

    public static Option<Uri> Server() => CommonOptions.HttpAddress("--server", "The Metering server.");

    public static Option<string?> ApiKey() => new("--api-key") { Description = $"The caller's API key; defaults to {ApiKeyVariable}." };

    /// <summary>The key from the option or the environment, or null when neither gives one.</summary>
    public static string? ResolveApiKey(ParseResult parse, Option<string?> apiKey)
    {
        string? key = parse.GetValue(apiKey) ?? Environment.GetEnvironmentVariable(ApiKeyVariable);
        return string.IsNullOrEmpty(key) ? null : key;
    }

    public static GrpcChannel Channel(Uri server) => GrpcChannel.ForAddress(server);

    public static Metadata Bearer(string apiKey) => new() { { "authorization", "Bearer " + apiKey } };
}
