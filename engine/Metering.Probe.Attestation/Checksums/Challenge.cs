using System.Buffers.Binary;
using System.Security.Cryptography;

namespace Metering.Probe.Attestation.Checksums;

/// <summary>
/// Picks the leaves a probe must open, Fiat–Shamir style, from the nonce and the root it committed
/// to: seed = SHA-256("metering-probe/v1/challenge" || nonce || kind || items || iterations || root);
/// draw j is the first 8 bytes (big-endian) of SHA-256(seed || j as u32 big-endian) modulo the leaf
/// count, duplicates skipped, until <see cref="WorkShape.OpeningsPerKernel"/> distinct leaves are
/// drawn. A kernel with no more leaves than that opens them all, in ascending order. The probe
/// cannot choose its leaves: changing any leaf changes the root and with it every draw.
/// </summary>
internal static class Challenge
{
    /// <summary>Draws beyond this would mean a broken hash; it bounds the loop.</summary>
    private const int DrawsMax = 1 << 16;

    private static ReadOnlySpan<byte> Domain => "metering-probe/v1/challenge"u8;

    public static int[] Indices(ReadOnlySpan<byte> nonce, KernelKind kind, WorkSize size, ReadOnlySpan<byte> root)
    {
        if (nonce.Length != InputKey.NonceBytes || root.Length != MerkleTree.HashBytes)
        {
            throw new ArgumentException("A challenge needs a 32-byte nonce and a 32-byte root.");
        }

        int leafCount = size.Items;
        if (leafCount <= WorkShape.OpeningsPerKernel)
        {
            return Enumerable.Range(0, leafCount).ToArray();
        }

        Span<byte> seedInput = stackalloc byte[Domain.Length + InputKey.NonceBytes + 1 + 8 + MerkleTree.HashBytes];
        Domain.CopyTo(seedInput);
        int at = Domain.Length;
        nonce.CopyTo(seedInput[at..]);
        at += InputKey.NonceBytes;
        seedInput[at++] = (byte)kind;
        BinaryPrimitives.WriteInt32BigEndian(seedInput[at..], size.Items);
        BinaryPrimitives.WriteInt32BigEndian(seedInput[(at + 4)..], size.Iterations);
        root.CopyTo(seedInput[(at + 8)..]);

        Span<byte> drawInput = stackalloc byte[MerkleTree.HashBytes + 4];
        SHA256.HashData(seedInput, drawInput);
        Span<byte> draw = stackalloc byte[MerkleTree.HashBytes];
        var chosen = new List<int>(WorkShape.OpeningsPerKernel);
        for (int j = 0; chosen.Count < WorkShape.OpeningsPerKernel; j++)
        {
            if (j >= DrawsMax)
            {
                throw new InvalidOperationException("The challenge drew too many duplicate leaves.");
            }

            BinaryPrimitives.WriteInt32BigEndian(drawInput[MerkleTree.HashBytes..], j);
            SHA256.HashData(drawInput, draw);
            int index = (int)(BinaryPrimitives.ReadUInt64BigEndian(draw) % (ulong)leafCount);
            if (!chosen.Contains(index))
            {
                chosen.Add(index);
            }
        }

        return [.. chosen];
    }
}
