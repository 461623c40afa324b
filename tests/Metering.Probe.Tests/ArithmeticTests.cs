using System.Numerics;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using Metering.Probe.Attestation.Checksums;
using Metering.Probe.Kernels;
using Half = System.Half;

namespace Metering.Probe.Tests;

/// <summary>The exact arithmetic the checksums rest on, checked against independent computations.</summary>
public sealed class ArithmeticTests
{
    private static readonly byte[] Nonce = Convert.FromHexString("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");

    [Fact]
    public void Soft_single_fma_matches_the_hardware_fma_bit_for_bit()
    {
        var random = new Random(20250101);
        for (int i = 0; i < 200_000; i++)
        {
            uint a = FiniteSingle(random), b = FiniteSingle(random), c = FiniteSingle(random);
            uint expected = BitConverter.SingleToUInt32Bits(MathF.FusedMultiplyAdd(BitConverter.UInt32BitsToSingle(a), BitConverter.UInt32BitsToSingle(b), BitConverter.UInt32BitsToSingle(c)));
            Assert.True(expected == SoftFloat.FusedMultiplyAddSingle(a, b, c), $"fma({a:x8}, {b:x8}, {c:x8}) = {expected:x8}, soft gives {SoftFloat.FusedMultiplyAddSingle(a, b, c):x8}");
        }
    }

    [Fact]
    public void Soft_half_fma_matches_an_exact_rational_reference_bit_for_bit()
    {
        var random = new Random(20250102);
        for (int i = 0; i < 100_000; i++)
        {
            // Half the cases near each other in magnitude, where cancellation and ties are common.
            ushort a = FiniteHalf(random), b = FiniteHalf(random), c = i % 2 == 0 ? FiniteHalf(random) : (ushort)(a ^ (random.Next(64) & 0x803F));
            ushort expected = ExactHalfFma(a, b, c);
            Assert.True(expected == SoftFloat.FusedMultiplyAddHalf(a, b, c), $"fma({a:x4}, {b:x4}, {c:x4}) = {expected:x4}, soft gives {SoftFloat.FusedMultiplyAddHalf(a, b, c):x4}");
        }
    }

    [Fact]
    public void The_cpu_half_path_matches_an_independent_system_half_computation_of_a_few_leaves()
    {
        var size = new WorkSize(16, 256);
        InputKey key = InputKey.Derive(Nonce, KernelKind.PackedFp16, size);
        uint[] output = RunOnCpu<uint>(size.Items * 16, (accelerator, view) =>
            accelerator.LoadAutoGroupedStreamKernel<Index1D, InputKey, int, ArrayView<uint>>(PackedHalfKernels.Portable)(size.Items, key, size.Iterations, view));

        foreach (int thread in new[] { 0, 7, 15 })
        {
            for (int lane = 0; lane < 2; lane++)
            {
                // In this domain a * b + c is exact in double, so one conversion to Half is the single rounding of fma.rn.
                Half e = (Half)(WorkInputs.CoefficientNumerator(key, (uint)thread, (uint)lane) / 16.0);
                for (int pair = 0; pair < WorkShape.PairsPerThread; pair++)
                {
                    Half x = BitConverter.UInt16BitsToHalf((ushort)WorkInputs.HalfSeed(WorkInputs.PairWord(key, (uint)thread, pair, 0) >> (16 * lane)));
                    Half y = BitConverter.UInt16BitsToHalf((ushort)WorkInputs.HalfSeed(WorkInputs.PairWord(key, (uint)thread, pair, 1) >> (16 * lane)));
                    for (int step = 0; step < size.Iterations; step++)
                    {
                        x = (Half)(((double)y * -(double)e) + (double)x);
                        y = (Half)(((double)x * (double)e) + (double)y);
                        Assert.True(Half.Abs(x) < (Half)64 && Half.Abs(y) < (Half)64, "the map leaves its bounded domain");
                    }

                    int at = (thread * 16) + (2 * pair);
                    Assert.Equal(BitConverter.HalfToUInt16Bits(x), (ushort)(output[at] >> (16 * lane)));
                    Assert.Equal(BitConverter.HalfToUInt16Bits(y), (ushort)(output[at + 1] >> (16 * lane)));
                }
            }
        }
    }

    [Fact]
    public void The_cpu_tensor_path_matches_a_plain_integer_iteration()
    {
        var size = new WorkSize(2, 20);
        InputKey key = InputKey.Derive(Nonce, KernelKind.TensorFp16, size);
        float[] output = RunOnCpu<float>(size.Items * 8 * 128, (accelerator, view) =>
            accelerator.LoadAutoGroupedStreamKernel<Index1D, InputKey, int, ArrayView<float>>(TensorKernels.Portable)(size.Items * 8, key, size.Iterations, view));

        for (uint warp = 0; warp < size.Items; warp++)
        {
            for (int chain = 0; chain < 8; chain++)
            {
                long[] d = new long[128];
                for (int e = 0; e < 128; e++)
                {
                    d[e] = WorkInputs.TensorC(key, warp, chain, e / 8, e % 8);
                }

                for (int i = 0; i < size.Iterations; i++)
                {
                    long[] next = new long[128];
                    for (int e = 0; e < 128; e++)
                    {
                        next[e] = d[e];
                        for (int k = 0; k < 16; k++)
                        {
                            next[e] += WorkInputs.TensorA(key, warp, e / 8, k) * (long)WorkInputs.TensorB(key, warp, chain, k, e % 8);
                        }
                    }

                    d = next;
                }

                int at = (int)((warp * 8) + chain) * 128;
                Assert.Equal(d.Select(v => (float)v), output.Skip(at).Take(128));
            }
        }
    }

    [Fact]
    public void Small_integers_become_the_half_values_the_tensor_cores_read()
    {
        for (int value = -2048; value <= 2048; value++)
        {
            Assert.Equal((Half)value, BitConverter.UInt16BitsToHalf((ushort)WorkInputs.HalfBitsOfInteger(value)));
        }

        for (int n = 1; n < 32; n += 2)
        {
            Assert.Equal((Half)(n / 16.0), BitConverter.UInt16BitsToHalf((ushort)WorkInputs.HalfBitsOfSixteenths(n)));
            Assert.Equal(n / 16f, BitConverter.UInt32BitsToSingle(WorkInputs.SingleBitsOfSixteenths(n)));
        }
    }

    [Fact]
    public void Map_coefficients_are_odd_sixteenths_and_never_one()
    {
        var seen = new HashSet<int>();
        for (uint thread = 0; thread < 4096; thread++)
        {
            int n = WorkInputs.CoefficientNumerator(InputKey.Derive(Nonce, KernelKind.Fp32Fma, new WorkSize(1, 4)), thread, 0);
            Assert.True(n % 2 == 1 && n is >= 1 and <= 29, $"numerator {n}");
            seen.Add(n);
        }

        Assert.Equal(15, seen.Count);
    }

    private static T[] RunOnCpu<T>(int length, Action<Accelerator, ArrayView<T>> launch)
        where T : unmanaged
    {
        using Context context = Context.Create(builder => builder.DefaultCPU());
        using Accelerator accelerator = context.CreateCPUAccelerator(0);
        using MemoryBuffer1D<T, Stride1D.Dense> buffer = accelerator.Allocate1D<T>(length);
        launch(accelerator, buffer.View);
        accelerator.Synchronize();
        return buffer.GetAsArray1D();
    }

    private static uint FiniteSingle(Random random)
    {
        uint bits;
        do
        {
            bits = (uint)random.NextInt64(0, 1L << 32);
        }
        while (((bits >> 23) & 0xFF) == 0xFF);

        return bits;
    }

    private static ushort FiniteHalf(Random random)
    {
        ushort bits;
        do
        {
            bits = (ushort)random.Next(0, 1 << 16);
        }
        while (((bits >> 10) & 0x1F) == 0x1F);

        return bits;
    }

    /// <summary>The value of a finite half as an integer numerator over 2^24.</summary>
    private static BigInteger Scaled24(ushort half)
    {
        int exponent = (half >> 10) & 0x1F;
        BigInteger significand = (half & 0x3FF) | (exponent != 0 ? 0x400 : 0);
        BigInteger magnitude = significand << (Math.Max(exponent, 1) - 1);
        return (half & 0x8000) != 0 ? -magnitude : magnitude;
    }

    /// <summary>a * b + c computed exactly as a rational over 2^48, then rounded to the nearest half, ties to even, by search.</summary>
    private static ushort ExactHalfFma(ushort a, ushort b, ushort c)
    {
        BigInteger exact = (Scaled24(a) * Scaled24(b)) + (Scaled24(c) << 24);
        if (exact.IsZero)
        {
            bool productNegative = ((a ^ b) & 0x8000) != 0;
            bool productZero = (a & 0x7FFF) == 0 || (b & 0x7FFF) == 0;
            return (ushort)(productZero && (c & 0x7FFF) == 0 && productNegative && (c & 0x8000) != 0 ? 0x8000 : 0);
        }

        ushort sign = (ushort)(exact.Sign < 0 ? 0x8000 : 0);
        BigInteger magnitude = BigInteger.Abs(exact);
        int low = 0, high = 0x7BFF;
        while (low < high)
        {
            int middle = (low + high + 1) / 2;
            if (Scaled24((ushort)middle) << 24 <= magnitude)
            {
                low = middle;
            }
            else
            {
                high = middle - 1;
            }
        }

        BigInteger below = Scaled24((ushort)low) << 24;
        BigInteger step = low < 0x7BFF ? (Scaled24((ushort)(low + 1)) << 24) - below : Scaled24(0x7BFF) - Scaled24(0x7BFE) << 24;
        BigInteger twiceDistance = 2 * (magnitude - below);
        int chosen = twiceDistance < step || (twiceDistance == step && low % 2 == 0) ? low : low + 1;
        return (ushort)(sign | (chosen > 0x7BFF ? 0x7C00 : chosen));
    }
}
