using System.Runtime.CompilerServices;
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
    /// copy and without a buffer of its own. Each level is written over the level below it,
    /// piece by piece: a piece's parents go to the front of the piece, and a pair that spans two
    /// pieces (through a copy of its 64 bytes) goes to the front of the later one, whose first
    /// leaf it consumed. A buffer the size of the leaves would be memory the process has never
    /// touched, and the kernel's zeroing of those pages cost about as much as the hashing
    /// (bench/RESULTS.md, issue 17). The pieces hold nothing useful afterwards.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static byte[] RootOverwriting(IEnumerable<ArraySegment<byte>> pieces, int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        var level = new List<ArraySegment<byte>>();
        int seen = 0;
        foreach (ArraySegment<byte> piece in pieces)
        {
            if (piece.Count % HashBytes != 0 || seen + (piece.Count / HashBytes) > count)
            {
                throw new ArgumentException($"A piece of {piece.Count} bytes after {seen} leaves does not hold whole leaf hashes within {count}.", nameof(pieces));
            }

            seen += piece.Count / HashBytes;
            if (piece.Count > 0)
            {
                level.Add(piece);
            }
        }

        if (seen != count)
        {
            throw new ArgumentException($"The pieces hold {seen} leaf hashes, not {count}.", nameof(pieces));
        }

        if (count == 0)
        {
            return SHA256.HashData(ReadOnlySpan<byte>.Empty);
        }

        Span<byte> pair = stackalloc byte[2 * HashBytes];
        for (int nodes = count; nodes > 1; nodes = (nodes + 1) / 2)
        {
            // The node left without a partner at the end of the last piece that held one.
            int carriedFrom = -1;
            for (int k = 0; k < level.Count; k++)
            {
                Span<byte> span = level[k];
                int held = span.Length / HashBytes;
                int start = 0;
                if (carriedFrom >= 0)
                {
                    span[..HashBytes].CopyTo(pair[HashBytes..]);
                    Sha256Lanes.HashNodes(pair, span[..HashBytes]);
                    start = 1;
                    carriedFrom = -1;
                }

                // Parent j of the pairs after `start` goes to slot start + j, never ahead of the children it reads.
                int pairs = (held - start) / 2;
                Sha256Lanes.HashNodes(span.Slice(start * HashBytes, pairs * 2 * HashBytes), span.Slice(start * HashBytes, pairs * HashBytes));
                if ((held - start) % 2 == 1)
                {
                    span.Slice((held - 1) * HashBytes, HashBytes).CopyTo(pair);
                    carriedFrom = k;
                }

                level[k] = level[k][..((start + pairs) * HashBytes)];
            }

            if (carriedFrom >= 0)
            {
                // The last node of the level: its piece gave up at least that slot to its own parents.
                ArraySegment<byte> last = level[carriedFrom];
                pair[..HashBytes].CopyTo(last.Array.AsSpan(last.Offset + last.Count, HashBytes));
                level[carriedFrom] = new ArraySegment<byte>(last.Array!, last.Offset, last.Count + HashBytes);
            }

            level.RemoveAll(piece => piece.Count == 0);
        }

        return level[0][..HashBytes].ToArray();
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
