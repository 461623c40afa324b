using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Metering.Engine.Audit;

/// <summary>
/// The sixteen-lane path of <see cref="Sha256Lanes"/>, for processors with AVX-512: sixteen
/// messages side by side in 512-bit vectors; the messages turned into lanes, and the digests
/// back, by a transposition in vector registers instead of a word at a time; and each round's
/// three-input functions (the exclusive-or of three rotations, choose, majority) as one
/// ternary-logic instruction each instead of two to four. On the bench box's Xeon (2 cores,
/// AVX-512) it took 62 ms of CPU per million nodes against the eight-lane path's 115, and 39
/// per million leaves against 57 (bench/RESULTS.md, issue 17, settlement's hashing). What is
/// left of a batch goes to the eight-lane path; the padding is written out as there.
/// </summary>
internal static partial class Sha256Lanes
{
    public const int WideLanes = 16;

    // Truth tables of vpternlog, the inputs being a = 0xF0, b = 0xCC, c = 0xAA.
    private const byte XorOfThree = 0x96;
    private const byte ChooseTable = 0xCA;
    private const byte MajorityTable = 0xE8;

    /// <summary>Whether the sixteen-lane path runs: the processor has AVX-512F and .NET uses it.</summary>
    public static bool IsWide => Avx512F.IsSupported && Vector512.IsHardwareAccelerated;

    /// <summary>Leaf hashes of whole batches of sixteen; returns how many it hashed.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int HashLeavesWide(ReadOnlySpan<byte> chainHashes, Span<byte> leaves, int count)
    {
        Span<Vector512<uint>> rows = stackalloc Vector512<uint>[WideLanes];
        Span<Vector512<uint>> block = stackalloc Vector512<uint>[16];
        Span<Vector512<uint>> state = stackalloc Vector512<uint>[8];
        int done = 0;
        for (; done + WideLanes <= count; done += WideLanes)
        {
            // Row j holds input j's eight words (and zeros); transposed, row t is word t of the sixteen.
            ReadOnlySpan<byte> inputs = chainHashes.Slice(done * HashBytes, WideLanes * HashBytes);
            for (int lane = 0; lane < WideLanes; lane++)
            {
                rows[lane] = Vector256.Create<byte>(inputs.Slice(lane * HashBytes, HashBytes)).AsUInt32().ToVector512();
            }

            TransposeWords(rows);
            // 0x00 || h || 0x80 || zeros || length: each word straddles two of h's.
            Vector512<uint> previous = Vector512<uint>.Zero;
            for (int t = 0; t < 8; t++)
            {
                Vector512<uint> word = rows[t];
                block[t] = Vector512.ShiftLeft(previous, 24) | Vector512.ShiftRightLogical(word, 8);
                previous = word;
            }

            block[8] = Vector512.ShiftLeft(previous, 24) | Vector512.Create(0x0080_0000u);
            for (int t = 9; t < 15; t++)
            {
                block[t] = Vector512<uint>.Zero;
            }

            block[15] = Vector512.Create(LeafMessageBits);
            InitialiseWide(state);
            CompressWide(state, block);
            StoreWide(state, rows, leaves.Slice(done * HashBytes, WideLanes * HashBytes));
        }

        return done;
    }

    /// <summary>Node hashes of whole batches of sixteen pairs; returns how many it hashed. Each batch is read before it is written, as in <see cref="HashNodes"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int HashNodesWide(ReadOnlySpan<byte> pairs, Span<byte> parents, int count)
    {
        Span<Vector512<uint>> rows = stackalloc Vector512<uint>[WideLanes];
        Span<Vector512<uint>> block = stackalloc Vector512<uint>[16];
        Span<Vector512<uint>> state = stackalloc Vector512<uint>[8];
        int done = 0;
        for (; done + WideLanes <= count; done += WideLanes)
        {
            ReadOnlySpan<byte> inputs = pairs.Slice(done * 2 * HashBytes, WideLanes * 2 * HashBytes);
            for (int lane = 0; lane < WideLanes; lane++)
            {
                rows[lane] = Vector512.Create<byte>(inputs.Slice(lane * 2 * HashBytes, 2 * HashBytes)).AsUInt32();
            }

            TransposeWords(rows);
            // First block: 0x01 || left || the first 31 bytes of right.
            Vector512<uint> previous = Vector512.Create(0x01u);
            for (int t = 0; t < 16; t++)
            {
                Vector512<uint> word = rows[t];
                block[t] = Vector512.ShiftLeft(previous, 24) | Vector512.ShiftRightLogical(word, 8);
                previous = word;
            }

            InitialiseWide(state);
            CompressWide(state, block);
            // Second block: the last byte of right || 0x80 || zeros || length.
            block[0] = Vector512.ShiftLeft(previous, 24) | Vector512.Create(0x0080_0000u);
            for (int t = 1; t < 15; t++)
            {
                block[t] = Vector512<uint>.Zero;
            }

            block[15] = Vector512.Create(NodeMessageBits);
            CompressWide(state, block);
            StoreWide(state, rows, parents.Slice(done * HashBytes, WideLanes * HashBytes));
        }

        return done;
    }

    /// <summary>
    /// Transposes sixteen rows of sixteen 32-bit words in place (row j, word i to row i, word j)
    /// and turns each word from big-endian bytes into its value: in four rounds, each of which
    /// swaps the off-diagonal blocks of every 2b × 2b block (b = 8, 4, 2, 1) with two two-table
    /// permutes per pair of rows, then one byte shuffle per row.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void TransposeWords(Span<Vector512<uint>> rows)
    {
        for (int round = 0; round < 4; round++)
        {
            int b = 8 >> round;
            Vector512<uint> upperIndices = TransposeIndices[2 * round];
            Vector512<uint> lowerIndices = TransposeIndices[2 * round + 1];
            for (int r = 0; r < WideLanes; r++)
            {
                if ((r & b) != 0)
                {
                    continue;
                }

                Vector512<uint> upper = rows[r];
                Vector512<uint> lower = rows[r + b];
                rows[r] = Avx512F.PermuteVar16x32x2(upper, upperIndices, lower);
                rows[r + b] = Avx512F.PermuteVar16x32x2(upper, lowerIndices, lower);
            }
        }

        for (int r = 0; r < WideLanes; r++)
        {
            rows[r] = Avx512BW.Shuffle(rows[r].AsByte(), ByteSwap).AsUInt32();
        }
    }

    /// <summary>
    /// For each round of <see cref="TransposeWords"/> (block size b), the indices into a pair of
    /// rows (the upper row's words 0 to 15, the lower row's 16 to 31) of the new upper row
    /// (word c: the upper's c where c's bit b is clear, else the lower's c − b) and of the new
    /// lower row (the upper's c + b where it is clear, else the lower's c).
    /// </summary>
    private static readonly Vector512<uint>[] TransposeIndices = BuildTransposeIndices();

    private static Vector512<uint>[] BuildTransposeIndices()
    {
        var indices = new Vector512<uint>[8];
        Span<uint> upper = stackalloc uint[WideLanes];
        Span<uint> lower = stackalloc uint[WideLanes];
        for (int round = 0; round < 4; round++)
        {
            uint b = 8u >> round;
            for (uint c = 0; c < WideLanes; c++)
            {
                upper[(int)c] = (c & b) == 0 ? c : WideLanes + c - b;
                lower[(int)c] = (c & b) == 0 ? c + b : WideLanes + c;
            }

            indices[2 * round] = Vector512.Create<uint>(upper);
            indices[2 * round + 1] = Vector512.Create<uint>(lower);
        }

        return indices;
    }

    /// <summary>A byte shuffle that reverses the bytes of every 32-bit word (it works within each 128-bit quarter).</summary>
    private static readonly Vector512<byte> ByteSwap = Vector512.Create((byte)3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12,
        3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12, 3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12,
        3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void InitialiseWide(Span<Vector512<uint>> state)
    {
        for (int i = 0; i < 8; i++)
        {
            state[i] = Vector512.Create(InitialHash[i]);
        }
    }

    /// <summary>Writes each lane's eight state words, big-endian, as that lane's 32-byte digest: the state transposed (through <paramref name="rows"/>), each row's first half.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void StoreWide(Span<Vector512<uint>> state, Span<Vector512<uint>> rows, Span<byte> digests)
    {
        for (int i = 0; i < 8; i++)
        {
            rows[i] = state[i];
            rows[i + 8] = Vector512<uint>.Zero;
        }

        // The byte shuffle turns values back into big-endian bytes, as it turned bytes into values.
        TransposeWords(rows);
        for (int lane = 0; lane < WideLanes; lane++)
        {
            rows[lane].GetLower().AsByte().CopyTo(digests.Slice(lane * HashBytes, HashBytes));
        }
    }

    /// <summary>The compression function (FIPS 180-4 §6.2.2) on one 16-word block per lane, as <see cref="Compress"/> with three-input functions in one instruction each.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void CompressWide(Span<Vector512<uint>> state, Span<Vector512<uint>> w)
    {
        Vector512<uint> a = state[0], b = state[1], c = state[2], d = state[3], e = state[4], f = state[5], g = state[6], h = state[7];
        uint[] k = RoundConstants;
        for (int t = 0; t < 64; t++)
        {
            Vector512<uint> word;
            if (t < 16)
            {
                word = w[t];
            }
            else
            {
                Vector512<uint> w2 = w[(t - 2) & 15];
                Vector512<uint> w15 = w[(t - 15) & 15];
                Vector512<uint> sigma1 = Avx512F.TernaryLogic(RotrWide(w2, 17), RotrWide(w2, 19), Vector512.ShiftRightLogical(w2, 10), XorOfThree);
                Vector512<uint> sigma0 = Avx512F.TernaryLogic(RotrWide(w15, 7), RotrWide(w15, 18), Vector512.ShiftRightLogical(w15, 3), XorOfThree);
                word = sigma1 + w[(t - 7) & 15] + sigma0 + w[t & 15];
                w[t & 15] = word;
            }

            Vector512<uint> bigSigma1 = Avx512F.TernaryLogic(RotrWide(e, 6), RotrWide(e, 11), RotrWide(e, 25), XorOfThree);
            Vector512<uint> choose = Avx512F.TernaryLogic(e, f, g, ChooseTable);
            Vector512<uint> t1 = h + bigSigma1 + choose + Vector512.Create(k[t]) + word;
            Vector512<uint> bigSigma0 = Avx512F.TernaryLogic(RotrWide(a, 2), RotrWide(a, 13), RotrWide(a, 22), XorOfThree);
            Vector512<uint> majority = Avx512F.TernaryLogic(a, b, c, MajorityTable);
            Vector512<uint> t2 = bigSigma0 + majority;
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
    private static Vector512<uint> RotrWide(Vector512<uint> x, [ConstantExpected(Min = 1, Max = 31)] byte n) => Avx512F.RotateRight(x, n);
}
