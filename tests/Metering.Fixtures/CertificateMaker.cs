using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Metering.Fixtures;

/// <summary>
/// Makes ECDSA P-256 certificates in memory with CertificateRequest, for the tests' and the
/// benches' TLS: a CA, a certificate it issues for a server, and the self-signed client
/// certificates providers make for mutual TLS. Nothing is written to disk here.
/// </summary>
internal static class CertificateMaker
{
    private const string ServerAuthentication = "1.3.6.1.5.5.7.3.1";
    private const string ClientAuthentication = "1.3.6.1.5.5.7.3.2";

    /// <summary>A self-signed CA that may sign certificates, valid from five minutes ago until <paramref name="until"/>.</summary>
    public static X509Certificate2 Authority(string subject, DateTimeOffset now, DateTimeOffset until) => SelfSigned(subject, isCa: true, now, until);

    /// <summary>A self-signed client certificate, as a provider makes one for a key pinned to it.</summary>
    public static X509Certificate2 Client(string subject, DateTimeOffset now, DateTimeOffset until) => SelfSigned(subject, isCa: false, now, until);

    /// <summary>A server certificate issued by <paramref name="ca"/> for the names <paramref name="names"/> adds, with its private key.</summary>
    public static X509Certificate2 Server(X509Certificate2 ca, string subject, DateTimeOffset now, DateTimeOffset until, Action<SubjectAlternativeNameBuilder> names)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(subject, key, HashAlgorithmName.SHA256);
        var alternativeNames = new SubjectAlternativeNameBuilder();
        names(alternativeNames);
        request.CertificateExtensions.Add(alternativeNames.Build());
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid(ServerAuthentication)], false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(ca, true, false));
        byte[] serial = RandomNumberGenerator.GetBytes(16);
        serial[0] &= 0x7F;
        using X509Certificate2 issued = request.Create(ca, now.AddMinutes(-5), until, serial);
        return issued.CopyWithPrivateKey(key);
    }

    private static X509Certificate2 SelfSigned(string subject, bool isCa, DateTimeOffset now, DateTimeOffset until)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(subject, key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(isCa, false, 0, true));
        request.CertificateExtensions.Add(isCa
            ? new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true)
            : new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        if (!isCa)
        {
            request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid(ClientAuthentication)], false));
        }

        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        return request.CreateSelfSigned(now.AddMinutes(-5), until);
    }
}
