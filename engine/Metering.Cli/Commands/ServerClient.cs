using System.CommandLine;
using Google.Rpc;
using Grpc.Core;
using Grpc.Net.Client;

namespace Metering.Cli.Commands;

/// <summary>
/// How a client command reaches a running server: the --server and --api-key options, the one
/// place that opens a channel, and how a refusal is printed. Commands that talk gRPC go through
/// here, so that transport options (TLS, a CA file) are added once.
/// </summary>
internal static class ServerClient
{
    public static Option<Uri> Server() => CommonOptions.HttpAddress("--server", "The Metering server.");

    public static Option<string?> ApiKey() => new("--api-key") { Description = "The caller's API key; defaults to METERING_API_KEY." };

    /// <summary>The key the option or METERING_API_KEY gives, or null.</summary>
    public static string? KeyOf(ParseResult parse, Option<string?> apiKey)
    {
        string? key = parse.GetValue(apiKey) ?? Environment.GetEnvironmentVariable("METERING_API_KEY");
        return string.IsNullOrEmpty(key) ? null : key;
    }

    public static GrpcChannel Open(Uri server) => GrpcChannel.ForAddress(server);

    public static Metadata Bearer(string key) => new() { { "authorization", "Bearer " + key } };

    /// <summary>A refusal as one line: status, ErrorInfo reason and the server's message.</summary>
    public static string Describe(RpcException e) => $"{e.StatusCode} {e.GetRpcStatus()?.GetDetail<ErrorInfo>()?.Reason}: {e.Status.Detail}";
}
