using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Metering.Server.Hosting;

/// <summary>Loads the certificate `serve` presents: a PEM certificate with its PEM key, or a PKCS#12 (PFX) file.</summary>
public static class ServerCertificate
{
    /// <summary>
    /// With a key file, reads PEM (the key may be encrypted; the password opens it). Without one,
    /// reads PKCS#12 with the password, if any. The certificate must carry its private key.
    /// </summary>
    /// <exception cref="ArgumentException">A file is missing, unreadable, or the certificate has no private key; the message says which.</exception>
    public static X509Certificate2 Load(string certificatePath, string? keyPath, string? password)
    {
        foreach (string? path in new[] { certificatePath, keyPath })
        {
            if (path is not null && !File.Exists(path))
            {
                throw new ArgumentException($"TLS: no file at {Path.GetFullPath(path)}");
            }
        }

        X509Certificate2 certificate;
        try
        {
            if (keyPath is null)
            {
                certificate = X509CertificateLoader.LoadPkcs12FromFile(certificatePath, password);
            }
            else
            {
                using X509Certificate2 pem = string.IsNullOrEmpty(password)
                    ? X509Certificate2.CreateFromPemFile(certificatePath, keyPath)
                    : X509Certificate2.CreateFromEncryptedPemFile(certificatePath, password, keyPath);
                // A key read from PEM is ephemeral; Windows' TLS stack can only use a key held in a
                // key store, and a PKCS#12 round trip gives it one. Elsewhere it changes nothing.
                certificate = X509CertificateLoader.LoadPkcs12(pem.Export(X509ContentType.Pkcs12), null);
            }
        }
        catch (CryptographicException e)
        {
            throw new ArgumentException(keyPath is null
                ? $"TLS: {certificatePath} is not a PKCS#12 (PFX) file that this password opens ({e.Message}); for PEM give the key file too"
                : $"TLS: {certificatePath} and {keyPath} are not a PEM certificate and its private key ({e.Message})", e);
        }

        if (!certificate.HasPrivateKey)
        {
            certificate.Dispose();
            throw new ArgumentException($"TLS: {certificatePath} holds no private key");
        }

        return certificate;
    }
}
