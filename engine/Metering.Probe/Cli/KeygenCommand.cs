using System.Security.Cryptography;

namespace Metering.Probe.Cli;

/// <summary>
/// `metering-probe keygen --out node.pem [--force]`: makes the node's ECDSA P-256 key. The private
/// key stays on the node in a file only its owner may read; the public key goes to standard output
/// for `metering capacity key register`.
/// </summary>
internal static class KeygenCommand
{
    public const string HelpText = """
        metering-probe keygen: makes this node's ECDSA P-256 signing key.

        Usage: metering-probe keygen --out FILE [--force]

        Writes the private key as PKCS#8 PEM to FILE, readable and writable by its owner only
        (mode 0600), and prints the public key (SubjectPublicKeyInfo PEM) on standard output.
        Register the public key for the node with its devices' UUIDs
          metering capacity key register --code CODE --node NODE --public-key node.pub.pem --device-uuid ID ...
        have an operator approve it (`metering capacity key approve`, with the fingerprint printed
        here), and keep FILE on the node: `metering-probe run --key FILE` signs every report with it.

        Options:
          --out FILE   Where to write the private key. An existing file is left alone unless --force.
          --force      Replace an existing FILE (its old key then signs nothing the server accepts
                       once the new public key is registered).
          -h, --help   Show this help.

        Exit codes: 0 written, 1 the file could not be written, 2 bad options or FILE exists.
        """;

    /// <summary>Owner read and write only: the key signs the node's capacity reports.</summary>
    private const UnixFileMode PrivateKeyMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    public static int Run(IReadOnlyList<string> args)
    {
        string? path = null;
        bool force = false;
        for (int i = 0; i < args.Count; i++)
        {
            switch (args[i])
            {
                case "-h" or "--help":
                    Console.Out.WriteLine(HelpText);
                    return ExitCodes.Success;
                case "--force":
                    force = true;
                    break;
                case "--out" when i + 1 < args.Count && args[i + 1].Length > 0 && !args[i + 1].StartsWith('-'):
                    path = args[++i];
                    break;
                case "--out":
                    return Usage("--out needs a file name");
                default:
                    return Usage($"unknown option '{args[i]}'");
            }
        }

        if (path is null)
        {
            return Usage("--out FILE is required: where to write the private key");
        }

        if (File.Exists(path) && !force)
        {
            return Usage($"{path} exists; it may be this node's registered key. Pass --force to replace it");
        }

        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        try
        {
            Write(path, key.ExportPkcs8PrivateKeyPem());
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"metering-probe: error: cannot write {path}: {e.Message}");
            return ExitCodes.RunFailed;
        }

        Console.Error.WriteLine($"metering-probe: wrote the private key to {path} (mode 0600); the public key follows, SHA-256 {Convert.ToHexStringLower(SHA256.HashData(key.ExportSubjectPublicKeyInfo()))}");
        Console.Out.WriteLine(key.ExportSubjectPublicKeyInfoPem());
        return ExitCodes.Success;
    }

    /// <summary>
    /// Creates the file with mode 0600 from the start, so the key is never readable by others, not
    /// even for a moment; a replaced file is deleted first, because a create mode applies only to a new file.
    /// </summary>
    private static void Write(string path, string pem)
    {
        if (File.Exists(path))
        {
            File.Delete(path);
        }

        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = PrivateKeyMode;
        }

        using var writer = new StreamWriter(path, System.Text.Encoding.ASCII, options);
        writer.Write(pem);
        writer.Write('\n');
    }

    private static int Usage(string error)
    {
        Console.Error.WriteLine($"metering-probe keygen: error: {error}");
        Console.Error.WriteLine("Try 'metering-probe keygen --help'.");
        return ExitCodes.Usage;
    }
}
