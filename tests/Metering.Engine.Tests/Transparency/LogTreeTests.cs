using System.Security.Cryptography;
using Metering.Engine.Signing;
using Metering.Engine.Transparency;

namespace Metering.Engine.Tests.Transparency;

/// <summary>
/// The log's RFC 9162 tree and proofs against a plain recomputation written here from the RFC's
/// definitions, for every size up to 40 leaves and every pair of sizes; tampered proofs refused.
/// </summary>
public sealed class LogTreeTests
{
    private const int SizesMax = 40;

    private static readonly List<byte[]> Leaves = MakeLeaves(SizesMax);

    private static List<byte[]> MakeLeaves(int count)
    {
        var random = new Random(9162);
        return Enumerable.Range(0, count).Select(_ =>
        {
            var data = new byte[random.Next(1, 120)];
            random.NextBytes(data);
            return SHA256.HashData([0x00, .. data]);
        }).ToList();
    }

    // ------------------------------------------------------------------ the plain recomputation

    private static byte[] Node(byte[] left, byte[] right) => SHA256.HashData([0x01, .. left, .. right]);

    /// <summary>The root level by level: pair from the left, carry an odd last node up.</summary>
    private static byte[] PlainRoot(IEnumerable<byte[]> leaves)
    {
        List<byte[]> level = leaves.ToList();
        if (level.Count == 0)
        {
            return SHA256.HashData([]);
        }

        while (level.Count > 1)
        {
            level = level.Chunk(2).Select(pair => pair.Length == 2 ? Node(pair[0], pair[1]) : pair[0]).ToList();
        }

        return level[0];
    }

    /// <summary>The audit path level by level: at each level the sibling, when there is one.</summary>
    private static List<byte[]> PlainPath(List<byte[]> leaves, int index)
    {
        var path = new List<byte[]>();
        List<byte[]> level = leaves;
        while (level.Count > 1)
        {
            int sibling = index ^ 1;
            if (sibling < level.Count)
            {
                path.Add(level[sibling]);
            }

            level = level.Chunk(2).Select(pair => pair.Length == 2 ? Node(pair[0], pair[1]) : pair[0]).ToList();
            index /= 2;
        }

        return path;
    }

    private static int LargestPowerOfTwoBelow(int n)
    {
        int k = 1;
        while (k * 2 < n)
        {
            k *= 2;
        }

        return k;
    }

    /// <summary>SUBPROOF of RFC 9162 §2.1.4.1, word for word over list slices.</summary>
    private static List<byte[]> PlainSubProof(int m, List<byte[]> d, bool b)
    {
        int n = d.Count;
        if (m == n)
        {
            return b ? [] : [PlainRoot(d)];
        }

        int k = LargestPowerOfTwoBelow(n);
        return m <= k
            ? [.. PlainSubProof(m, d[..k], b), PlainRoot(d[k..])]
            : [.. PlainSubProof(m - k, d[k..], false), PlainRoot(d[..k])];
    }

    // ------------------------------------------------------------------ the tests

    [Fact]
    public void Every_size_up_to_40_has_the_root_of_the_plain_recomputation()
    {
        Assert.Equal(SHA256.HashData([]), LogTree.Root(Leaves, 0));
        for (int n = 1; n <= SizesMax; n++)
        {
            Assert.Equal(PlainRoot(Leaves.Take(n)), LogTree.Root(Leaves, n));
        }
    }

    [Fact]
    public void Every_leaf_of_every_size_up_to_40_has_the_plain_path_which_verifies_and_nothing_tampered_does()
    {
        for (int n = 1; n <= SizesMax; n++)
        {
            List<byte[]> tree = Leaves.Take(n).ToList();
            byte[] root = PlainRoot(tree);
            for (int m = 0; m < n; m++)
            {
                List<byte[]> path = LogTree.InclusionPath(Leaves, m, n);

                Assert.Equal(PlainPath(tree, m), path);
                Assert.True(LogTree.VerifyInclusion(m, n, Leaves[m], path, root), $"leaf {m} of {n}");
                for (int i = 0; i < path.Count; i++)
                {
                    List<byte[]> tampered = path.Select(h => h.ToArray()).ToList();
                    tampered[i][i % 32] ^= 0x01;
                    Assert.False(LogTree.VerifyInclusion(m, n, Leaves[m], tampered, root), $"leaf {m} of {n}, step {i} changed");
                }

                Assert.False(LogTree.VerifyInclusion(m, n, Leaves[(m + 1) % SizesMax], path, root), $"another leaf as leaf {m} of {n}");
                Assert.False(LogTree.VerifyInclusion(m, n, Leaves[m], [.. path, root], root), $"leaf {m} of {n} with a step too many");
                if (path.Count > 0)
                {
                    Assert.False(LogTree.VerifyInclusion(m, n, Leaves[m], path[..^1], root), $"leaf {m} of {n} with a step missing");
                    Assert.False(LogTree.VerifyInclusion(m ^ 1, n, Leaves[m], path, root), $"leaf {m} of {n} claimed at {m ^ 1}");
                }
            }
        }
    }

    [Fact]
    public void Every_pair_of_sizes_up_to_40_has_the_rfc_consistency_proof_which_verifies_and_nothing_tampered_does()
    {
        for (int n = 1; n <= SizesMax; n++)
        {
            byte[] secondRoot = PlainRoot(Leaves.Take(n));
            for (int m = 1; m <= n; m++)
            {
                byte[] firstRoot = PlainRoot(Leaves.Take(m));
                List<byte[]> proof = LogTree.ConsistencyProof(Leaves, m, n);

                Assert.Equal(PlainSubProof(m, Leaves.Take(n).ToList(), true), proof);
                Assert.True(LogTree.VerifyConsistency(m, n, firstRoot, secondRoot, proof), $"{m} to {n}");
                if (m == n)
                {
                    Assert.Empty(proof);
                    Assert.False(LogTree.VerifyConsistency(m, n, firstRoot, SHA256.HashData(secondRoot), proof), $"{m} to {n} with another root");
                    continue;
                }

                for (int i = 0; i < proof.Count; i++)
                {
                    List<byte[]> tampered = proof.Select(h => h.ToArray()).ToList();
                    tampered[i][31 - i % 32] ^= 0x80;
                    Assert.False(LogTree.VerifyConsistency(m, n, firstRoot, secondRoot, tampered), $"{m} to {n}, hash {i} changed");
                }

                Assert.False(LogTree.VerifyConsistency(m, n, firstRoot, secondRoot, proof[..^1]), $"{m} to {n} with a hash missing");
                Assert.False(LogTree.VerifyConsistency(m, n, firstRoot, secondRoot, [.. proof, secondRoot]), $"{m} to {n} with a hash too many");
                Assert.False(LogTree.VerifyConsistency(m, n, secondRoot, firstRoot, proof), $"{m} to {n} with the roots swapped");
                Assert.False(LogTree.VerifyConsistency(n, m, firstRoot, secondRoot, proof), $"{m} to {n} with the sizes swapped");

                // A log whose leaf m-1 was rewritten: its tree of n has a different root, and the
                // proof the rewritten log gives does not lead there from the saved first root.
                List<byte[]> rewritten = [.. Leaves];
                rewritten[m - 1] = SHA256.HashData(rewritten[m - 1]);
                Assert.False(LogTree.VerifyConsistency(m, n, firstRoot, PlainRoot(rewritten.Take(n)), LogTree.ConsistencyProof(rewritten, m, n)),
                    $"{m} to {n} over a log rewritten at leaf {m - 1}");
            }
        }
    }

    [Fact]
    public void Sizes_out_of_order_or_past_the_leaves_are_refused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => LogTree.ConsistencyProof(Leaves, 0, 3));
        Assert.Throws<ArgumentOutOfRangeException>(() => LogTree.ConsistencyProof(Leaves, 4, 3));
        Assert.Throws<ArgumentOutOfRangeException>(() => LogTree.ConsistencyProof(Leaves, 1, SizesMax + 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => LogTree.InclusionPath(Leaves, 3, 3));
        Assert.False(LogTree.VerifyConsistency(0, 3, LogTree.EmptyRoot(), LogTree.Root(Leaves, 3), []));
        Assert.False(LogTree.VerifyInclusion(3, 3, Leaves[3], LogTree.InclusionPath(Leaves, 2, 3), LogTree.Root(Leaves, 3)));
    }

    [Fact]
    public void A_saved_head_round_trips_through_json_and_an_edited_one_fails_its_signature()
    {
        using ServerSigningKey key = ServerSigningKey.CreateNew();
        SignedTreeHead head = SignedTreeHead.Sign(key, 7, LogTree.Root(Leaves, 7), 1_765_000_000_000);

        SignedTreeHead read = SignedTreeHead.FromJson(head.ToJson());
        SignedTreeHead edited = SignedTreeHead.FromJson(head.ToJson().Replace(head.RootHex, Convert.ToHexStringLower(LogTree.Root(Leaves, 6)), StringComparison.Ordinal));
        using ServerSigningKey other = ServerSigningKey.CreateNew();

        Assert.Equal((head.TreeSize, head.RootHex, head.TimestampUnixMs, head.KeyId, Convert.ToHexStringLower(head.Signature)), (read.TreeSize, read.RootHex, read.TimestampUnixMs, read.KeyId, Convert.ToHexStringLower(read.Signature)));
        Assert.Null(read.SignatureProblem(key.PublicKey));
        Assert.Contains("signature does not verify", edited.SignatureProblem(key.PublicKey), StringComparison.Ordinal);
        Assert.Contains($"not the published key {other.KeyId}", read.SignatureProblem(other.PublicKey), StringComparison.Ordinal);
        Assert.Throws<FormatException>(() => SignedTreeHead.FromJson("{\"format\":\"something else\"}"));
        Assert.Throws<FormatException>(() => SignedTreeHead.FromJson("not json"));
    }

    [Fact]
    public void The_log_check_names_the_first_difference_in_the_documented_order()
    {
        using ServerSigningKey key = ServerSigningKey.CreateNew();
        SignedTreeHead Head(int size, IReadOnlyList<byte[]> leaves) => SignedTreeHead.Sign(key, size, LogTree.Root(leaves, size), 1_765_000_000_000 + size);
        SignedTreeHead saved = Head(5, Leaves);
        SignedTreeHead current = Head(9, Leaves);
        List<byte[]> rewritten = [.. Leaves];
        rewritten[2] = SHA256.HashData(rewritten[2]);
        SignedTreeHead overRewrite = Head(9, rewritten);
        SignedTreeHead forged = saved with { Root = LogTree.Root(rewritten, 5) };

        Assert.Null(LogCheck.Extends(saved, current, LogTree.ConsistencyProof(Leaves, 5, 9), key.PublicKey));
        Assert.Null(LogCheck.Extends(saved, saved, [], key.PublicKey));
        Assert.Contains("does not extend the saved head (size 5", LogCheck.Extends(saved, overRewrite, LogTree.ConsistencyProof(rewritten, 5, 9), key.PublicKey), StringComparison.Ordinal);
        Assert.Contains("the log shrank: the saved head has 9 leaves, the current head 5", LogCheck.Extends(current, saved, [], key.PublicKey), StringComparison.Ordinal);
        Assert.Contains("the log of size 5 changed", LogCheck.Extends(saved, Head(5, rewritten), [], key.PublicKey), StringComparison.Ordinal);
        Assert.Contains("the saved tree head (size 5) is not signed", LogCheck.Extends(forged, current, LogTree.ConsistencyProof(Leaves, 5, 9), key.PublicKey), StringComparison.Ordinal);
        Assert.Contains("current tree head (size 5) is not signed", LogCheck.Extends(current, forged, [], key.PublicKey), StringComparison.Ordinal);
    }
}
