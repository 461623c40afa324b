using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using Grpc.Net.Client;

namespace Metering.Probe.Submission;

/// <summary>
/// The channel to the Metering server, with the same rules as the `metering` CLI: the API key
/// travels in a header, so cleartext only to this machine, and `--ca` trusts exactly one private CA
/// (the host name is still checked) instead of the system's roots.
/// </summary>
internal static class ServerChannel
{
    /// <summary>A probe report is at most 16 MiB (capacity.proto); answers are far smaller, requests carry the report.</summary>
    private const int SendBytesMax = 17 * 1024 * 1024;

    /// <exception cref="ArgumentException">The address or the CA file is not usable; the message says why.</exception>
    public static GrpcChannel Open(Uri server, string? caPath)
    {
        if (server.Scheme == Uri.UriSchemeHttp && !server.IsLoopback)
        {
            throw new ArgumentException($"--server {server} is http:// to another machine: the API key would travel in cleartext. Use https://{server.Authority} (with --ca for a private CA)");
        }

        if (server.Scheme != Uri.UriSchemeHttp && server.Scheme != Uri.UriSchemeHttps)
        {
            throw new ArgumentException($"--server {server} is not an http:// or https:// address");
        }

        var handler = new SocketsHttpHandler { EnableMultipleHttp2Connections = true };
        if (!string.IsNullOrEmpty(caPath))
        {
            if (!File.Exists(caPath))
            {
                throw new ArgumentException($"--ca: no file at {Path.GetFullPath(caPath)}");
            }

            var roots = new X509Certificate2Collection();
            try
            {
                roots.ImportFromPemFile(caPath);
            }
            catch (CryptographicException e)
            {
                throw new ArgumentException($"--ca {caPath}: {e.Message}", e);
            }

            if (roots.Count == 0)
            {
                throw new ArgumentException($"--ca {caPath} holds no PEM certificate");
            }

            handler.SslOptions.CertificateChainPolicy = new X509ChainPolicy
            {
                TrustMode = X509ChainTrustMode.CustomRootTrust,
                RevocationMode = X509RevocationMode.NoCheck,
            };
            handler.SslOptions.CertificateChainPolicy.CustomTrustStore.AddRange(roots);
        }

        return GrpcChannel.ForAddress(server, new GrpcChannelOptions { HttpHandler = handler, DisposeHttpClient = true, MaxSendMessageSize = SendBytesMax });
    }

    public static Metadata Bearer(string apiKey) => new() { { "authorization", "Bearer " + apiKey } };

    /// <summary>A refusal as one line: status, ErrorInfo reason and the server's message.</summary>
    public static string Describe(RpcException e) =>
        $"{e.StatusCode} {e.GetRpcStatus()?.GetDetail<Google.Rpc.ErrorInfo>()?.Reason}: {e.Status.Detail}";
}
