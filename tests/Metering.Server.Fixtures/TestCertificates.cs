using System.Net;
using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using Grpc.Net.Client;
using Metering.Fixtures;

namespace Metering.Server.Fixtures;

/// <summary>
/// Certificates made once per test run with CertificateRequest, never stored in the repository: a
/// private CA, the server's certificate from it for 127.0.0.1 and localhost, a certificate from it
/// for another host name, a second CA nobody trusts, and two self-signed client certificates of
/// the kind providers make for mutual TLS. ECDSA P-256 keeps making them and every handshake quick.
/// </summary>
public static class TestCertificates
{
    private static readonly Lazy<Issued> Made = new(Make);
    private static readonly Lazy<string> Folder = new(() => Directory.CreateTempSubdirectory("metering-tls-").FullName);

    /// <summary>The CA every test client trusts, and only that one.</summary>
    public static X509Certificate2 Ca => Made.Value.Ca;

    /// <summary>The server's certificate (127.0.0.1 and localhost), issued by <see cref="Ca"/>.</summary>
    public static X509Certificate2 Server => Made.Value.Server;

    /// <summary>Issued by <see cref="Ca"/> for metering.example.org only: right CA, wrong host name.</summary>
    public static X509Certificate2 OtherHostServer => Made.Value.OtherHostServer;

    /// <summary>A CA that issued nothing the server holds.</summary>
    public static X509Certificate2 OtherCa => Made.Value.OtherCa;

    /// <summary>The first test provider's self-signed client certificate.</summary>
    public static X509Certificate2 ProviderClient => Made.Value.ProviderClient;

    /// <summary>The other test provider's self-signed client certificate.</summary>
    public static X509Certificate2 OtherProviderClient => Made.Value.OtherProviderClient;

    /// <summary>The CA as a PEM file, for the CLI's --ca.</summary>
    public static string CaPemPath => Write("ca.pem", Ca, withKey: false).Certificate;

    /// <summary>The server's certificate and key as PEM files, for `serve --tls-cert --tls-key`.</summary>
    public static (string Certificate, string Key) ServerPemPaths => Write("server", Server, withKey: true);

    /// <summary>The first provider's client certificate and key as PEM files, for the agent's --client-cert --client-key.</summary>
    public static (string Certificate, string Key) ProviderClientPemPaths => Write("provider-client", ProviderClient, withKey: true);

    /// <summary>A channel that trusts only <paramref name="trust"/> (the test CA by default) and presents <paramref name="client"/>, if any.</summary>
    public static GrpcChannel Channel(Uri address, X509Certificate2? client = null, X509Certificate2? trust = null)
    {
        var handler = new SocketsHttpHandler { EnableMultipleHttp2Connections = true };
        handler.SslOptions.CertificateChainPolicy = TrustOnly(trust ?? Ca);
        if (client is not null)
        {
            handler.SslOptions.ClientCertificateContext = SslStreamCertificateContext.Create(client, null, offline: true);
        }

        return GrpcChannel.ForAddress(address, new GrpcChannelOptions { HttpHandler = handler, DisposeHttpClient = true });
    }

    public static X509ChainPolicy TrustOnly(X509Certificate2 root)
    {
        var policy = new X509ChainPolicy { TrustMode = X509ChainTrustMode.CustomRootTrust, RevocationMode = X509RevocationMode.NoCheck };
        policy.CustomTrustStore.Add(root);
        return policy;
    }

    private static Issued Make()
    {
        DateTimeOffset now = DateTimeOffset.UtcNow;
        X509Certificate2 ca = CertificateMaker.Authority("CN=Metering Test CA", now, now.AddDays(2));
        return new Issued(
            ca,
            CertificateMaker.Server(ca, "CN=127.0.0.1", now, now.AddDays(1), names => { names.AddIpAddress(IPAddress.Loopback); names.AddDnsName("localhost"); }),
            CertificateMaker.Server(ca, "CN=metering.example.org", now, now.AddDays(1), names => names.AddDnsName("metering.example.org")),
            CertificateMaker.Authority("CN=Someone Else's CA", now, now.AddDays(2)),
            CertificateMaker.Client("CN=provider agent 91440300MA5FUTPX3K", now, now.AddDays(2)),
            CertificateMaker.Client("CN=provider agent other", now, now.AddDays(2)));
    }

    private static readonly Lock WriteLock = new();

    private static (string Certificate, string Key) Write(string name, X509Certificate2 certificate, bool withKey)
    {
        string certificatePath = Path.Combine(Folder.Value, withKey ? name + ".pem" : name);
        string keyPath = Path.Combine(Folder.Value, name + ".key");
        lock (WriteLock)
        {
            if (!File.Exists(certificatePath))
            {
                if (withKey)
                {
                    File.WriteAllText(keyPath, certificate.GetECDsaPrivateKey()!.ExportPkcs8PrivateKeyPem());
                }

                File.WriteAllText(certificatePath, certificate.ExportCertificatePem());
            }
        }

        return (certificatePath, keyPath);
    }

    private sealed record Issued(X509Certificate2 Ca, X509Certificate2 Server, X509Certificate2 OtherHostServer, X509Certificate2 OtherCa,
        X509Certificate2 ProviderClient, X509Certificate2 OtherProviderClient);
}
