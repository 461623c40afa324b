using System.Security.Cryptography;

namespace Metering.Engine.Capacity;

/// <summary>
/// The nodes' ECDSA P-256 keys: parsing what a provider registers, and checking a report's
/// signature. Only P-256 with SHA-256 is taken, the curve every HSM, TPM and OpenSSL offers.
/// </summary>
internal static class NodeKeys
{
    /// <summary>The OID of NIST P-256 (secp256r1, prime256v1).</summary>
    private const string P256Oid = "1.2.840.10045.3.1.7";

    /// <summary>A P-256 SubjectPublicKeyInfo is 91 bytes; anything much larger is not one.</summary>
    public const int PublicKeyBytesMax = 512;

    /// <summary>A DER ECDSA P-256 signature is at most 72 bytes; the r ‖ s form is 64.</summary>
    public const int SignatureBytesMax = 128;

    /// <summary>
    /// The key's SubjectPublicKeyInfo DER, re-encoded so that every registered key is stored in
    /// one form; refuses anything that is not an ECDSA P-256 public key.
    /// </summary>
    public static byte[] ParsePublicKey(ReadOnlySpan<byte> der, string? pem)
    {
        bool hasDer = !der.IsEmpty;
        bool hasPem = !string.IsNullOrWhiteSpace(pem);
        if (hasDer == hasPem)
        {
            throw Invalid("give the public key once: as public_key_der or as public_key_pem");
        }

        if (der.Length > PublicKeyBytesMax || (pem?.Length ?? 0) > PublicKeyBytesMax * 2)
        {
            throw Invalid($"the public key is longer than a P-256 key ({PublicKeyBytesMax} bytes at most)");
        }

        using ECDsa key = ECDsa.Create();
        try
        {
            if (hasDer)
            {
                key.ImportSubjectPublicKeyInfo(der, out int read);
                if (read != der.Length)
                {
                    throw Invalid("the public key has bytes after its SubjectPublicKeyInfo");
                }
            }
            else
            {
                key.ImportFromPem(pem);
            }
        }
        catch (CryptographicException e)
        {
            throw Invalid($"the public key is not an ECDSA SubjectPublicKeyInfo: {e.Message}");
        }
        catch (ArgumentException e)
        {
            throw Invalid($"the PEM holds no ECDSA public key: {e.Message}");
        }

        ECParameters parameters = key.ExportParameters(includePrivateParameters: false);
        if (parameters.Curve.Oid?.Value != P256Oid)
        {
            throw Invalid($"the key is on curve {parameters.Curve.Oid?.FriendlyName ?? parameters.Curve.Oid?.Value ?? "(explicit)"}, not P-256");
        }

        return key.ExportSubjectPublicKeyInfo();
    }

    /// <summary>Whether the signature (DER, or the 64-byte r ‖ s form) verifies over the data with the key.</summary>
    public static bool Verify(byte[] publicKeySpki, ReadOnlySpan<byte> data, ReadOnlySpan<byte> signature)
    {
        if (signature.IsEmpty || signature.Length > SignatureBytesMax)
        {
            return false;
        }

        using ECDsa key = ECDsa.Create();
        key.ImportSubjectPublicKeyInfo(publicKeySpki, out _);
        DSASignatureFormat format = signature.Length == 64 ? DSASignatureFormat.IeeeP1363FixedFieldConcatenation : DSASignatureFormat.Rfc3279DerSequence;
        try
        {
            return key.VerifyData(data, signature, HashAlgorithmName.SHA256, format);
        }
        catch (CryptographicException)
        {
            // A malformed DER signature is simply not a valid signature.
            return false;
        }
    }

    private static CapacityRefusedException Invalid(string detail) => new(CapacityRefusalReason.PublicKeyInvalid, detail);
}

/// <summary>A capacity call was refused for a stated rule; nothing was changed but the evidence the refusal names.</summary>
public sealed class CapacityRefusedException(CapacityRefusalReason reason, string message, IReadOnlyDictionary<string, string>? metadata = null)
    : Exception(message)
{
    public CapacityRefusalReason Reason { get; } = reason;

    public IReadOnlyDictionary<string, string> Metadata { get; } = metadata ?? new Dictionary<string, string>();
}
