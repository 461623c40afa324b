using System.Security.Cryptography;
using System.Text;
using Metering.Engine.Ingest;

namespace Metering.Engine.Tests.Ingest;

/// <summary>
/// The chain's SHA-256 against digests that do not come from the code under test: the FIPS 180-2
/// examples, and a digest over many lengths computed once with another SHA-256 (Python's
/// hashlib). Inputs up to <see cref="Sha256Digest.NativeBytesMax"/> take OpenSSL's low-level path
/// on Linux and longer ones .NET's, so each path meets a vector of its own.
/// </summary>
public sealed class Sha256DigestTests
{
    /// <summary>Byte i of the many-lengths input; a formula, so that another language rebuilds it.</summary>
    private static byte PatternByte(int i) => (byte)(i * 167 + 13);

    [Fact]
    public void On_linux_digests_go_through_openssl_directly()
    {
        // .NET itself needs libcrypto on Linux, so the low-level functions are always there.
        Assert.True(!OperatingSystem.IsLinux() || Sha256Digest.IsNative);
    }

    [Theory]
    [InlineData("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")]
    [InlineData("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")]
    [InlineData("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")]
    public void A_short_input_gives_the_digest_of_the_fips_180_2_examples(string message, string expectedHex)
    {
        byte[] input = Encoding.ASCII.GetBytes(message);
        Assert.True(input.Length <= Sha256Digest.NativeBytesMax);
        Span<byte> digest = stackalloc byte[32];

        Sha256Digest.Hash(input, digest);

        Assert.Equal(expectedHex, Convert.ToHexStringLower(digest));
    }

    [Fact]
    public void An_input_longer_than_the_native_limit_gives_the_fips_180_2_digest_of_a_million_a()
    {
        byte[] input = new byte[1_000_000];
        input.AsSpan().Fill((byte)'a');
        Assert.True(input.Length > Sha256Digest.NativeBytesMax);
        byte[] digest = new byte[32];

        Sha256Digest.Hash(input, digest);

        Assert.Equal("cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0", Convert.ToHexStringLower(digest));
    }

    [Fact]
    public void Every_length_across_block_boundaries_gives_the_digests_another_implementation_computed()
    {
        byte[] input = new byte[2_100];
        for (int i = 0; i < input.Length; i++)
        {
            input[i] = PatternByte(i);
        }

        // The digest of each length, one after the other; its own digest was computed with
        // Python's hashlib over the same lengths (0 to 299, then every 97th to 2,100).
        var digests = new List<byte>();
        Span<byte> digest = stackalloc byte[32];
        for (int length = 0; length <= input.Length; length += length < 300 ? 1 : 97)
        {
            Sha256Digest.Hash(input.AsSpan(0, length), digest);
            digests.AddRange(digest);
        }

        Assert.Equal("ddc19dd00de8bd3d63d16268de6d0eb5f55be022ab0ae8a88d762a6d28e1bd0e", Convert.ToHexStringLower(SHA256.HashData([.. digests])));
    }

    [Fact]
    public void The_native_path_agrees_with_the_platform_on_every_length_across_block_boundaries()
    {
        // Where OpenSSL's low-level functions are used, .NET's SHA-256 is a second implementation
        // to check them against on random bytes; elsewhere there is only one path to check.
        Assert.Equal(OperatingSystem.IsLinux(), Sha256Digest.IsNative);
        if (!Sha256Digest.IsNative)
        {
            return;
        }

        var random = new Random(2025);
        byte[] input = new byte[2_100];
        random.NextBytes(input);
        Span<byte> digest = stackalloc byte[32];
        for (int length = 0; length <= input.Length; length += length < 300 ? 1 : 97)
        {
            Sha256Digest.Hash(input.AsSpan(0, length), digest);
            Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(input.AsSpan(0, length))), Convert.ToHexStringLower(digest));
        }
    }

    [Fact]
    public void A_destination_shorter_than_a_digest_is_refused()
    {
        Assert.Throws<ArgumentException>(() => Sha256Digest.Hash("abc"u8, new byte[31]));
    }
}
