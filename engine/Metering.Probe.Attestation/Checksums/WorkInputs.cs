namespace Metering.Probe.Attestation.Checksums;

/// <summary>
/// Derives each work item's inputs from the <see cref="InputKey"/> with integer arithmetic only,
/// so the GPU kernels, the portable kernels and the server compute the same bits. Every method is
/// static, allocation-free and branch-light because ILGPU compiles these same methods into the
/// kernels.
/// </summary>
public static class WorkInputs
{
    /// <summary>Element ranges of the derivation; distinct so that no two inputs share a word.</summary>
    public const uint TensorAElement = 0x1000;
    public const uint TensorBElement = 0x2000;
    public const uint TensorCElement = 0x3000;
    public const uint CoefficientElement = 0x10;
    public const uint PairElement = 0x100;

    /// <summary>
    /// One 32-bit word for (item, element). The finaliser is MurmurHash3's fmix32 (public domain);
    /// the key words are mixed in between rounds so that every word depends on all 128 key bits.
    /// </summary>
    public static uint Word(InputKey key, uint item, uint element)
    {
        uint h = Finalise(item ^ key.K0);
        h = Finalise(h + key.K1 + (element * 0x9E3779B9u));
        h = Finalise(h ^ key.K2);
        return h + key.K3;
    }

    /// <summary>A small integer in [-4, 3] from the top three bits of a word.</summary>
    public static int SmallInteger(uint word) => (int)(word >> 29) - 4;

    /// <summary>The tensor kernel's A[row][k] of one warp, a small integer.</summary>
    public static int TensorA(InputKey key, uint warp, int row, int k) =>
        SmallInteger(Word(key, warp, TensorAElement + (uint)((row * 16) + k)));

    /// <summary>The tensor kernel's B[k][n] of one chain of one warp, a small integer.</summary>
    public static int TensorB(InputKey key, uint warp, int chain, int k, int n) =>
        SmallInteger(Word(key, warp, TensorBElement + (uint)((chain * 128) + (k * 8) + n)));

    /// <summary>The tensor kernel's initial accumulator C[row][n] of one chain of one warp, an integer in [-16384, 16383].</summary>
    public static int TensorC(InputKey key, uint warp, int chain, int row, int n) =>
        (int)(Word(key, warp, TensorCElement + (uint)((chain * 128) + (row * 8) + n)) >> 17) - 16384;

    /// <summary>
    /// The IEEE binary16 bits of an integer with magnitude at most 2048, exact. Used to pack the
    /// tensor kernel's small-integer operands into f16x2 registers.
    /// </summary>
    public static uint HalfBitsOfInteger(int value)
    {
        uint sign = value < 0 ? 0x8000u : 0u;
        uint magnitude = (uint)(value < 0 ? -value : value);
        if (magnitude == 0)
        {
            return sign;
        }

        int length = BitLength(magnitude);
        uint exponent = (uint)(15 + length - 1);
        uint fraction = (magnitude << (11 - length)) & 0x3FFu;
        return sign | (exponent << 10) | fraction;
    }

    /// <summary>
    /// The numerator n of the map coefficient e = n / 16 of one lane: an odd number in [1, 29].
    /// Odd sixteenths exclude e = 1, whose exact map has period six.
    /// </summary>
    public static int CoefficientNumerator(InputKey key, uint thread, uint lane)
    {
        uint word = Word(key, thread, CoefficientElement + lane);
        int index = (int)(((word >> 16) * 15u) >> 16);
        return (2 * index) + 1;
    }

    /// <summary>The binary16 bits of n / 16 for an odd n in [1, 31].</summary>
    public static uint HalfBitsOfSixteenths(int numerator)
    {
        int length = BitLength((uint)numerator);
        uint exponent = (uint)(length + 10);
        uint fraction = ((uint)numerator << (11 - length)) & 0x3FFu;
        return (exponent << 10) | fraction;
    }

    /// <summary>The binary32 bits of n / 16 for an odd n in [1, 31].</summary>
    public static uint SingleBitsOfSixteenths(int numerator)
    {
        int length = BitLength((uint)numerator);
        uint exponent = (uint)(length + 122);
        uint fraction = ((uint)numerator << (24 - length)) & 0x7FFFFFu;
        return (exponent << 23) | fraction;
    }

    /// <summary>A binary16 start value with magnitude in [2, 8) and either sign, from the low 16 bits of a word.</summary>
    public static uint HalfSeed(uint word) => (word & 0x8000u) | ((16u + ((word >> 10) & 1u)) << 10) | (word & 0x3FFu);

    /// <summary>A binary32 start value with magnitude in [2, 8) and either sign.</summary>
    public static uint SingleSeed(uint word) => (word & 0x80000000u) | ((128u + ((word >> 23) & 1u)) << 23) | (word & 0x7FFFFFu);

    /// <summary>The start word of x (even slot) or y (odd slot) of one pair of one thread.</summary>
    public static uint PairWord(InputKey key, uint thread, int pair, int slot) =>
        Word(key, thread, PairElement + (uint)((pair * 2) + slot));

    /// <summary>Word j of the bandwidth kernel's source buffer: the high half from one derivation, the low half from another.</summary>
    public static ulong BandwidthWord(InputKey key, long index)
    {
        uint chunk = (uint)(index / WorkShape.BandwidthChunkWords);
        uint offset = (uint)(index % WorkShape.BandwidthChunkWords);
        return ((ulong)Word(key, chunk, offset) << 32) | Word(key, chunk, offset + 0x10000u);
    }

    /// <summary>FNV-1a over 64-bit words, the per-chunk fold of the bandwidth kernel's destination.</summary>
    public const ulong FoldOffset = 0xCBF29CE484222325UL;

    public const ulong FoldPrime = 0x100000001B3UL;

    public static ulong Fold(ulong state, ulong word) => (state ^ word) * FoldPrime;

    /// <summary>The number of bits needed to write <paramref name="value"/>; 0 for 0.</summary>
    public static int BitLength(uint value)
    {
        int length = 0;
        if (value >= 1u << 16)
        {
            value >>= 16;
            length += 16;
        }

        if (value >= 1u << 8)
        {
            value >>= 8;
            length += 8;
        }

        if (value >= 1u << 4)
        {
            value >>= 4;
            length += 4;
        }

        if (value >= 1u << 2)
        {
            value >>= 2;
            length += 2;
        }

        if (value >= 2u)
        {
            value >>= 1;
            length += 1;
        }

        return length + (int)value;
    }

    private static uint Finalise(uint h)
    {
        h ^= h >> 16;
        h *= 0x85EBCA6Bu;
        h ^= h >> 13;
        h *= 0xC2B2AE35u;
        h ^= h >> 16;
        return h;
    }
}
