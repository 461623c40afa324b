using Grpc.Core;
using Grpc.Net.Client;
using Metering.Client.Channels;

namespace Metering.Probe.Submission;

/// <summary>
/// The channel to the Metering server, with the same rules as the `metering` CLI: the API key
/// travels in a header, so cleartext only to this machine, and `--ca` trusts exactly one private CA
/// (the host name is still checked) instead of the system's roots. Several servers are balanced
/// round-robin, as the CLI's `--server a,b`.
/// </summary>
internal static class ServerChannel
{
    /// <summary>A probe report is at most 16 MiB (capacity.proto); answers are far smaller, requests carry the report.</summary>
    private const int SendBytesMax = 17 * 1024 * 1024;

    /// <summary>
    /// A channel to the server, or round-robin over the servers, that --server names, through the
    /// client library's one channel builder (the same rules as the `metering` CLI).
    /// </summary>
    /// <exception cref="ArgumentException">An address or the CA file is not usable; the message says why.</exception>
    public static GrpcChannel Open(ServerList servers, string? caPath)
    {
        if (!string.IsNullOrEmpty(caPath) && !File.Exists(caPath))
        {
            throw new ArgumentException($"--ca: no file at {Path.GetFullPath(caPath)}");
        }

        try
        {
            return MeteringChannel.Open(new ChannelSettings(servers, caPath) { SendBytesMax = SendBytesMax });
        }
        catch (ArgumentException e) when (!string.IsNullOrEmpty(caPath) && e.Message.StartsWith(caPath, StringComparison.Ordinal))
        {
            throw new ArgumentException($"--ca {e.Message}", e);
        }
    }

    public static Metadata Bearer(string apiKey) => new() { { "authorization", "Bearer " + apiKey } };

    /// <summary>A refusal as one line: status, ErrorInfo reason and the server's message.</summary>
    public static string Describe(RpcException e) =>
        $"{e.StatusCode} {e.GetRpcStatus()?.GetDetail<Google.Rpc.ErrorInfo>()?.Reason}: {e.Status.Detail}";
}
