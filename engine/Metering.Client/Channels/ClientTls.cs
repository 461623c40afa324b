using System.Net.Security;
using System.Security.Cryptography.X509Certificates;

namespace Metering.Client.Channels;

/// <summary>
/// The TLS side of a client's connection: which CAs vouch for the server's certificate, and the
/// client certificate a key pinned to one needs (mutual TLS).
/// </summary>
public static class ClientTls
{
    /// <summary>
    /// An HTTP/2 handler that trusts only <paramref name="trustedRoots"/> (null: the system's roots;
    /// the host name is checked either way) and presents <paramref name="clientCertificate"/> (null: none).
    /// </summary>
    public static SocketsHttpHandler Handler(X509Certificate2Collection? trustedRoots, X509Certificate2? clientCertificate)
    {
        var handler = new SocketsHttpHandler { EnableMultipleHttp2Connections = true };
        if (trustedRoots is not null)
        {
            // The CA replaces the system's roots rather than adding to them; a private CA has no
            // revocation service, and a stolen key is revoked through `metering key revoke`.
            handler.SslOptions.CertificateChainPolicy = new X509ChainPolicy
            {
                TrustMode = X509ChainTrustMode.CustomRootTrust,
                RevocationMode = X509RevocationMode.NoCheck,
            };
            handler.SslOptions.CertificateChainPolicy.CustomTrustStore.AddRange(trustedRoots);
        }

        if (clientCertificate is not null)
        {
            // Sent whatever CA names the server lists: a provider's certificate is usually self-signed.
            handler.SslOptions.ClientCertificateContext = SslStreamCertificateContext.Create(clientCertificate, null, offline: true);
        }

        return handler;
    }
}
