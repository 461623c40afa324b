using System.Security.Cryptography;
using Metering.Engine.Audit;

namespace Metering.Engine.Tests.Audit;

/// <summary>The tree of proto/metering/v1/merkle-proofs.md, held to its worked example and its odd-node rule.</summary>
public sealed class MerkleTreeTests
{
    private const string H1 = "ed5a281d7ffcf6dc84590f833a9e50c1e3e6b3284188cdaf0bfdf441804382d1";
    private const string H2 = "521b9f3e84c94430fe1159deacb71122279e2e64282a5b2cf06ba10c18224ebd";
    private const string H3 = "785c4f6d7d7a152c889eba1e9b067565065aa7646f501aebdfd2099c3af873f3";
    private const string L1 = "f6c975b9b9ceb29b225966fce9e4aee7de32b394f3a3f2b4aa4963cf29b7c2f9";
    private const string L3 = "7cea4b407d3aeda1d5f0911a67cd982f7b3d30384ecb358d6ab0eecdb0e6aebc";
    private const string N12 = "32094ca0ce53ef8390a0d7fd08dcb7908390ea9f3cea27eec6bce243b9e2841c";
    private const string Root = "df801b59095301f259d5eb3dbf3780165aaa6c50a8a3e7ef6ce4967ed200ceb2";

    [Fact]
    public void The_worked_example_gives_the_documented_root_and_proof()
    {
        byte[] leaves = Leaves(H1, H2, H3);
        Assert.Equal(L1, Convert.ToHexStringLower(leaves.AsSpan(0, 32)));
        Assert.Equal(L3, Convert.ToHexStringLower(leaves.AsSpan(64, 32)));

        var steps = new List<ProofStep>();
        byte[] root = MerkleTree.Root(leaves, 1, steps);

        Assert.Equal(Root, Convert.ToHexStringLower(root));
        Assert.Equal([(ProofSide.Left, L1), (ProofSide.Right, L3)], steps.Select(s => (s.Side, Convert.ToHexStringLower(s.Sibling))));
    }

    [Fact]
    public void A_leaf_carried_up_past_a_level_has_no_step_there()
    {
        var steps = new List<ProofStep>();
        MerkleTree.Root(Leaves(H1, H2, H3), 2, steps);

        Assert.Equal([(ProofSide.Left, N12)], steps.Select(s => (s.Side, Convert.ToHexStringLower(s.Sibling))));
    }

    [Fact]
    public void No_leaves_give_the_hash_of_nothing_and_one_leaf_is_its_own_root()
    {
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData([])), Convert.ToHexStringLower(MerkleTree.Root([], -1, null)));
        Assert.Equal(L1, Convert.ToHexStringLower(MerkleTree.Root(Leaves(H1), 0, [])));
    }

    [Theory]
    [InlineData(2)]
    [InlineData(5)]
    [InlineData(8)]
    [InlineData(13)]
    [InlineData(100)]
    public void Every_leaf_folds_up_its_proof_to_the_root(int count)
    {
        var random = new Random(count);
        byte[][] chainHashes = Enumerable.Range(0, count).Select(_ => { var h = new byte[32]; random.NextBytes(h); return h; }).ToArray();
        byte[] expected = MerkleTree.Root(Leaves(chainHashes.Select(Convert.ToHexStringLower).ToArray()), -1, null);
        for (int index = 0; index < count; index++)
        {
            var steps = new List<ProofStep>();
            byte[] leaves = Leaves(chainHashes.Select(Convert.ToHexStringLower).ToArray());
            byte[] leaf = leaves.AsSpan(index * 32, 32).ToArray();
            Assert.Equal(expected, MerkleTree.Root(leaves, index, steps));
            Assert.Equal(expected, MerkleTree.Fold(leaf, steps));
        }
    }

    [Theory]
    [InlineData(7)]
    [InlineData(16)]
    [InlineData(17)]
    [InlineData(63)]
    [InlineData(1_000)]
    public void The_root_equals_the_leaves_folded_pairwise_with_plain_sha256(int count)
    {
        var random = new Random(count);
        List<byte[]> level = Enumerable.Range(0, count).Select(_ => { var h = new byte[32]; random.NextBytes(h); return SHA256.HashData([0x00, .. h]); }).ToList();
        byte[] leaves = level.SelectMany(l => l).ToArray();
        while (level.Count > 1)
        {
            level = Enumerable.Range(0, (level.Count + 1) / 2)
                .Select(i => 2 * i + 1 < level.Count ? SHA256.HashData([0x01, .. level[2 * i], .. level[2 * i + 1]]) : level[2 * i]).ToList();
        }

        Assert.Equal(level[0], MerkleTree.Root(leaves, -1, null));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(17)]
    [InlineData(40)]
    [InlineData(1_001)]
    public void The_root_of_leaves_held_in_pieces_is_the_root_of_the_leaves_in_one_buffer(int count)
    {
        // Settlement folds a provider's root straight from its streams' chunks, over the leaves
        // themselves; any cut of the same leaves (odd pieces, so that pairs span two; empty
        // pieces; pieces apart in memory and in any order there) must give the same root.
        var random = new Random(count);
        byte[] leaves = new byte[count * 32];
        random.NextBytes(leaves);
        byte[] expected = MerkleTree.Root(leaves.ToArray(), -1, null);
        for (int cut = 0; cut < 20; cut++)
        {
            var lengths = new List<int>();
            for (int at = 0; at < count; at += lengths[^1])
            {
                lengths.Add(Math.Min(count - at, random.Next(0, 6)));
            }

            // Each piece in a buffer of its own, with a leaf's worth of bytes on either side that must not change.
            var pieces = new List<ArraySegment<byte>>();
            var guards = new List<byte[]>();
            int taken = 0;
            foreach (int length in lengths)
            {
                byte[] buffer = new byte[(length + 2) * 32];
                random.NextBytes(buffer);
                leaves.AsSpan(taken * 32, length * 32).CopyTo(buffer.AsSpan(32));
                guards.Add([.. buffer.AsSpan(0, 32), .. buffer.AsSpan((length + 1) * 32)]);
                pieces.Add(new ArraySegment<byte>(buffer, 32, length * 32));
                taken += length;
            }

            Assert.Equal(expected, MerkleTree.RootOverwriting(pieces, count));
            for (int i = 0; i < pieces.Count; i++)
            {
                byte[] buffer = pieces[i].Array!;
                Assert.Equal(guards[i], (byte[])[.. buffer.AsSpan(0, 32), .. buffer.AsSpan(buffer.Length - 32)]);
            }
        }
    }

    [Theory]
    [InlineData(3, 2)]
    [InlineData(3, 4)]
    [InlineData(1, 2)]
    [InlineData(0, 1)]
    public void Pieces_that_do_not_hold_the_leaf_count_are_refused(int held, int count)
    {
        byte[] leaves = new byte[held * 32];

        Assert.Throws<ArgumentException>(() => MerkleTree.RootOverwriting([new ArraySegment<byte>(leaves)], count));
    }

    [Fact]
    public void A_piece_that_ends_inside_a_leaf_hash_is_refused()
    {
        byte[] leaves = new byte[3 * 32];

        Assert.Throws<ArgumentException>(() => MerkleTree.RootOverwriting([new ArraySegment<byte>(leaves, 0, 40), new ArraySegment<byte>(leaves, 40, 56)], 3));
    }

    [Fact]
    public void No_pieces_fold_to_the_root_of_no_leaves()
    {
        Assert.Equal(MerkleTree.Root([], -1, null), MerkleTree.RootOverwriting([], 0));
        Assert.Equal(MerkleTree.Root([], -1, null), MerkleTree.RootOverwriting([new ArraySegment<byte>([])], 0));
    }

    [Fact]
    public void Swapping_two_leaves_changes_the_root()
    {
        Assert.NotEqual(MerkleTree.Root(Leaves(H1, H2, H3), -1, null), MerkleTree.Root(Leaves(H2, H1, H3), -1, null));
    }

    private static byte[] Leaves(params string[] chainHashes)
    {
        var leaves = new byte[chainHashes.Length * 32];
        for (int i = 0; i < chainHashes.Length; i++)
        {
            MerkleTree.LeafHash(Convert.FromHexString(chainHashes[i]), leaves.AsSpan(i * 32, 32));
        }

        return leaves;
    }
}
