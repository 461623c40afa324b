using System.Numerics;
using System.Security.Cryptography;
using NodeRule = Metering.Probe.Attestation.Checksums.MerkleTree;

namespace Metering.Engine.Transparency;

/// <summary>
/// The Merkle tree of the transparency log, as RFC 9162 (Certificate Transparency version 2.0),
/// §2.1, defines it: MTH over a list of leaves, with the leaf prefix 0x00 and the node prefix 0x01,
/// the list split at the largest power of two smaller than its length; inclusion proofs (PATH,
/// §2.1.3) and consistency proofs (PROOF and SUBPROOF, §2.1.4), and the verification algorithms
/// of §2.1.3.2 and §2.1.4.2. A log that only ever appends keeps every earlier tree head's root
/// reachable from every later one; a consistency proof shows it with a logarithmic number of
/// hashes. See proto/metering/v1/transparency-log.md.
/// </summary>
internal static class LogTree
{
    public const int HashBytes = NodeRule.HashBytes;

    /// <summary>MTH of the empty list: SHA-256 of no bytes.</summary>
    public static byte[] EmptyRoot() => SHA256.HashData(ReadOnlySpan<byte>.Empty);

    /// <summary>SHA-256(0x00 || leaf bytes): the hash of one leaf's canonical encoding.</summary>
    public static byte[] LeafHash(ReadOnlySpan<byte> leaf)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData([NodeRule.LeafPrefix]);
        hash.AppendData(leaf);
        return hash.GetHashAndReset();
    }

    /// <summary>SHA-256(0x01 || left || right).</summary>
    public static byte[] NodeHash(ReadOnlySpan<byte> left, ReadOnlySpan<byte> right)
    {
        var node = new byte[HashBytes];
        NodeRule.NodeHash(left, right, node);
        return node;
    }

    /// <summary>The root of the first <paramref name="size"/> leaves (MTH(D[0:size])).</summary>
    public static byte[] Root(IReadOnlyList<byte[]> leafHashes, long size)
    {
        CheckSize(leafHashes, size);
        return size == 0 ? EmptyRoot() : Mth(leafHashes, 0, (int)size);
    }

    /// <summary>PATH(index, D[0:size]): the audit path of leaf <paramref name="index"/> in the tree of the first <paramref name="size"/> leaves, leaf end first.</summary>
    public static List<byte[]> InclusionPath(IReadOnlyList<byte[]> leafHashes, long index, long size)
    {
        CheckSize(leafHashes, size);
        if (index < 0 || index >= size)
        {
            throw new ArgumentOutOfRangeException(nameof(index), $"leaf {index} is not in a tree of {size} leaves");
        }

        var path = new List<byte[]>();
        Path((int)index, leafHashes, 0, (int)size, path);
        return path;
    }

    /// <summary>PROOF(first, D[0:second]): the consistency proof between the trees of the first <paramref name="first"/> and the first <paramref name="second"/> leaves.</summary>
    public static List<byte[]> ConsistencyProof(IReadOnlyList<byte[]> leafHashes, long first, long second)
    {
        CheckSize(leafHashes, second);
        if (first <= 0 || first > second)
        {
            throw new ArgumentOutOfRangeException(nameof(first), $"a consistency proof needs 0 < first ≤ second; got {first} and {second}");
        }

        var proof = new List<byte[]>();
        SubProof((int)first, leafHashes, 0, (int)second, true, proof);
        return proof;
    }

    /// <summary>RFC 9162 §2.1.3.2: whether <paramref name="path"/> proves leaf <paramref name="index"/>, hashing to <paramref name="leafHash"/>, in the tree of <paramref name="size"/> leaves with <paramref name="root"/>.</summary>
    public static bool VerifyInclusion(long index, long size, ReadOnlySpan<byte> leafHash, IReadOnlyList<byte[]> path, ReadOnlySpan<byte> root)
    {
        if (index < 0 || index >= size || leafHash.Length != HashBytes || root.Length != HashBytes)
        {
            return false;
        }

        ulong fn = (ulong)index;
        ulong sn = (ulong)size - 1;
        byte[] r = leafHash.ToArray();
        foreach (byte[] p in path)
        {
            if (sn == 0 || p.Length != HashBytes)
            {
                return false;
            }

            if ((fn & 1) == 1 || fn == sn)
            {
                r = NodeHash(p, r);
                while ((fn & 1) == 0 && fn != 0)
                {
                    fn >>= 1;
                    sn >>= 1;
                }
            }
            else
            {
                r = NodeHash(r, p);
            }

            fn >>= 1;
            sn >>= 1;
        }

        return sn == 0 && r.AsSpan().SequenceEqual(root);
    }

    /// <summary>
    /// RFC 9162 §2.1.4.2: whether <paramref name="proof"/> shows that the tree of
    /// <paramref name="second"/> leaves with <paramref name="secondRoot"/> extends the tree of
    /// <paramref name="first"/> leaves with <paramref name="firstRoot"/>. Two trees of one size are
    /// consistent only with an empty proof and equal roots.
    /// </summary>
    public static bool VerifyConsistency(long first, long second, ReadOnlySpan<byte> firstRoot, ReadOnlySpan<byte> secondRoot, IReadOnlyList<byte[]> proof)
    {
        if (first <= 0 || first > second || firstRoot.Length != HashBytes || secondRoot.Length != HashBytes || proof.Any(p => p.Length != HashBytes))
        {
            return false;
        }

        if (first == second)
        {
            return proof.Count == 0 && firstRoot.SequenceEqual(secondRoot);
        }

        if (proof.Count == 0)
        {
            return false;
        }

        var path = new List<byte[]>(proof.Count + 1);
        if (BitOperations.IsPow2((ulong)first))
        {
            path.Add(firstRoot.ToArray());
        }

        path.AddRange(proof);
        ulong fn = (ulong)first - 1;
        ulong sn = (ulong)second - 1;
        while ((fn & 1) == 1)
        {
            fn >>= 1;
            sn >>= 1;
        }

        byte[] fr = path[0];
        byte[] sr = path[0];
        foreach (byte[] c in path.Skip(1))
        {
            if (sn == 0)
            {
                return false;
            }

            if ((fn & 1) == 1 || fn == sn)
            {
                fr = NodeHash(c, fr);
                sr = NodeHash(c, sr);
                while ((fn & 1) == 0 && fn != 0)
                {
                    fn >>= 1;
                    sn >>= 1;
                }
            }
            else
            {
                sr = NodeHash(sr, c);
            }

            fn >>= 1;
            sn >>= 1;
        }

        return sn == 0 && fr.AsSpan().SequenceEqual(firstRoot) && sr.AsSpan().SequenceEqual(secondRoot);
    }

    /// <summary>The largest power of two smaller than <paramref name="n"/> (n ≥ 2).</summary>
    private static int Split(int n) => (int)BitOperations.RoundUpToPowerOf2((uint)n) >> 1;

    private static byte[] Mth(IReadOnlyList<byte[]> leaves, int start, int count)
    {
        if (count == 1)
        {
            return leaves[start];
        }

        int k = Split(count);
        return NodeHash(Mth(leaves, start, k), Mth(leaves, start + k, count - k));
    }

    private static void Path(int m, IReadOnlyList<byte[]> leaves, int start, int count, List<byte[]> path)
    {
        if (count == 1)
        {
            return;
        }

        int k = Split(count);
        if (m < k)
        {
            Path(m, leaves, start, k, path);
            path.Add(Mth(leaves, start + k, count - k));
        }
        else
        {
            Path(m - k, leaves, start + k, count - k, path);
            path.Add(Mth(leaves, start, k));
        }
    }

    private static void SubProof(int m, IReadOnlyList<byte[]> leaves, int start, int count, bool whole, List<byte[]> proof)
    {
        if (m == count)
        {
            if (!whole)
            {
                proof.Add(Mth(leaves, start, count));
            }

            return;
        }

        int k = Split(count);
        if (m <= k)
        {
            SubProof(m, leaves, start, k, whole, proof);
            proof.Add(Mth(leaves, start + k, count - k));
        }
        else
        {
            SubProof(m - k, leaves, start + k, count - k, false, proof);
            proof.Add(Mth(leaves, start, k));
        }
    }

    private static void CheckSize(IReadOnlyList<byte[]> leafHashes, long size)
    {
        if (size < 0 || size > leafHashes.Count)
        {
            throw new ArgumentOutOfRangeException(nameof(size), $"a tree of {size} leaves from a log of {leafHashes.Count}");
        }
    }
}
