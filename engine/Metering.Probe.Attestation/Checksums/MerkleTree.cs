using System.Buffers.Binary;
using System.Security.Cryptography;

namespace Metering.Probe.Attestation.Checksums;

/// <summary>
/// A binary SHA-256 Merkle tree over a kernel's leaves. Leaf hash:
/// SHA-256(0x00 || kind || index as u64 big-endian || payload); inner node:
/// SHA-256(0x01 || left || right). A level with an odd count promotes its last node unchanged, so a
/// path has one sibling per level where a sibling exists and the verifier knows which from the
/// index and the leaf count.
/// <para>
/// The inner node rule and the two domain prefixes are the ones of proto/metering/v1/merkle-proofs.md,
/// and this class is their one implementation: the engine's daily usage trees and its transparency
/// log hash their nodes through <see cref="NodeHash"/>.
/// </para>
/// </summary>
public sealed class MerkleTree
{
    public const int HashBytes = 32;

    /// <summary>The first byte hashed for a leaf, so that a leaf is never read as a node.</summary>
    public const byte LeafPrefix = 0x00;

    /// <summary>The first byte hashed for an inner node, so that a node is never read as a leaf.</summary>
    public const byte NodePrefix = 0x01;

    /// <summary>Leaves beyond this are refused: 2^24 leaves already need a 1 GiB tree.</summary>
    public const int LeavesMax = 1 << 24;

    private const int ParallelLevelNodesMin = 4096;

    private readonly byte[][] _levels;

    private MerkleTree(byte[][] levels, int leafCount)
    {
        _levels = levels;
        LeafCount = leafCount;
    }

    public int LeafCount { get; }

    public byte[] Root => _levels[^1][..HashBytes];

    public static void LeafHash(KernelKind kind, long index, ReadOnlySpan<byte> payload, Span<byte> hash)
    {
        int length = 1 + 1 + 8 + payload.Length;
        Span<byte> input = length <= 8192 ? stackalloc byte[length] : new byte[length];
        input[0] = LeafPrefix;
        input[1] = (byte)kind;
        BinaryPrimitives.WriteInt64BigEndian(input[2..], index);
        payload.CopyTo(input[10..]);
        SHA256.HashData(input, hash);
    }

    /// <summary>SHA-256(0x01 || left || right); <paramref name="hash"/> may overlap either input.</summary>
    public static void NodeHash(ReadOnlySpan<byte> left, ReadOnlySpan<byte> right, Span<byte> hash)
    {
        Span<byte> input = stackalloc byte[1 + (2 * HashBytes)];
        input[0] = NodePrefix;
        left.CopyTo(input[1..]);
        right.CopyTo(input[(1 + HashBytes)..]);
        SHA256.HashData(input, hash);
    }

    /// <summary>Builds the tree from the concatenated leaf hashes (32 bytes each, in index order).</summary>
    public static MerkleTree Build(byte[] leafHashes)
    {
        ArgumentNullException.ThrowIfNull(leafHashes);
        if (leafHashes.Length == 0 || leafHashes.Length % HashBytes != 0)
        {
            throw new ArgumentException("Leaf hashes must be a non-empty multiple of 32 bytes.", nameof(leafHashes));
        }

        int leafCount = leafHashes.Length / HashBytes;
        if (leafCount > LeavesMax)
        {
            throw new ArgumentException($"A tree holds at most {LeavesMax} leaves, not {leafCount}.", nameof(leafHashes));
        }

        var levels = new List<byte[]> { leafHashes };
        byte[] below = leafHashes;
        int count = leafCount;
        while (count > 1)
        {
            int parents = (count + 1) / 2;
            byte[] level = new byte[parents * HashBytes];
            byte[] children = below;
            int childCount = count;
            void Hash(int parent)
            {
                int left = 2 * parent;
                Span<byte> destination = level.AsSpan(parent * HashBytes, HashBytes);
                if (left + 1 < childCount)
                {
                    NodeHash(children.AsSpan(left * HashBytes, HashBytes), children.AsSpan((left + 1) * HashBytes, HashBytes), destination);
                }
                else
                {
                    children.AsSpan(left * HashBytes, HashBytes).CopyTo(destination);
                }
            }

            if (parents >= ParallelLevelNodesMin)
            {
                Parallel.For(0, parents, Hash);
            }
            else
            {
                for (int parent = 0; parent < parents; parent++)
                {
                    Hash(parent);
                }
            }

            levels.Add(level);
            below = level;
            count = parents;
        }

        return new MerkleTree([.. levels], leafCount);
    }

    /// <summary>The sibling hashes from the leaf up to the root, one per level that has a sibling.</summary>
    public IReadOnlyList<byte[]> Path(int index)
    {
        if ((uint)index >= (uint)LeafCount)
        {
            throw new ArgumentOutOfRangeException(nameof(index), index, "The leaf index is outside the tree.");
        }

        var path = new List<byte[]>();
        int count = LeafCount;
        for (int level = 0; count > 1; level++)
        {
            int sibling = index ^ 1;
            if (sibling < count)
            {
                path.Add(_levels[level].AsSpan(sibling * HashBytes, HashBytes).ToArray());
            }

            index >>= 1;
            count = (count + 1) / 2;
        }

        return path;
    }

    /// <summary>The number of siblings on the path of a leaf in a tree of <paramref name="leafCount"/> leaves.</summary>
    public static int PathLength(int index, int leafCount)
    {
        int length = 0;
        for (int count = leafCount; count > 1; count = (count + 1) / 2)
        {
            if ((index ^ 1) < count)
            {
                length++;
            }

            index >>= 1;
        }

        return length;
    }

    /// <summary>
    /// Folds a leaf hash up its path and writes the root it leads to. The caller checks the path
    /// length first with <see cref="PathLength"/>.
    /// </summary>
    public static void FoldPath(ReadOnlySpan<byte> leafHash, int index, int leafCount, IReadOnlyList<byte[]> path, Span<byte> root)
    {
        Span<byte> current = stackalloc byte[HashBytes];
        leafHash.CopyTo(current);
        int used = 0;
        for (int count = leafCount; count > 1; count = (count + 1) / 2)
        {
            if ((index ^ 1) < count)
            {
                byte[] sibling = path[used++];
                if ((index & 1) == 0)
                {
                    NodeHash(current, sibling, current);
                }
                else
                {
                    NodeHash(sibling, current, current);
                }
            }

            index >>= 1;
        }

        current.CopyTo(root);
    }
}
