using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime.Cuda;
using Metering.Probe.Attestation.Checksums;

namespace Metering.Probe.Kernels;

/// <summary>
/// Packed FP16: each thread runs eight independent pairs of Minsky's circle map,
/// x = fma(y, -e, x); y = fma(x, e, y), on f16x2 registers (two independent lanes per register)
/// with <c>fma.rn.f16x2</c>. The map stays bounded, and rounding makes it non-linear, so there is
/// no closed form for the result. ILGPU's own Half arithmetic emits scalar mul.f16 and add.f16, so
/// the packed instruction has to be inline PTX.
/// Output: per thread and pair the final x then y word (low lane in the low half).
/// </summary>
internal static class PackedHalfKernels
{
    public const int GroupSize = 256;

    private const string Fma = "fma.rn.f16x2 %0, %1, %2, %3;";

    /// <summary>CUDA only: one thread per item; the loop body is four map steps (64 instructions) so loop overhead stays under 5% of issue slots.</summary>
    public static void Ptx(InputKey key, int threads, int steps, ArrayView<uint> output)
    {
        int thread = Grid.GlobalIndex.X;
        if (thread >= threads)
        {
            return;
        }

        uint t = (uint)thread;
        uint e = Coefficients(key, t);
        uint negativeE = e ^ 0x80008000u;
        uint x0 = Seed(key, t, 0, 0), y0 = Seed(key, t, 0, 1);
        uint x1 = Seed(key, t, 1, 0), y1 = Seed(key, t, 1, 1);
        uint x2 = Seed(key, t, 2, 0), y2 = Seed(key, t, 2, 1);
        uint x3 = Seed(key, t, 3, 0), y3 = Seed(key, t, 3, 1);
        uint x4 = Seed(key, t, 4, 0), y4 = Seed(key, t, 4, 1);
        uint x5 = Seed(key, t, 5, 0), y5 = Seed(key, t, 5, 1);
        uint x6 = Seed(key, t, 6, 0), y6 = Seed(key, t, 6, 1);
        uint x7 = Seed(key, t, 7, 0), y7 = Seed(key, t, 7, 1);
        for (int step = 0; step < steps; step += WorkShape.StepUnroll)
        {
            // Four explicit calls, inlined: ILGPU does not unroll an inner loop, and one step per
            // turn would spend three of every nineteen issue slots on the loop itself.
            Step(ref x0, ref y0, ref x1, ref y1, ref x2, ref y2, ref x3, ref y3, ref x4, ref y4, ref x5, ref y5, ref x6, ref y6, ref x7, ref y7, e, negativeE);
            Step(ref x0, ref y0, ref x1, ref y1, ref x2, ref y2, ref x3, ref y3, ref x4, ref y4, ref x5, ref y5, ref x6, ref y6, ref x7, ref y7, e, negativeE);
            Step(ref x0, ref y0, ref x1, ref y1, ref x2, ref y2, ref x3, ref y3, ref x4, ref y4, ref x5, ref y5, ref x6, ref y6, ref x7, ref y7, e, negativeE);
            Step(ref x0, ref y0, ref x1, ref y1, ref x2, ref y2, ref x3, ref y3, ref x4, ref y4, ref x5, ref y5, ref x6, ref y6, ref x7, ref y7, e, negativeE);
        }

        int at = thread * WorkShape.PairsPerThread * 2;
        output[at] = x0;
        output[at + 1] = y0;
        output[at + 2] = x1;
        output[at + 3] = y1;
        output[at + 4] = x2;
        output[at + 5] = y2;
        output[at + 6] = x3;
        output[at + 7] = y3;
        output[at + 8] = x4;
        output[at + 9] = y4;
        output[at + 10] = x5;
        output[at + 11] = y5;
        output[at + 12] = x6;
        output[at + 13] = y6;
        output[at + 14] = x7;
        output[at + 15] = y7;
    }

    /// <summary>One map step of all eight pairs: the eight x updates are independent, then the eight y updates.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Step(ref uint x0, ref uint y0, ref uint x1, ref uint y1, ref uint x2, ref uint y2, ref uint x3, ref uint y3, ref uint x4, ref uint y4, ref uint x5, ref uint y5, ref uint x6, ref uint y6, ref uint x7, ref uint y7, uint e, uint negativeE)
    {
        CudaAsm.Emit(Fma, out x0, y0, negativeE, x0);
        CudaAsm.Emit(Fma, out x1, y1, negativeE, x1);
        CudaAsm.Emit(Fma, out x2, y2, negativeE, x2);
        CudaAsm.Emit(Fma, out x3, y3, negativeE, x3);
        CudaAsm.Emit(Fma, out x4, y4, negativeE, x4);
        CudaAsm.Emit(Fma, out x5, y5, negativeE, x5);
        CudaAsm.Emit(Fma, out x6, y6, negativeE, x6);
        CudaAsm.Emit(Fma, out x7, y7, negativeE, x7);
        CudaAsm.Emit(Fma, out y0, x0, e, y0);
        CudaAsm.Emit(Fma, out y1, x1, e, y1);
        CudaAsm.Emit(Fma, out y2, x2, e, y2);
        CudaAsm.Emit(Fma, out y3, x3, e, y3);
        CudaAsm.Emit(Fma, out y4, x4, e, y4);
        CudaAsm.Emit(Fma, out y5, x5, e, y5);
        CudaAsm.Emit(Fma, out y6, x6, e, y6);
        CudaAsm.Emit(Fma, out y7, x7, e, y7);
    }

    /// <summary>
    /// Every accelerator: the same map with an exact integer emulation of the binary16 FMA. ILGPU's
    /// FP16 FMA rounds through FP32 (two roundings), which would not give fma.rn.f16x2's bits.
    /// </summary>
    public static void Portable(Index1D thread, InputKey key, int steps, ArrayView<uint> output)
    {
        uint t = (uint)thread.X;
        uint e = Coefficients(key, t);
        uint negativeE = e ^ 0x80008000u;
        int at = thread * WorkShape.PairsPerThread * 2;
        for (int pair = 0; pair < WorkShape.PairsPerThread; pair++)
        {
            uint x = Seed(key, t, pair, 0);
            uint y = Seed(key, t, pair, 1);
            for (int step = 0; step < steps; step++)
            {
                x = SoftFloat.FusedMultiplyAddHalf2(y, negativeE, x);
                y = SoftFloat.FusedMultiplyAddHalf2(x, e, y);
            }

            output[at + (2 * pair)] = x;
            output[at + (2 * pair) + 1] = y;
        }
    }

    private static uint Coefficients(InputKey key, uint thread) =>
        WorkInputs.HalfBitsOfSixteenths(WorkInputs.CoefficientNumerator(key, thread, 0))
        | (WorkInputs.HalfBitsOfSixteenths(WorkInputs.CoefficientNumerator(key, thread, 1)) << 16);

    private static uint Seed(InputKey key, uint thread, int pair, int slot)
    {
        uint word = WorkInputs.PairWord(key, thread, pair, slot);
        return WorkInputs.HalfSeed(word) | (WorkInputs.HalfSeed(word >> 16) << 16);
    }
}
