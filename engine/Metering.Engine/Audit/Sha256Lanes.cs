using System.Buffers.Binary;
using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using NodeRule = Metering.Probe.Attestation.Checksums.MerkleTree;

namespace Metering.Engine.Audit;

/// <summary>
/// SHA-256 (FIPS 180-4) of the Merkle tree's leaves and nodes, eight at a time: eight messages
/// side by side, one in each 32-bit lane of a 256-bit vector, so that every instruction of the
/// compression serves eight hashes. A day of ten million records is ten million 33-byte leaves
/// and as many 65-byte nodes; through the platform's SHA-256 each is an OpenSSL call that costs
/// several times the compression it does, which made hashing the largest part of settling a day.
/// Where the processor has AVX-512, whole batches of sixteen go through the sixteen-lane path
/// first (Sha256Lanes.Wide.cs), and the eight lanes take what is left.
/// <para>
/// Only the two message shapes of merkle-proofs.md are hashed here, so their padding is written
/// out rather than computed. Where the vector unit is emulated (<see cref="IsAccelerated"/> is
/// false), and for the last few messages of a batch, the platform's SHA-256 does the work; the
/// tests hold both to the same results.
/// </para>
/// <para>
/// The hashing loops are compiled fully optimised at their first call
/// (<see cref="MethodImplOptions.AggressiveOptimization"/>), as are the other loops a settlement
/// runs once per record: the server runs with tiered compilation, whose first tier would take a
/// run's first millions of records through unoptimised code and then compile them again. In a
/// cold process with tiered compilation, 10,000,000 records through the day's totals and leaves
/// cost 2.4–2.7 s of CPU with the attribute and 2.9–4.2 s without (bench/RESULTS.md, issue 17).
/// </para>
/// </summary>
internal static partial class Sha256Lanes
{
    public const int Lanes = 8;

    private const int HashBytes = MerkleTree.HashBytes;

    /// <summary>Whether the eight-lane path runs on real vector instructions.</summary>
    public static bool IsAccelerated => Vector256.IsHardwareAccelerated;

    // FIPS 180-4 §4.2.2: the first 32 bits of the fractional parts of the cube roots of the
    // first 64 primes.
    private static readonly uint[] RoundConstants =
    [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ];

    // FIPS 180-4 §5.3.3: the first 32 bits of the fractional parts of the square roots of the
    // first 8 primes.
    private static readonly uint[] InitialHash = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

    /// <summary>Message lengths in bits, the last word of the final padded block.</summary>
    private const uint LeafMessageBits = (1 + HashBytes) * 8;

    private const uint NodeMessageBits = (1 + 2 * HashBytes) * 8;

    /// <summary>
    /// Leaf hashes SHA-256(0x00 || h) of consecutive 32-byte inputs into consecutive 32-byte
    /// outputs. The two spans may be the same memory; each batch is read before it is written.
    /// </summary>
    /// <param name="lanes">Whether to hash eight at a time; by default where that is accelerated. Tests force it.</param>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void HashLeaves(ReadOnlySpan<byte> chainHashes, Span<byte> leaves, bool? lanes = null)
    {
        Debug.Assert(chainHashes.Length % HashBytes == 0 && leaves.Length == chainHashes.Length);
        int count = chainHashes.Length / HashBytes;
        int done = 0;
        if (lanes ?? IsAccelerated)
        {
            done = IsWide ? HashLeavesWide(chainHashes, leaves, count) : 0;
            Span<uint> words = stackalloc uint[Lanes * 8];
            Span<Vector256<uint>> block = stackalloc Vector256<uint>[16];
            Span<Vector256<uint>> state = stackalloc Vector256<uint>[8];
            for (; done + Lanes <= count; done += Lanes)
            {
                // Word i of lane j at words[i * 8 + j]: the eight inputs, transposed.
                Transpose(chainHashes.Slice(done * HashBytes, Lanes * HashBytes), 8, words);
                // 0x00 || h || 0x80 || zeros || length: each word straddles two of h's.
                Vector256<uint> previous = Vector256<uint>.Zero;
                for (int t = 0; t < 8; t++)
                {
                    Vector256<uint> word = Load(words, t);
                    block[t] = Vector256.ShiftLeft(previous, 24) | Vector256.ShiftRightLogical(word, 8);
                    previous = word;
                }

                block[8] = Vector256.ShiftLeft(previous, 24) | Vector256.Create(0x0080_0000u);
                for (int t = 9; t < 15; t++)
                {
                    block[t] = Vector256<uint>.Zero;
                }

                block[15] = Vector256.Create(LeafMessageBits);
                Initialise(state);
                Compress(state, block);
                Store(state, leaves.Slice(done * HashBytes, Lanes * HashBytes));
            }
        }

        if (done < count)
        {
            for (; done < count; done++)
            {
                MerkleTree.LeafHash(chainHashes.Slice(done * HashBytes, HashBytes), leaves.Slice(done * HashBytes, HashBytes));
            }
        }
    }

    /// <summary>
    /// Node hashes SHA-256(0x01 || left || right) of consecutive 64-byte pairs into consecutive
    /// 32-byte parents. The parents may overlap the pairs as a tree level does, parent k where
    /// pair k began or before: each batch is read before it is written, and never past a later
    /// batch's pairs.
    /// </summary>
    /// <param name="lanes">Whether to hash eight at a time; by default where that is accelerated. Tests force it.</param>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void HashNodes(ReadOnlySpan<byte> pairs, Span<byte> parents, bool? lanes = null)
    {
        Debug.Assert(pairs.Length % (2 * HashBytes) == 0 && parents.Length * 2 == pairs.Length);
        int count = pairs.Length / (2 * HashBytes);
        int done = 0;
        if (lanes ?? IsAccelerated)
        {
            done = IsWide ? HashNodesWide(pairs, parents, count) : 0;
            Span<uint> words = stackalloc uint[Lanes * 16];
            Span<Vector256<uint>> block = stackalloc Vector256<uint>[16];
            Span<Vector256<uint>> state = stackalloc Vector256<uint>[8];
            for (; done + Lanes <= count; done += Lanes)
            {
                Transpose(pairs.Slice(done * 2 * HashBytes, Lanes * 2 * HashBytes), 16, words);
                // First block: 0x01 || left || the first 31 bytes of right.
                Vector256<uint> previous = Vector256.Create(0x01u);
                for (int t = 0; t < 16; t++)
                {
                    Vector256<uint> word = Load(words, t);
                    block[t] = Vector256.ShiftLeft(previous, 24) | Vector256.ShiftRightLogical(word, 8);
                    previous = word;
                }

                Initialise(state);
                Compress(state, block);
                // Second block: the last byte of right || 0x80 || zeros || length.
                block[0] = Vector256.ShiftLeft(previous, 24) | Vector256.Create(0x0080_0000u);
                for (int t = 1; t < 15; t++)
                {
                    block[t] = Vector256<uint>.Zero;
                }

                block[15] = Vector256.Create(NodeMessageBits);
                Compress(state, block);
                Store(state, parents.Slice(done * HashBytes, Lanes * HashBytes));
            }
        }

        if (done < count)
        {
            for (; done < count; done++)
            {
                ReadOnlySpan<byte> pair = pairs.Slice(done * 2 * HashBytes, 2 * HashBytes);
                NodeRule.NodeHash(pair[..HashBytes], pair[HashBytes..], parents.Slice(done * HashBytes, HashBytes));
            }
        }
    }

    /// <summary>Reads eight messages of <paramref name="wordsPerLane"/> big-endian words into word-major order, lane j of word i at i * 8 + j.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Transpose(ReadOnlySpan<byte> messages, int wordsPerLane, Span<uint> words)
    {
        for (int lane = 0; lane < Lanes; lane++)
        {
            ReadOnlySpan<byte> message = messages.Slice(lane * wordsPerLane * 4, wordsPerLane * 4);
            for (int i = 0; i < wordsPerLane; i++)
            {
                words[i * Lanes + lane] = BinaryPrimitives.ReadUInt32BigEndian(message[(i * 4)..]);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> Load(Span<uint> words, int index) => Vector256.Create<uint>(words.Slice(index * Lanes, Lanes));

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Initialise(Span<Vector256<uint>> state)
    {
        for (int i = 0; i < 8; i++)
        {
            state[i] = Vector256.Create(InitialHash[i]);
        }
    }

    /// <summary>Writes each lane's eight state words, big-endian, as that lane's 32-byte digest.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Store(Span<Vector256<uint>> state, Span<byte> digests)
    {
        for (int i = 0; i < 8; i++)
        {
            Vector256<uint> word = state[i];
            for (int lane = 0; lane < Lanes; lane++)
            {
                BinaryPrimitives.WriteUInt32BigEndian(digests[(lane * HashBytes + i * 4)..], word.GetElement(lane));
            }
        }
    }

    /// <summary>The compression function (FIPS 180-4 §6.2.2) on one 16-word block per lane; the block's words are overwritten by the schedule.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Compress(Span<Vector256<uint>> state, Span<Vector256<uint>> w)
    {
        Vector256<uint> a = state[0], b = state[1], c = state[2], d = state[3], e = state[4], f = state[5], g = state[6], h = state[7];
        uint[] k = RoundConstants;
        for (int t = 0; t < 64; t++)
        {
            Vector256<uint> word;
            if (t < 16)
            {
                word = w[t];
            }
            else
            {
                // W[t] = σ1(W[t−2]) + W[t−7] + σ0(W[t−15]) + W[t−16], kept in a ring of sixteen.
                Vector256<uint> w2 = w[(t - 2) & 15];
                Vector256<uint> w15 = w[(t - 15) & 15];
                Vector256<uint> sigma1 = Rotr(w2, 17) ^ Rotr(w2, 19) ^ Vector256.ShiftRightLogical(w2, 10);
                Vector256<uint> sigma0 = Rotr(w15, 7) ^ Rotr(w15, 18) ^ Vector256.ShiftRightLogical(w15, 3);
                word = sigma1 + w[(t - 7) & 15] + sigma0 + w[t & 15];
                w[t & 15] = word;
            }

            Vector256<uint> bigSigma1 = Rotr(e, 6) ^ Rotr(e, 11) ^ Rotr(e, 25);
            Vector256<uint> choose = ((f ^ g) & e) ^ g;
            Vector256<uint> t1 = h + bigSigma1 + choose + Vector256.Create(k[t]) + word;
            Vector256<uint> bigSigma0 = Rotr(a, 2) ^ Rotr(a, 13) ^ Rotr(a, 22);
            Vector256<uint> majority = (a & b) | (c & (a | b));
            Vector256<uint> t2 = bigSigma0 + majority;
            h = g;
            g = f;
            f = e;
            e = d + t1;
            d = c;
            c = b;
            b = a;
            a = t1 + t2;
        }

        state[0] += a;
        state[1] += b;
        state[2] += c;
        state[3] += d;
        state[4] += e;
        state[5] += f;
        state[6] += g;
        state[7] += h;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> Rotr(Vector256<uint> x, [ConstantExpected(Min = 1, Max = 31)] byte n) =>
        Avx512F.VL.IsSupported ? Avx512F.VL.RotateRight(x, n) : Vector256.ShiftRightLogical(x, n) | Vector256.ShiftLeft(x, 32 - n);
}
