using System.Net;
using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Grpc.Net.Client;

namespace Metering.Bench.Load;

/// <summary>
/// A private CA and the server certificate it issues for 127.0.0.1, made at run time with
/// CertificateRequest and never written to disk, plus a second CA that issued nothing, to show
/// that a client pinned to the wrong CA is refused. ECDSA P-256, like the tests' certificates.
/// </summary>
internal sealed class BenchCertificates : IDisposable
{
    private BenchCertificates(X509Certificate2 ca, X509Certificate2 server, X509Certificate2 otherCa) => (Ca, Server, OtherCa) = (ca, server, otherCa);

    public X509Certificate2 Ca { get; }

    public X509Certificate2 Server { get; }

    public X509Certificate2 OtherCa { get; }

    public static BenchCertificates Make()
    {
        DateTimeOffset now = DateTimeOffset.UtcNow;
        X509Certificate2 ca = CertificateAuthority("CN=Metering Bench CA", now);
        return new BenchCertificates(ca, ServerCertificate(ca, now), CertificateAuthority("CN=Someone Else's CA", now));
    }

    /// <summary>
    /// A channel that trusts <paramref name="trust"/> only, and reports every TLS handshake: the
    /// SHA-256 thumbprint of the certificate the server presented and whether it chained to that CA without error.
    /// </summary>
    public static GrpcChannel Channel(Uri address, X509Certificate2 trust, Action<string?, SslPolicyErrors>? handshake = null)
    {
        var policy = new X509ChainPolicy { TrustMode = X509ChainTrustMode.CustomRootTrust, RevocationMode = X509RevocationMode.NoCheck };
        policy.CustomTrustStore.Add(trust);
        var handler = new SocketsHttpHandler { EnableMultipleHttp2Connections = true };
        handler.SslOptions.CertificateChainPolicy = policy;
        handler.SslOptions.RemoteCertificateValidationCallback = (_, certificate, _, errors) =>
        {
            handshake?.Invoke(certificate?.GetCertHashString(HashAlgorithmName.SHA256), errors);
            return errors == SslPolicyErrors.None;
        };
        return GrpcChannel.ForAddress(address, new GrpcChannelOptions { HttpHandler = handler, DisposeHttpClient = true, MaxSendMessageSize = null });
    }

    private static X509Certificate2 CertificateAuthority(string subject, DateTimeOffset now)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(subject, key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        return request.CreateSelfSigned(now.AddMinutes(-5), now.AddDays(1));
    }

    private static X509Certificate2 ServerCertificate(X509Certificate2 ca, DateTimeOffset now)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=127.0.0.1", key, HashAlgorithmName.SHA256);
        var names = new SubjectAlternativeNameBuilder();
        names.AddIpAddress(IPAddress.Loopback);
        request.CertificateExtensions.Add(names.Build());
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        // Server authentication only.
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(ca, true, false));
        byte[] serial = RandomNumberGenerator.GetBytes(16);
        serial[0] &= 0x7F;
        using X509Certificate2 issued = request.Create(ca, now.AddMinutes(-5), now.AddHours(12), serial);
        return issued.CopyWithPrivateKey(key);
    }

    public void Dispose()
    {
        Ca.Dispose();
        Server.Dispose();
        OtherCa.Dispose();
    }
}
