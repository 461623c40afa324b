using System.Security.Cryptography;
using Metering.Engine.Audit;

namespace Metering.Engine.Tests.Audit;

/// <summary>
/// The SHA-256 of leaves and nodes on both of its paths: the eight lanes against the platform's
/// SHA-256 on random bytes, and both the lanes and the one-at-a-time path against digests computed
/// once with another SHA-256 (Python's hashlib), since the one-at-a-time path is the platform's own
/// wherever OpenSSL's low-level functions are off.
/// </summary>
public sealed class Sha256LanesTests
{
    public static TheoryData<bool> Paths => [true, false];

    /// <summary>
    /// The SHA-256 of the leaves of the first 0, 1, ..., 41 chain hashes, one count after the other,
    /// where byte k of the chain hashes is (k × 167 + 13) mod 256; computed with Python's hashlib.
    /// </summary>
    private const string LeavesOfEveryCountSha256 = "33bfe666c69539cc5166e0db92192852a26ed641ab3587a734c69cc6009cf070";

    /// <summary>The same for the parents of the first 0 to 41 pairs, byte k of the pairs being (k × 89 + 5) mod 256.</summary>
    private const string NodesOfEveryCountSha256 = "80ea2e89eb251b294bf39fd7432ef1af703132094518a9e73bf5608cf5e8b2b6";

    [Theory]
    [MemberData(nameof(Paths))]
    public void Leaf_hashes_of_every_batch_size_equal_the_digests_another_implementation_computed(bool lanes)
    {
        byte[] chainHashes = Pattern(41 * 32, 167, 13);
        var leavesOfEveryCount = new List<byte>();
        for (int count = 0; count <= 41; count++)
        {
            byte[] leaves = new byte[count * 32];
            Sha256Lanes.HashLeaves(chainHashes.AsSpan(0, count * 32), leaves, lanes);
            byte[] inPlace = chainHashes[..(count * 32)];
            Sha256Lanes.HashLeaves(inPlace, inPlace, lanes);

            Assert.Equal(leaves, inPlace);
            leavesOfEveryCount.AddRange(leaves);
        }

        Assert.Equal(LeavesOfEveryCountSha256, Convert.ToHexStringLower(SHA256.HashData([.. leavesOfEveryCount])));
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void Node_hashes_of_every_batch_size_equal_the_digests_another_implementation_computed(bool lanes)
    {
        byte[] pairs = Pattern(41 * 64, 89, 5);
        var nodesOfEveryCount = new List<byte>();
        for (int count = 0; count <= 41; count++)
        {
            byte[] parents = new byte[count * 32];
            Sha256Lanes.HashNodes(pairs.AsSpan(0, count * 64), parents, lanes);
            byte[] level = pairs[..(count * 64)];
            Sha256Lanes.HashNodes(level, level.AsSpan(0, count * 32), lanes);

            Assert.Equal(parents, level[..(count * 32)]);
            nodesOfEveryCount.AddRange(parents);
        }

        Assert.Equal(NodesOfEveryCountSha256, Convert.ToHexStringLower(SHA256.HashData([.. nodesOfEveryCount])));
    }

    [Fact]
    public void Leaf_hashes_of_the_lanes_equal_the_platform_sha256_of_the_prefixed_chain_hash_for_every_batch_size()
    {
        const bool lanes = true;
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

    [Fact]
    public void Node_hashes_of_the_lanes_equal_the_platform_sha256_of_the_prefixed_pair_also_written_over_their_own_level()
    {
        const bool lanes = true;
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

    private static byte[] Pattern(int length, int factor, int offset)
    {
        byte[] bytes = new byte[length];
        for (int k = 0; k < length; k++)
        {
            bytes[k] = (byte)(k * factor + offset);
        }

        return bytes;
    }
}
