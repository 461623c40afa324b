using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using Grpc.Net.Client;

namespace Metering.Samples.ProviderAgent;

/// <summary>
/// The agent's connection to the server: https:// trusting the system's roots, or only the CA in
/// a PEM file; and, when its key is pinned to one, a client certificate for mutual TLS.
/// </summary>
public static class AgentChannel
{
    /// <param name="caPath">PEM file of the CA that issued the server's certificate, or null for the system's roots. The host name is checked either way.</param>
    /// <param name="clientCertificatePath">PEM client certificate (with <paramref name="clientKeyPath"/>), or PKCS#12 alone; null for none.</param>
    public static GrpcChannel Open(Uri server, string? caPath = null, string? clientCertificatePath = null, string? clientKeyPath = null)
    {
        var handler = new SocketsHttpHandler { EnableMultipleHttp2Connections = true };
        if (caPath is not null)
        {
            var roots = new X509Certificate2Collection();
            roots.ImportFromPemFile(caPath);
            // Only this CA is trusted. It is a private one without a revocation service; a leaked
            // key is revoked on the server instead.
            handler.SslOptions.CertificateChainPolicy = new X509ChainPolicy
            {
                TrustMode = X509ChainTrustMode.CustomRootTrust,
                RevocationMode = X509RevocationMode.NoCheck,
            };
            handler.SslOptions.CertificateChainPolicy.CustomTrustStore.AddRange(roots);
        }

        if (clientCertificatePath is not null)
        {
            X509Certificate2 certificate = clientKeyPath is null
                ? X509CertificateLoader.LoadPkcs12FromFile(clientCertificatePath, null)
                : X509Certificate2.CreateFromPemFile(clientCertificatePath, clientKeyPath);
            // Always sent, whichever CAs the server names: the agent's certificate is usually self-signed.
            handler.SslOptions.ClientCertificateContext = SslStreamCertificateContext.Create(certificate, null, offline: true);
        }

        return GrpcChannel.ForAddress(server, new GrpcChannelOptions { HttpHandler = handler, DisposeHttpClient = true });
    }
}
