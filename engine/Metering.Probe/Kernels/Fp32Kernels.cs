using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime.Cuda;
using Metering.Probe.Attestation.Checksums;

namespace Metering.Probe.Kernels;

/// <summary>
/// FP32 FMA: the same eight-pair map as <see cref="PackedHalfKernels"/> in binary32 with
/// <c>fma.rn.f32</c> (IEEE, one rounding, subnormals kept). ILGPU compiles a * b + c to a
/// separate mul and add that ptxas may or may not fuse, so the instruction is inline PTX.
/// Output: per thread and pair the final x then y as floats.
/// </summary>
internal static class Fp32Kernels
{
    public const int GroupSize = 256;

    private const string Fma = "fma.rn.f32 %0, %1, %2, %3;";

    /// <summary>CUDA only: one thread per item, four map steps per loop turn.</summary>
    public static void Ptx(InputKey key, int threads, int steps, ArrayView<float> output)
    {
        int thread = Grid.GlobalIndex.X;
        if (thread >= threads)
        {
            return;
        }

        uint t = (uint)thread;
        float e = Coefficient(key, t);
        float negativeE = -e;
        float x0 = Seed(key, t, 0, 0), y0 = Seed(key, t, 0, 1);
        float x1 = Seed(key, t, 1, 0), y1 = Seed(key, t, 1, 1);
        float x2 = Seed(key, t, 2, 0), y2 = Seed(key, t, 2, 1);
        float x3 = Seed(key, t, 3, 0), y3 = Seed(key, t, 3, 1);
        float x4 = Seed(key, t, 4, 0), y4 = Seed(key, t, 4, 1);
        float x5 = Seed(key, t, 5, 0), y5 = Seed(key, t, 5, 1);
        float x6 = Seed(key, t, 6, 0), y6 = Seed(key, t, 6, 1);
        float x7 = Seed(key, t, 7, 0), y7 = Seed(key, t, 7, 1);
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
    private static void Step(ref float x0, ref float y0, ref float x1, ref float y1, ref float x2, ref float y2, ref float x3, ref float y3, ref float x4, ref float y4, ref float x5, ref float y5, ref float x6, ref float y6, ref float x7, ref float y7, float e, float negativeE)
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
    /// CPU accelerator: ILGPU runs the kernel's IL on the CPU, where MathF.FusedMultiplyAdd is
    /// the IEEE fma, bit-equal to fma.rn.f32.
    /// </summary>
    public static void Native(Index1D thread, InputKey key, int steps, ArrayView<float> output)
    {
        uint t = (uint)thread.X;
        float e = Coefficient(key, t);
        int at = thread * WorkShape.PairsPerThread * 2;
        for (int pair = 0; pair < WorkShape.PairsPerThread; pair++)
        {
            float x = Seed(key, t, pair, 0);
            float y = Seed(key, t, pair, 1);
            for (int step = 0; step < steps; step++)
            {
                x = MathF.FusedMultiplyAdd(y, -e, x);
                y = MathF.FusedMultiplyAdd(x, e, y);
            }

            output[at + (2 * pair)] = x;
            output[at + (2 * pair) + 1] = y;
        }
    }

    /// <summary>
    /// OpenCL: ILGPU 1.5.3 has no FMA intrinsic for OpenCL (MathF.FusedMultiplyAdd compiles to a
    /// call of an undefined function) and OpenCL C may contract a * b + c or not, so the FMA is
    /// emulated exactly in integers.
    /// </summary>
    public static void Emulated(Index1D thread, InputKey key, int steps, ArrayView<float> output)
    {
        uint t = (uint)thread.X;
        uint e = WorkInputs.SingleBitsOfSixteenths(WorkInputs.CoefficientNumerator(key, t, 0));
        uint negativeE = e ^ 0x80000000u;
        int at = thread * WorkShape.PairsPerThread * 2;
        for (int pair = 0; pair < WorkShape.PairsPerThread; pair++)
        {
            uint x = WorkInputs.SingleSeed(WorkInputs.PairWord(key, t, pair, 0));
            uint y = WorkInputs.SingleSeed(WorkInputs.PairWord(key, t, pair, 1));
            for (int step = 0; step < steps; step++)
            {
                x = SoftFloat.FusedMultiplyAddSingle(y, negativeE, x);
                y = SoftFloat.FusedMultiplyAddSingle(x, e, y);
            }

            output[at + (2 * pair)] = Interop.IntAsFloat(x);
            output[at + (2 * pair) + 1] = Interop.IntAsFloat(y);
        }
    }

    private static float Coefficient(InputKey key, uint thread) =>
        Interop.IntAsFloat(WorkInputs.SingleBitsOfSixteenths(WorkInputs.CoefficientNumerator(key, thread, 0)));

    private static float Seed(InputKey key, uint thread, int pair, int slot) =>
        Interop.IntAsFloat(WorkInputs.SingleSeed(WorkInputs.PairWord(key, thread, pair, slot)));
}
