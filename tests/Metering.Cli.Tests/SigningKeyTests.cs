using System.Diagnostics;
using System.Security.Cryptography;
using Metering.Engine.Signing;
using Metering.Server.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>
/// The server's signing key as an operator makes it and as an outsider checks what it signed:
/// `metering key signing new|show`, and OpenSSL's own command line as the independent verifier.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class SigningKeyTests
{
    [Fact]
    public async Task Key_signing_new_writes_an_owner_only_key_whose_id_and_signatures_openssl_confirms()
    {
        string folder = Directory.CreateTempSubdirectory("signing-").FullName;
        string keyPath = Path.Combine(folder, "signing-key.pem");

        var (exit, output) = await CliProcess.RunAsync("key", "signing", "new", "--out", keyPath);

        Assert.True(exit == 0, output);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(keyPath));
        using ServerSigningKey key = ServerSigningKey.Load(keyPath);
        Assert.Contains($"key id: {key.KeyId}", output, StringComparison.Ordinal);
        Assert.Contains(key.PublicKey.Pem, output, StringComparison.Ordinal);

        // The key id is what the documented openssl pipeline gives for the published public key.
        string publicPath = Path.Combine(folder, "signing-key.pub.pem");
        await File.WriteAllTextAsync(publicPath, key.PublicKey.Pem);
        string der = Path.Combine(folder, "signing-key.pub.der");
        await OpensslAsync("pkey", "-pubin", "-in", publicPath, "-outform", "DER", "-out", der);
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(await File.ReadAllBytesAsync(der)))[..16], key.KeyId);

        // A signature verifies with openssl over the same bytes, and not over one changed byte.
        byte[] message = "receipt bytes"u8.ToArray();
        string messagePath = Path.Combine(folder, "message.bin");
        string signaturePath = Path.Combine(folder, "message.sig");
        await File.WriteAllBytesAsync(messagePath, message);
        await File.WriteAllBytesAsync(signaturePath, key.Sign(message));
        Assert.Equal(0, (await OpensslAsync("dgst", "-sha256", "-verify", publicPath, "-signature", signaturePath, messagePath)).ExitCode);
        message[0] ^= 1;
        await File.WriteAllBytesAsync(messagePath, message);
        Assert.NotEqual(0, (await OpensslAsync("dgst", "-sha256", "-verify", publicPath, "-signature", signaturePath, messagePath)).ExitCode);
    }

    [Fact]
    public async Task Key_signing_new_never_overwrites_an_existing_key()
    {
        string keyPath = Path.Combine(Directory.CreateTempSubdirectory("signing-").FullName, "signing-key.pem");
        await File.WriteAllTextAsync(keyPath, "the key in service");

        var (exit, output) = await CliProcess.RunAsync("key", "signing", "new", "--out", keyPath);

        Assert.Equal(2, exit);
        Assert.Contains("cannot write", output, StringComparison.Ordinal);
        Assert.Equal("the key in service", await File.ReadAllTextAsync(keyPath));
    }

    [Fact]
    public async Task Key_signing_show_prints_the_same_public_key_and_id()
    {
        string keyPath = Path.Combine(Directory.CreateTempSubdirectory("signing-").FullName, "signing-key.pem");
        using (ServerSigningKey made = ServerSigningKey.CreateNew())
        {
            made.WritePrivateKey(keyPath);
        }

        var (exit, output) = await CliProcess.RunAsync("key", "signing", "show", keyPath);

        using ServerSigningKey key = ServerSigningKey.Load(keyPath);
        Assert.True(exit == 0, output);
        Assert.Contains($"key id: {key.KeyId}", output, StringComparison.Ordinal);
        Assert.Equal(key.KeyId, ServerPublicKey.FromPem(output).KeyId);
    }

    [Fact]
    public async Task Serve_on_an_external_database_without_a_signing_key_is_refused_before_it_connects()
    {
        var (exit, output) = await CliProcess.RunAsync("serve", "--connection", "Host=127.0.0.1;Port=1;Database=none;Username=none");

        Assert.Equal(2, exit);
        Assert.Contains("No signing key: pass --signing-key FILE", output, StringComparison.Ordinal);
    }

    [Fact]
    public void A_key_file_other_users_can_read_is_refused()
    {
        string keyPath = Path.Combine(Directory.CreateTempSubdirectory("signing-").FullName, "signing-key.pem");
        using (ServerSigningKey made = ServerSigningKey.CreateNew())
        {
            made.WritePrivateKey(keyPath);
        }

        File.SetUnixFileMode(keyPath, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.OtherRead);

        var refused = Assert.Throws<SigningKeyException>(() => ServerSigningKey.Load(keyPath));
        Assert.Contains("chmod 600", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_key_on_another_curve_is_refused()
    {
        string keyPath = Path.Combine(Directory.CreateTempSubdirectory("signing-").FullName, "p384.pem");
        using (ECDsa p384 = ECDsa.Create(ECCurve.NamedCurves.nistP384))
        {
            File.WriteAllText(keyPath, p384.ExportPkcs8PrivateKeyPem());
        }

        File.SetUnixFileMode(keyPath, UnixFileMode.UserRead | UnixFileMode.UserWrite);

        var refused = Assert.Throws<SigningKeyException>(() => ServerSigningKey.Load(keyPath));
        Assert.Contains("P-256 only", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_signature_by_another_key_or_not_der_at_all_does_not_verify()
    {
        using ServerSigningKey server = ServerSigningKey.CreateNew();
        using ServerSigningKey forger = ServerSigningKey.CreateNew();
        byte[] message = "tree head"u8.ToArray();

        Assert.True(server.PublicKey.Verify(message, server.Sign(message)));
        Assert.False(server.PublicKey.Verify(message, forger.Sign(message)));
        Assert.False(server.PublicKey.Verify(message, new byte[] { 0x30, 0x01, 0x00 }));
    }

    private static async Task<(int ExitCode, string Output)> OpensslAsync(params string[] arguments)
    {
        var start = new ProcessStartInfo("openssl") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.True(process.ExitCode == 0 || arguments[0] == "dgst", await output + await error);
        return (process.ExitCode, await output + await error);
    }
}
