using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Metering.Engine.Signing;
using Metering.Engine.Transparency;
using Metering.Fixtures;

namespace Metering.Server.Tests.Transparency;

/// <summary>
/// The worked example of proto/metering/v1/transparency-log.md, read from the page itself: the
/// engine rebuilds its leaf bytes, hashes, root and signed head bytes, and both the engine and
/// OpenSSL's command line verify its signature with its public key.
/// </summary>
public sealed partial class TransparencyLogExampleTests
{
    [GeneratedRegex(@"^(\w+)\s+=\s+([0-9a-f]+)$", RegexOptions.Multiline)]
    private static partial Regex ExampleLine();

    [Fact]
    public async Task The_documented_example_is_what_the_engine_builds_and_its_signature_verifies_with_openssl()
    {
        string page = await File.ReadAllTextAsync(Path.Combine(TestRecords.RepositoryRoot(), "proto", "metering", "v1", "transparency-log.md"));
        Dictionary<string, string> example = ExampleLine().Matches(page).ToDictionary(m => m.Groups[1].Value, m => m.Groups[2].Value);
        ServerPublicKey key = ServerPublicKey.FromPem(page[page.IndexOf("-----BEGIN PUBLIC KEY-----", StringComparison.Ordinal)..]);
        byte[] settlement = SHA256.HashData("example settlement"u8);
        var leaf0 = new LogLeaf(new DateOnly(2026, 11, 20), TestRecords.Provider, 3,
            Convert.FromHexString("df801b59095301f259d5eb3dbf3780165aaa6c50a8a3e7ef6ce4967ed200ceb2"), settlement);
        var leaf1 = new LogLeaf(new DateOnly(2026, 11, 20), TestRecords.OtherProvider, 0, SHA256.HashData([]), settlement);
        List<byte[]> hashes = [leaf0.Hash(), leaf1.Hash()];
        byte[] root = LogTree.Root(hashes, 2);

        Assert.Equal(example["leaf0"], Convert.ToHexStringLower(leaf0.Encode()));
        Assert.Equal(102, leaf0.Encode().Length);
        Assert.Equal(example["leaf0_hash"], Convert.ToHexStringLower(hashes[0]));
        Assert.Equal(example["leaf1"], Convert.ToHexStringLower(leaf1.Encode()));
        Assert.Equal(example["leaf1_hash"], Convert.ToHexStringLower(hashes[1]));
        Assert.Equal(example["root"], Convert.ToHexStringLower(root));
        Assert.Equal([example["leaf1_hash"]], LogTree.InclusionPath(hashes, 0, 2).Select(Convert.ToHexStringLower));
        Assert.Equal(example["key_id"], key.KeyId);
        var head = new SignedTreeHead(2, root, 1_765_000_000_000, key.KeyId, Convert.FromHexString(example["signature"]));
        Assert.Equal(example["head"], Convert.ToHexStringLower(head.Message()));
        Assert.Equal(78, head.Message().Length);
        Assert.Null(head.SignatureProblem(key));
        Assert.NotNull((head with { TreeSize = 3 }).SignatureProblem(key));

        // The page's openssl command, run on its own bytes.
        string folder = Directory.CreateTempSubdirectory("tlog-example-").FullName;
        try
        {
            await File.WriteAllTextAsync(Path.Combine(folder, "pub.pem"), key.Pem);
            await File.WriteAllBytesAsync(Path.Combine(folder, "head.bin"), head.Message());
            await File.WriteAllBytesAsync(Path.Combine(folder, "head.sig"), head.Signature);
            var (exit, output) = await OpensslAsync("dgst", "-sha256", "-verify", Path.Combine(folder, "pub.pem"), "-signature", Path.Combine(folder, "head.sig"), Path.Combine(folder, "head.bin"));
            Assert.True(exit == 0, output);
            Assert.Contains("Verified OK", output, StringComparison.Ordinal);

            byte[] changed = head.Message();
            changed[^9] ^= 0x01;
            await File.WriteAllBytesAsync(Path.Combine(folder, "head.bin"), changed);
            Assert.NotEqual(0, (await OpensslAsync("dgst", "-sha256", "-verify", Path.Combine(folder, "pub.pem"), "-signature", Path.Combine(folder, "head.sig"), Path.Combine(folder, "head.bin"))).ExitCode);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
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
        return (process.ExitCode, await output + await error);
    }
}
