using System.Security.Cryptography;

namespace Metering.Engine.Signing;

/// <summary>
/// The server's ECDSA P-256 signing key. It lives in a file outside the database, so that whoever
/// can write the database still cannot forge what the server signed: receipts on acknowledgements
/// and the transparency log's tree heads. Signatures are SHA-256 over the message, DER-encoded
/// (RFC 3279 Ecdsa-Sig-Value), which is what `openssl dgst -sha256 -verify` checks.
/// </summary>
public sealed class ServerSigningKey : IDisposable
{
    private readonly ECDsa _key;

    private ServerSigningKey(ECDsa key)
    {
        _key = key;
        PublicKey = new ServerPublicKey(key.ExportSubjectPublicKeyInfo());
    }

    /// <summary>The public half, with its key id, to publish and to verify with.</summary>
    public ServerPublicKey PublicKey { get; }

    /// <summary>Short for <c>PublicKey.KeyId</c>.</summary>
    public string KeyId => PublicKey.KeyId;

    /// <summary>A fresh key, for `metering key signing new`, an embedded trial, or a test.</summary>
    public static ServerSigningKey CreateNew() => new(ECDsa.Create(ECCurve.NamedCurves.nistP256));

    /// <summary>
    /// Reads a PEM private key ("PRIVATE KEY" PKCS#8 or "EC PRIVATE KEY" SEC 1). Refuses any curve
    /// but P-256, and a key file that other users may read: a key anyone on the machine can copy
    /// signs nothing worth trusting.
    /// </summary>
    public static ServerSigningKey Load(string path)
    {
        if (!File.Exists(path))
        {
            throw new SigningKeyException($"Signing key file {path} does not exist. Make one with `metering key signing new --out {path}`.");
        }

        if (!OperatingSystem.IsWindows() && (File.GetUnixFileMode(path) & (UnixFileMode.GroupRead | UnixFileMode.GroupWrite | UnixFileMode.OtherRead | UnixFileMode.OtherWrite)) != 0)
        {
            throw new SigningKeyException($"Signing key file {path} can be read or written by other users (mode {Convert.ToString((int)File.GetUnixFileMode(path), 8)}). Run: chmod 600 {path}");
        }

        var key = ECDsa.Create();
        try
        {
            key.ImportFromPem(File.ReadAllText(path));
        }
        catch (Exception e) when (e is ArgumentException or CryptographicException)
        {
            key.Dispose();
            throw new SigningKeyException($"Signing key file {path} holds no ECDSA private key in PEM form: {e.Message}");
        }

        ECParameters parameters = key.ExportParameters(includePrivateParameters: false);
        if (parameters.Curve.Oid.Value != ECCurve.NamedCurves.nistP256.Oid.Value)
        {
            key.Dispose();
            throw new SigningKeyException($"Signing key file {path} holds a key on curve {parameters.Curve.Oid.FriendlyName ?? parameters.Curve.Oid.Value}; the server signs with P-256 only.");
        }

        return new ServerSigningKey(key);
    }

    /// <summary>Writes the private key as PKCS#8 PEM to a new file, readable by its owner only; never overwrites.</summary>
    public void WritePrivateKey(string path)
    {
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        }

        using var file = new FileStream(path, options);
        using var writer = new StreamWriter(file);
        writer.Write(_key.ExportPkcs8PrivateKeyPem());
    }

    /// <summary>ECDSA over SHA-256 of <paramref name="message"/>, DER-encoded.</summary>
    public byte[] Sign(ReadOnlySpan<byte> message) =>
        _key.SignData(message, HashAlgorithmName.SHA256, DSASignatureFormat.Rfc3279DerSequence);

    public void Dispose() => _key.Dispose();
}

/// <summary>
/// A server's published public key. Its id is the lowercase hex of the first 8 bytes of SHA-256
/// over the DER SubjectPublicKeyInfo, so anyone can recompute it:
/// <c>openssl pkey -pubin -in key.pub.pem -outform DER | sha256sum | cut -c1-16</c>.
/// </summary>
public sealed class ServerPublicKey
{
    /// <summary>Bytes of the key id: 8 bytes make collisions between a bureau's few keys negligible.</summary>
    public const int KeyIdBytes = 8;

    public ServerPublicKey(byte[] subjectPublicKeyInfo)
    {
        using ECDsa key = ImportP256(subjectPublicKeyInfo);
        SubjectPublicKeyInfo = subjectPublicKeyInfo;
        KeyId = IdOf(subjectPublicKeyInfo);
    }

    /// <summary>DER SubjectPublicKeyInfo.</summary>
    public byte[] SubjectPublicKeyInfo { get; }

    public string KeyId { get; }

    public string Pem => PemEncoding.WriteString("PUBLIC KEY", SubjectPublicKeyInfo);

    /// <summary>Reads a "PUBLIC KEY" PEM, as `metering key signing new` prints and the server publishes.</summary>
    public static ServerPublicKey FromPem(string pem)
    {
        if (!PemEncoding.TryFind(pem, out PemFields fields) || pem[fields.Label] is not "PUBLIC KEY")
        {
            throw new SigningKeyException("No \"PUBLIC KEY\" PEM block found.");
        }

        return new ServerPublicKey(Convert.FromBase64String(pem[fields.Base64Data]));
    }

    public static string IdOf(ReadOnlySpan<byte> subjectPublicKeyInfo) =>
        Convert.ToHexStringLower(SHA256.HashData(subjectPublicKeyInfo)[..KeyIdBytes]);

    /// <summary>Whether <paramref name="signature"/> (DER) is this key's signature over <paramref name="message"/>.</summary>
    public bool Verify(ReadOnlySpan<byte> message, ReadOnlySpan<byte> signature)
    {
        using ECDsa key = ImportP256(SubjectPublicKeyInfo);
        try
        {
            return key.VerifyData(message, signature, HashAlgorithmName.SHA256, DSASignatureFormat.Rfc3279DerSequence);
        }
        catch (CryptographicException)
        {
            // A signature that is not even DER is simply not a signature of this key.
            return false;
        }
    }

    private static ECDsa ImportP256(byte[] subjectPublicKeyInfo)
    {
        var key = ECDsa.Create();
        try
        {
            key.ImportSubjectPublicKeyInfo(subjectPublicKeyInfo, out _);
            if (key.ExportParameters(false).Curve.Oid.Value != ECCurve.NamedCurves.nistP256.Oid.Value)
            {
                throw new SigningKeyException("The public key is not on curve P-256.");
            }

            return key;
        }
        catch (CryptographicException e)
        {
            key.Dispose();
            throw new SigningKeyException($"Not an ECDSA public key: {e.Message}");
        }
        catch
        {
            key.Dispose();
            throw;
        }
    }
}

/// <summary>A signing key that cannot be used, with the reason and what to do.</summary>
public sealed class SigningKeyException(string message) : Exception(message);
