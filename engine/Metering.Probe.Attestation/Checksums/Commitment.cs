using Metering.Probe.Attestation.Results;

namespace Metering.Probe.Attestation.Checksums;

/// <summary>Writes the payload of leaf <paramref name="index"/> into <paramref name="payload"/>.</summary>
public delegate void LeafPayloadWriter(int index, Span<byte> payload);

/// <summary>The probe's side of the check: hashes every leaf, builds the tree and opens the leaves the challenge draws.</summary>
public static class Commitment
{
    /// <summary>Hashes all leaves, in parallel, into one array of 32-byte hashes in index order.</summary>
    public static byte[] HashLeaves(KernelKind kind, int leafCount, LeafPayloadWriter writePayload)
    {
        ArgumentNullException.ThrowIfNull(writePayload);
        if (leafCount < 1 || leafCount > MerkleTree.LeavesMax)
        {
            throw new ArgumentOutOfRangeException(nameof(leafCount), leafCount, $"A commitment has 1 to {MerkleTree.LeavesMax} leaves.");
        }

        int payloadBytes = WorkShape.LeafPayloadBytes(kind);
        byte[] hashes = new byte[leafCount * MerkleTree.HashBytes];
        Parallel.For(0, leafCount, () => new byte[payloadBytes], (index, _, payload) =>
        {
            writePayload(index, payload);
            MerkleTree.LeafHash(kind, index, payload, hashes.AsSpan(index * MerkleTree.HashBytes, MerkleTree.HashBytes));
            return payload;
        }, _ => { });
        return hashes;
    }

    /// <summary>Builds the tree over the leaf hashes and opens the challenged leaves.</summary>
    public static KernelChecksum FromLeafHashes(ReadOnlySpan<byte> nonce, KernelKind kind, WorkSize size, byte[] leafHashes)
    {
        ArgumentNullException.ThrowIfNull(leafHashes);
        if (leafHashes.Length != size.Items * MerkleTree.HashBytes)
        {
            throw new ArgumentException($"Expected {size.Items} leaf hashes.", nameof(leafHashes));
        }

        MerkleTree tree = MerkleTree.Build(leafHashes);
        byte[] root = tree.Root;
        int[] indices = Challenge.Indices(nonce, kind, size, root);
        var openings = new LeafOpening[indices.Length];
        for (int i = 0; i < indices.Length; i++)
        {
            openings[i] = new LeafOpening
            {
                Index = indices[i],
                LeafHash = leafHashes.AsSpan(indices[i] * MerkleTree.HashBytes, MerkleTree.HashBytes).ToArray(),
                Path = tree.Path(indices[i]),
            };
        }

        return new KernelChecksum { LeafCount = size.Items, Root = root, Openings = openings };
    }
}
