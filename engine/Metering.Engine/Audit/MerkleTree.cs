using System.Security.Cryptography;
using Metering.Engine.Ingest;
using NodeRule = Metering.Probe.Attestation.Checksums.MerkleTree;

namespace Metering.Engine.Audit;

/// <summary>Which side of the running hash a proof step's sibling stands on.</summary>
public enum ProofSide
{
    /// <summary>The sibling is the left input: node = SHA-256(0x01 || sibling || running).</summary>
    Left,

    /// <summary>The sibling is the right input: node = SHA-256(0x01 || running || sibling).</summary>
    Right,
}

/// <summary>One step of an inclusion proof, from the leaf towards the root.</summary>
public readonly record struct ProofStep(ProofSide Side, byte[] Sibling);

/// <summary>
/// The binary Merkle tree of proto/metering/v1/merkle-proofs.md, built over chain hashes:
///   leaf  = SHA-256(0x00 || chain hash)              (33 bytes in)
///   node  = SHA-256(0x01 || left || right)           (65 bytes in)
/// Levels pair nodes left to right; a last node without a partner is carried up unchanged (it
/// is never paired with itself, so two different leaf lists never share a root by duplication).
/// The root of no leaves is SHA-256 of nothing; the root of one leaf is that leaf's hash.
/// The prefixes keep a leaf from ever being read as a node and the other way round. The node rule
/// and the prefixes are the probe's (<see cref="NodeRule"/>), the same tree rule, implemented once;
/// <see cref="Sha256Lanes"/> hashes whole levels of nodes eight or sixteen at a time to the same results.
/// </summary>
internal static class MerkleTree
{
    public const int HashBytes = NodeRule.HashBytes;
    public const byte LeafPrefix = NodeRule.LeafPrefix;

    /// <summary>Most leaves one tree takes (512 MiB of hashes); a larger day is refused, not truncated.</summary>
    public const int LeavesMax = 16 * 1024 * 1024;

    /// <summary>SHA-256(0x00 || chain hash), through <see cref="Sha256Digest"/>: a day has millions of leaves, and .NET's own SHA-256 costs more per call than 33 bytes of hashing.</summary>
    public static void LeafHash(ReadOnlySpan<byte> chainHash, Span<byte> destination)
    {
        Span<byte> input = stackalloc byte[1 + HashBytes];
        input[0] = LeafPrefix;
        chainHash.CopyTo(input[1..]);
        Sha256Digest.Hash(input, destination);
    }

    /// <summary>
    /// The root over <paramref name="leaves"/> (leaf hashes, 32 bytes each, back to back), and the
    /// proof steps of leaf <paramref name="proveIndex"/> when it is not negative. The leaf buffer
    /// is overwritten level by level.
    /// </summary>
    public static byte[] Root(Span<byte> leaves, int proveIndex, List<ProofStep>? proof)
    {
        if (leaves.Length % HashBytes != 0)
        {
            throw new ArgumentException("Leaf hashes must be 32 bytes each.", nameof(leaves));
        }

        int count = leaves.Length / HashBytes;
        if (count == 0)
        {
            return SHA256.HashData(ReadOnlySpan<byte>.Empty);
        }

        int index = proveIndex;
        while (count > 1)
        {
            if (index >= 0 && proof is not null)
            {
                if ((index & 1) == 1)
                {
                    proof.Add(new ProofStep(ProofSide.Left, leaves.Slice((index - 1) * HashBytes, HashBytes).ToArray()));
                }
                else if (index + 1 < count)
                {
                    proof.Add(new ProofStep(ProofSide.Right, leaves.Slice((index + 1) * HashBytes, HashBytes).ToArray()));
                }

                index /= 2;
            }

            // Parent k goes to slot k, which is never ahead of the children 2k and 2k+1 it reads.
            int parents = count / 2;
            Sha256Lanes.HashNodes(leaves[..(parents * 2 * HashBytes)], leaves[..(parents * HashBytes)]);

            if ((count & 1) == 1)
            {
                leaves.Slice((count - 1) * HashBytes, HashBytes).CopyTo(leaves.Slice(parents * HashBytes, HashBytes));
                parents++;
            }

            count = parents;
        }

        return leaves[..HashBytes].ToArray();
    }

    /// <summary>
    /// The root over <paramref name="count"/> leaf hashes held in <paramref name="pieces"/>, one
    /// after the other (32 bytes each, a piece may end between two leaves, never inside one):
    /// the same root as <see cref="Root"/> over the leaves copied into one buffer, without that
    /// copy. The first level is hashed straight from the pieces into a buffer half the leaves'
    /// size (a pair that spans two pieces through a copy of its 64 bytes), which the rest of
    /// the fold then overwrites; the pieces are left as they are.
    /// </summary>
    public static byte[] Root(IEnumerable<ReadOnlyMemory<byte>> pieces, int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        if (count <= 1)
        {
            byte[] single = [.. pieces.SelectMany(piece => piece.ToArray())];
            return single.Length == count * HashBytes ? Root(single, -1, null) : throw new ArgumentException($"The pieces hold {single.Length} bytes, not {count} leaf hashes.", nameof(pieces));
        }

        byte[] parents = GC.AllocateUninitializedArray<byte>((count + 1) / 2 * HashBytes);
        Span<byte> pair = stackalloc byte[2 * HashBytes];
        int written = 0;
        int seen = 0;
        bool carried = false;
        foreach (ReadOnlyMemory<byte> piece in pieces)
        {
            ReadOnlySpan<byte> leaves = piece.Span;
            if (leaves.Length % HashBytes != 0 || seen + (leaves.Length / HashBytes) > count)
            {
                throw new ArgumentException($"A piece of {leaves.Length} bytes after {seen} leaves does not hold whole leaf hashes within {count}.", nameof(pieces));
            }

            seen += leaves.Length / HashBytes;
            if (carried && !leaves.IsEmpty)
            {
                leaves[..HashBytes].CopyTo(pair[HashBytes..]);
                Sha256Lanes.HashNodes(pair, parents.AsSpan(written * HashBytes, HashBytes));
                written++;
                leaves = leaves[HashBytes..];
                carried = false;
            }

            int pairs = leaves.Length / (2 * HashBytes);
            Sha256Lanes.HashNodes(leaves[..(pairs * 2 * HashBytes)], parents.AsSpan(written * HashBytes, pairs * HashBytes));
            written += pairs;
            if (leaves.Length > pairs * 2 * HashBytes)
            {
                leaves[^HashBytes..].CopyTo(pair);
                carried = true;
            }
        }

        if (seen != count)
        {
            throw new ArgumentException($"The pieces hold {seen} leaf hashes, not {count}.", nameof(pieces));
        }

        if (carried)
        {
            pair[..HashBytes].CopyTo(parents.AsSpan(written * HashBytes));
            written++;
        }

        return Root(parents.AsSpan(0, written * HashBytes), -1, null);
    }

    /// <summary>Folds a leaf hash up a proof; equal to the root when the leaf is in the tree at the proof's position.</summary>
    public static byte[] Fold(ReadOnlySpan<byte> leafHash, IEnumerable<ProofStep> steps)
    {
        byte[] running = leafHash.ToArray();
        foreach (ProofStep step in steps)
        {
            if (step.Side == ProofSide.Left)
            {
                NodeRule.NodeHash(step.Sibling, running, running);
            }
            else
            {
                NodeRule.NodeHash(running, step.Sibling, running);
            }
        }

        return running;
    }
}
