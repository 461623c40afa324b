using System.Security.Cryptography;

namespace Metering.Probe.Submission;

/// <summary>Reads the node's private key as `metering-probe keygen` wrote it (or any ECDSA P-256 key in PEM).</summary>
internal static class NodeKeyFile
{
    /// <summary>A PEM private key is a few hundred bytes; anything far larger is not one.</summary>
    private const int FileBytesMax = 64 * 1024;

    /// <exception cref="ArgumentException">The file is missing, too large, or holds no ECDSA P-256 private key.</exception>
    public static ECDsa Read(string path)
    {
        var file = new FileInfo(path);
        if (!file.Exists)
        {
            throw new ArgumentException($"--key: no file at {file.FullName} (make one with `metering-probe keygen --out {path}`)");
        }

        if (file.Length > FileBytesMax)
        {
            throw new ArgumentException($"--key {path} is {file.Length} bytes, not a PEM private key");
        }

        var key = ECDsa.Create();
        try
        {
            key.ImportFromPem(File.ReadAllText(path));
            // A public key imports too, but cannot sign: exporting the private part tells.
            _ = key.ExportParameters(true);
        }
        catch (Exception e) when (e is CryptographicException or ArgumentException)
        {
            key.Dispose();
            throw new ArgumentException($"--key {path} holds no ECDSA private key in PEM: {e.Message}", e);
        }

        if (key.ExportParameters(false).Curve.Oid.Value != ECCurve.NamedCurves.nistP256.Oid.Value)
        {
            key.Dispose();
            throw new ArgumentException($"--key {path} is an ECDSA key on another curve; the server takes P-256 only");
        }

        return key;
    }
}
