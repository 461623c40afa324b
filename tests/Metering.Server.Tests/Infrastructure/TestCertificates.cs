using System.Net;
using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Grpc.Net.Client;

namespace Metering.Server.Tests.Infrastructure;

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
        X509Certificate2 ca = SelfSigned("CN=Metering Test CA", isCa: true, now);
        X509Certificate2 otherCa = SelfSigned("CN=Someone Else's CA", isCa: true, now);
        return new Issued(
            ca,
            IssuedBy(ca, "CN=127.0.0.1", now, names => { names.AddIpAddress(IPAddress.Loopback); names.AddDnsName("localhost"); }),
            IssuedBy(ca, "CN=metering.example.org", now, names => names.AddDnsName("metering.example.org")),
            otherCa,
            SelfSigned("CN=provider agent 91440300MA5FUTPX3K", isCa: false, now),
            SelfSigned("CN=provider agent other", isCa: false, now));
    }

    private static X509Certificate2 SelfSigned(string subject, bool isCa, DateTimeOffset now)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(subject, key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(isCa, false, 0, true));
        request.CertificateExtensions.Add(isCa
            ? new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true)
            : new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        if (!isCa)
        {
            request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.2")], false));
        }

        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        return request.CreateSelfSigned(now.AddMinutes(-5), now.AddDays(2));
    }

    private static X509Certificate2 IssuedBy(X509Certificate2 ca, string subject, DateTimeOffset now, Action<SubjectAlternativeNameBuilder> names)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(subject, key, HashAlgorithmName.SHA256);
        var alternativeNames = new SubjectAlternativeNameBuilder();
        names(alternativeNames);
        request.CertificateExtensions.Add(alternativeNames.Build());
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(ca, true, false));
        byte[] serial = RandomNumberGenerator.GetBytes(16);
        serial[0] &= 0x7F;
        using X509Certificate2 issued = request.Create(ca, now.AddMinutes(-5), now.AddDays(1), serial);
        return issued.CopyWithPrivateKey(key);
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
