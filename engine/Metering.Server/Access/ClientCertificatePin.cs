using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Metering.Protocol.V1;

namespace Metering.Server.Access;

/// <summary>
/// Mutual TLS for pinned keys: a key pinned to a client certificate's SHA-256 counts only on a
/// connection that presented that very certificate. The TLS layer accepts any client certificate;
/// this comparison is the check. An unpinned key ignores whatever the connection presented.
/// </summary>
internal static class ClientCertificatePin
{
    /// <summary>The SHA-256 of a certificate's DER bytes, as `openssl x509 -noout -fingerprint -sha256` prints it (without colons).</summary>
    public static byte[] Sha256(X509Certificate2 certificate) => certificate.GetCertHash(HashAlgorithmName.SHA256);

    /// <summary>Null when the presented certificate satisfies the pin, else the refusal and its message.</summary>
    public static (CallerRefusal Reason, string Message)? Check(byte[]? pin, X509Certificate2? presented)
    {
        if (pin is null)
        {
            return null;
        }

        if (presented is null)
        {
            return (CallerRefusal.ClientCertificateRequired,
                "this API key is pinned to a client certificate, and the connection presented none; connect over https:// with that certificate and its key");
        }

        return CryptographicOperations.FixedTimeEquals(pin, Sha256(presented))
            ? null
            : (CallerRefusal.ClientCertificateMismatch, "this API key is pinned to another client certificate than the one the connection presented");
    }
}
