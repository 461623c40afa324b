using System.Security.Cryptography;
using Metering.Engine.Audit;

namespace Metering.Engine.Tests.Audit;

/// <summary>The eight-lane SHA-256 of leaves and nodes against the platform's SHA-256, on both of its paths.</summary>
public sealed class Sha256LanesTests
{
    public static TheoryData<bool> Paths => [true, false];

    [Theory]
    [MemberData(nameof(Paths))]
    public void Leaf_hashes_equal_the_platform_sha256_of_the_prefixed_chain_hash_for_every_batch_size(bool lanes)
    {
        var random = new Random(2026_1120);
        for (int count = 0; count <= 41; count++)
        {
            byte[] chainHashes = new byte[count * 32];
            random.NextBytes(chainHashes);
            byte[] expected = new byte[count * 32];
            for (int i = 0; i < count; i++)
            {
                SHA256.HashData([0x00, .. chainHashes.AsSpan(i * 32, 32)], expected.AsSpan(i * 32, 32));
            }

            byte[] leaves = new byte[count * 32];
            Sha256Lanes.HashLeaves(chainHashes, leaves, lanes);
            Sha256Lanes.HashLeaves(chainHashes, chainHashes, lanes);

            Assert.Equal(expected, leaves);
            Assert.Equal(expected, chainHashes);
        }
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void Node_hashes_equal_the_platform_sha256_of_the_prefixed_pair_also_written_over_their_own_level(bool lanes)
    {
        var random = new Random(2026_1121);
        for (int count = 0; count <= 41; count++)
        {
            byte[] pairs = new byte[count * 64];
            random.NextBytes(pairs);
            // Bytes that make a mistake in the straddled words visible: all ones and a lone high bit.
            if (count > 3)
            {
                pairs.AsSpan(64, 64).Fill(0xFF);
                pairs[3 * 64 + 63] = 0x80;
            }

            byte[] expected = new byte[count * 32];
            for (int i = 0; i < count; i++)
            {
                SHA256.HashData([0x01, .. pairs.AsSpan(i * 64, 64)], expected.AsSpan(i * 32, 32));
            }

            byte[] parents = new byte[count * 32];
            Sha256Lanes.HashNodes(pairs, parents, lanes);
            Sha256Lanes.HashNodes(pairs, pairs.AsSpan(0, count * 32), lanes);

            Assert.Equal(expected, parents);
            Assert.Equal(expected, pairs.AsSpan(0, count * 32).ToArray());
        }
    }
}
