namespace Metering.Probe.Attestation.Checksums;

/// <summary>
/// IEEE 754 fused multiply-add, a * b + c rounded once to nearest (ties to even), for binary16 and
/// binary32, in 64-bit integer arithmetic. It gives the bits of PTX <c>fma.rn.f16x2</c> (per half)
/// and <c>fma.rn.f32</c> for every finite input, subnormals included, on any machine. The portable
/// kernels use it where no exact FMA instruction is reachable (ILGPU has no FMA intrinsic for
/// OpenCL, and its FP16 FMA rounds through FP32, which rounds twice), and the server uses it to
/// recompute leaves. Infinite or NaN inputs give the canonical NaN: the probe never produces them.
/// </summary>
public static class SoftFloat
{
    public const ushort HalfNaN = 0x7E00;

    public const uint SingleNaN = 0x7FC00000;

    public static ushort FusedMultiplyAddHalf(ushort a, ushort b, ushort c) => (ushort)FusedMultiplyAdd(a, b, c, 10, 5);

    public static uint FusedMultiplyAddSingle(uint a, uint b, uint c) => (uint)FusedMultiplyAdd(a, b, c, 23, 8);

    /// <summary>
    /// Packed binary16 FMA on two halves held in one word (low half first), as <c>fma.rn.f16x2</c>.
    /// </summary>
    public static uint FusedMultiplyAddHalf2(uint a, uint b, uint c)
    {
        uint low = FusedMultiplyAddHalf((ushort)(a & 0xFFFF), (ushort)(b & 0xFFFF), (ushort)(c & 0xFFFF));
        uint high = FusedMultiplyAddHalf((ushort)(a >> 16), (ushort)(b >> 16), (ushort)(c >> 16));
        return low | (high << 16);
    }

    private static ulong FusedMultiplyAdd(ulong a, ulong b, ulong c, int fractionBits, int exponentBits)
    {
        int signShift = fractionBits + exponentBits;
        ulong exponentAllOnes = (1UL << exponentBits) - 1;
        ulong fractionMask = (1UL << fractionBits) - 1;
        int bias = (1 << (exponentBits - 1)) - 1;
        ulong nan = (exponentAllOnes << fractionBits) | (1UL << (fractionBits - 1));

        ulong exponentA = (a >> fractionBits) & exponentAllOnes;
        ulong exponentB = (b >> fractionBits) & exponentAllOnes;
        ulong exponentC = (c >> fractionBits) & exponentAllOnes;
        if (exponentA == exponentAllOnes || exponentB == exponentAllOnes || exponentC == exponentAllOnes)
        {
            return nan;
        }

        // Each finite value is m * 2^x with an integer significand m (the hidden bit added for
        // normal numbers) and x = e - bias - fractionBits, where subnormals use e = 1.
        ulong significandA = (a & fractionMask) | (exponentA != 0 ? 1UL << fractionBits : 0);
        ulong significandB = (b & fractionMask) | (exponentB != 0 ? 1UL << fractionBits : 0);
        ulong significandC = (c & fractionMask) | (exponentC != 0 ? 1UL << fractionBits : 0);
        int scaleA = (int)(exponentA != 0 ? exponentA : 1) - bias - fractionBits;
        int scaleB = (int)(exponentB != 0 ? exponentB : 1) - bias - fractionBits;
        int scaleC = (int)(exponentC != 0 ? exponentC : 1) - bias - fractionBits;
        bool negativeProduct = ((a >> signShift) & 1) != ((b >> signShift) & 1);
        bool negativeC = ((c >> signShift) & 1) != 0;

        // The product of two significands has at most 48 bits, exact in a ulong.
        ulong product = significandA * significandB;
        int scaleProduct = scaleA + scaleB;
        if (product == 0)
        {
            if (significandC != 0)
            {
                return c;
            }

            // (+-0) + (+-0) is -0 only when both are negative, under round to nearest.
            return negativeProduct && negativeC ? 1UL << signShift : 0;
        }

        if (significandC == 0)
        {
            return RoundAndPack(negativeProduct, product, scaleProduct, fractionBits, bias, signShift, exponentAllOnes);
        }

        // Normalise both operands so their leading bit is bit 60; the low bits stay zero.
        int productShift = 61 - BitLength(product);
        product <<= productShift;
        scaleProduct -= productShift;
        int cShift = 61 - BitLength(significandC);
        significandC <<= cShift;
        scaleC -= cShift;

        ulong larger = product;
        ulong smaller = significandC;
        int scale = scaleProduct;
        int smallerScale = scaleC;
        bool negativeLarger = negativeProduct;
        bool negativeSmaller = negativeC;
        if (scaleC > scaleProduct)
        {
            larger = significandC;
            smaller = product;
            scale = scaleC;
            smallerScale = scaleProduct;
            negativeLarger = negativeC;
            negativeSmaller = negativeProduct;
        }

        int distance = scale - smallerScale;
        if (distance <= 2)
        {
            // Close scales: move the larger up instead (its leading bit stays at or below bit 62), so nothing is lost.
            larger <<= distance;
            scale = smallerScale;
        }
        else if (distance >= 63)
        {
            smaller = 1;
        }
        else
        {
            // A sticky bit stands in for the bits shifted out. The larger operand's low bits are
            // zero, so the sum is odd whenever the sticky bit is set and can never sit exactly on a
            // rounding boundary, which lies at least 35 bits higher.
            bool sticky = (smaller & ((1UL << distance) - 1)) != 0;
            smaller >>= distance;
            if (sticky)
            {
                smaller |= 1;
            }
        }

        ulong magnitude;
        bool negative;
        if (negativeLarger == negativeSmaller)
        {
            magnitude = larger + smaller;
            negative = negativeLarger;
        }
        else if (larger >= smaller)
        {
            magnitude = larger - smaller;
            negative = negativeLarger;
        }
        else
        {
            magnitude = smaller - larger;
            negative = negativeSmaller;
        }

        if (magnitude == 0)
        {
            // Exact cancellation gives +0 under round to nearest.
            return 0;
        }

        return RoundAndPack(negative, magnitude, scale, fractionBits, bias, signShift, exponentAllOnes);
    }

    /// <summary>Rounds magnitude * 2^scale to the format, to nearest with ties to even, and packs the bits.</summary>
    private static ulong RoundAndPack(bool negative, ulong magnitude, int scale, int fractionBits, int bias, int signShift, ulong exponentAllOnes)
    {
        int precision = fractionBits + 1;
        int subnormalScale = 1 - bias - fractionBits;
        int shift = BitLength(magnitude) - precision;
        if (scale + shift < subnormalScale)
        {
            shift = subnormalScale - scale;
        }

        ulong rounded;
        if (shift <= 0)
        {
            rounded = magnitude << -shift;
        }
        else if (shift >= 64)
        {
            rounded = 0;
        }
        else
        {
            rounded = magnitude >> shift;
            ulong remainder = magnitude & ((1UL << shift) - 1);
            ulong half = 1UL << (shift - 1);
            if (remainder > half || (remainder == half && (rounded & 1) != 0))
            {
                rounded++;
            }
        }

        int resultScale = scale + shift;
        if (rounded == 1UL << precision)
        {
            rounded >>= 1;
            resultScale++;
        }

        ulong sign = negative ? 1UL << signShift : 0;
        if (rounded < 1UL << fractionBits)
        {
            // Subnormal (or zero): the scale is the subnormal scale and the exponent field is 0.
            return sign | rounded;
        }

        long exponent = resultScale + bias + fractionBits;
        if (exponent >= (long)exponentAllOnes)
        {
            return sign | (exponentAllOnes << fractionBits);
        }

        return sign | ((ulong)exponent << fractionBits) | (rounded & ((1UL << fractionBits) - 1));
    }

    private static int BitLength(ulong value)
    {
        int length = 0;
        if (value >= 1UL << 32)
        {
            value >>= 32;
            length += 32;
        }

        return length + WorkInputs.BitLength((uint)value);
    }
}
