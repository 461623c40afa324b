using System.Security.Cryptography;
using Metering.Engine.Ingest;

namespace Metering.Engine.Tests.Ingest;

public sealed class Sha256DigestTests
{
    [Fact]
    public void On_linux_digests_go_through_openssl_directly()
    {
        // .NET itself needs libcrypto on Linux, so the low-level functions are always there.
        Assert.True(!OperatingSystem.IsLinux() || Sha256Digest.IsNative);
    }

    [Fact]
    public void Every_length_across_block_boundaries_gives_the_standard_digest()
    {
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
    public void An_input_longer_than_the_native_limit_gives_the_standard_digest_too()
    {
        byte[] input = new byte[Sha256Digest.NativeBytesMax * 3 + 5];
        new Random(7).NextBytes(input);
        byte[] digest = new byte[32];

        Sha256Digest.Hash(input, digest);

        Assert.Equal(SHA256.HashData(input), digest);
    }

    [Fact]
    public void The_empty_input_gives_the_well_known_digest()
    {
        Span<byte> digest = stackalloc byte[32];

        Sha256Digest.Hash([], digest);

        Assert.Equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", Convert.ToHexStringLower(digest));
    }

    [Fact]
    public void A_destination_shorter_than_a_digest_is_refused()
    {
        Assert.Throws<ArgumentException>(() => Sha256Digest.Hash("abc"u8, new byte[31]));
    }
}
