using System.Diagnostics.CodeAnalysis;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Metering.Cli.Commands;

/// <summary>Reads the client certificate pin of `key issue|pin`: a certificate file (--pin-cert), or its SHA-256 in hex (--pin-sha256).</summary>
internal static class ClientCertificatePins
{
    /// <summary>False with a message when both or neither source is usable; true with a null pin when neither was given.</summary>
    public static bool TryRead(FileInfo? certificate, string? sha256Hex, out byte[]? pin, [NotNullWhen(false)] out string? error)
    {
        pin = null;
        error = null;
        if (certificate is not null && sha256Hex is not null)
        {
            error = "give --pin-cert or --pin-sha256, not both";
            return false;
        }

        if (certificate is not null)
        {
            if (!certificate.Exists)
            {
                error = $"no file at {certificate.FullName}";
                return false;
            }

            try
            {
                using X509Certificate2 loaded = X509CertificateLoader.LoadCertificateFromFile(certificate.FullName);
                pin = loaded.GetCertHash(HashAlgorithmName.SHA256);
                return true;
            }
            catch (CryptographicException e)
            {
                error = $"{certificate.FullName} is not a PEM or DER certificate: {e.Message}";
                return false;
            }
        }

        if (sha256Hex is not null)
        {
            string digits = sha256Hex.Replace(":", "", StringComparison.Ordinal).Trim();
            if (digits.Length != 2 * SHA256.HashSizeInBytes || !digits.All(Uri.IsHexDigit))
            {
                error = $"--pin-sha256 '{sha256Hex}' is not 64 hex digits";
                return false;
            }

            pin = Convert.FromHexString(digits);
        }

        return true;
    }
}
