using ILGPU;
using ILGPU.Runtime.Cuda;
using Metering.Probe.Attestation.Checksums;

namespace Metering.Probe.Kernels;

/// <summary>
/// Tensor-core FP16: each warp runs eight independent accumulator chains of
/// D = A * B + D with <c>mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32</c>. Eight chains give
/// the tensor pipe eight independent instructions per loop turn, enough to hide the mma latency
/// with two or more warps per scheduler. Operands are small integers, so every f32 sum is exact
/// and the result does not depend on the tensor core's internal summation order.
/// Output: per warp and chain the 16x8 accumulator tile, row-major, as floats.
/// </summary>
internal static class TensorKernels
{
    /// <summary>Eight warps per group: 64 registers per thread (measured with ptxas for sm_90) leave room for 32 warps per SM.</summary>
    public const int GroupSize = 256;

    private const string Mma = "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};";

    /// <summary>CUDA only: explicitly grouped, one warp per item, <paramref name="warps"/> * 32 threads in all.</summary>
    public static void Ptx(InputKey key, int warps, int iterations, ArrayView<float> output)
    {
        int thread = Grid.GlobalIndex.X;
        int warp = thread >> 5;
        if (warp >= warps)
        {
            return;
        }

        // Fragment layout of m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16"): lane l holds
        // rows g and g + 8 (g = l / 4) and columns 2t, 2t + 1 (t = l % 4) of A, B and C, with the
        // second column half of A and the second row half of B 8 further on.
        int lane = thread & 31;
        int g = lane >> 2;
        int t2 = (lane & 3) * 2;
        uint w = (uint)warp;
        Input<uint> a0 = PackA(key, w, g, t2);
        Input<uint> a1 = PackA(key, w, g + 8, t2);
        Input<uint> a2 = PackA(key, w, g, t2 + 8);
        Input<uint> a3 = PackA(key, w, g + 8, t2 + 8);
        Chain c0 = Chain.Start(key, w, 0, g, t2);
        Chain c1 = Chain.Start(key, w, 1, g, t2);
        Chain c2 = Chain.Start(key, w, 2, g, t2);
        Chain c3 = Chain.Start(key, w, 3, g, t2);
        Chain c4 = Chain.Start(key, w, 4, g, t2);
        Chain c5 = Chain.Start(key, w, 5, g, t2);
        Chain c6 = Chain.Start(key, w, 6, g, t2);
        Chain c7 = Chain.Start(key, w, 7, g, t2);

        for (int i = 0; i < iterations; i++)
        {
            CudaAsm.EmitRef(Mma, ref c0.D0, ref c0.D1, ref c0.D2, ref c0.D3, ref a0, ref a1, ref a2, ref a3, ref c0.B0, ref c0.B1);
            CudaAsm.EmitRef(Mma, ref c1.D0, ref c1.D1, ref c1.D2, ref c1.D3, ref a0, ref a1, ref a2, ref a3, ref c1.B0, ref c1.B1);
            CudaAsm.EmitRef(Mma, ref c2.D0, ref c2.D1, ref c2.D2, ref c2.D3, ref a0, ref a1, ref a2, ref a3, ref c2.B0, ref c2.B1);
            CudaAsm.EmitRef(Mma, ref c3.D0, ref c3.D1, ref c3.D2, ref c3.D3, ref a0, ref a1, ref a2, ref a3, ref c3.B0, ref c3.B1);
            CudaAsm.EmitRef(Mma, ref c4.D0, ref c4.D1, ref c4.D2, ref c4.D3, ref a0, ref a1, ref a2, ref a3, ref c4.B0, ref c4.B1);
            CudaAsm.EmitRef(Mma, ref c5.D0, ref c5.D1, ref c5.D2, ref c5.D3, ref a0, ref a1, ref a2, ref a3, ref c5.B0, ref c5.B1);
            CudaAsm.EmitRef(Mma, ref c6.D0, ref c6.D1, ref c6.D2, ref c6.D3, ref a0, ref a1, ref a2, ref a3, ref c6.B0, ref c6.B1);
            CudaAsm.EmitRef(Mma, ref c7.D0, ref c7.D1, ref c7.D2, ref c7.D3, ref a0, ref a1, ref a2, ref a3, ref c7.B0, ref c7.B1);
        }

        int tile = warp * WorkShape.TensorChainsPerWarp;
        c0.Store(output, tile, g, t2);
        c1.Store(output, tile + 1, g, t2);
        c2.Store(output, tile + 2, g, t2);
        c3.Store(output, tile + 3, g, t2);
        c4.Store(output, tile + 4, g, t2);
        c5.Store(output, tile + 5, g, t2);
        c6.Store(output, tile + 6, g, t2);
        c7.Store(output, tile + 7, g, t2);
    }

    /// <summary>
    /// Every accelerator: one item per (warp, chain) tile, the same tile as <see cref="Ptx"/> by
    /// plain float multiply-adds, each exact because every value is an integer below 2^24.
    /// </summary>
    public static void Portable(Index1D tileIndex, InputKey key, int iterations, ArrayView<float> output)
    {
        uint warp = (uint)(tileIndex / WorkShape.TensorChainsPerWarp);
        int chain = tileIndex % WorkShape.TensorChainsPerWarp;
        ArrayView<float> a = LocalMemory.Allocate<float>(16 * 16);
        ArrayView<float> b = LocalMemory.Allocate<float>(16 * 8);
        ArrayView<float> d = LocalMemory.Allocate<float>(16 * 8);
        for (int row = 0; row < 16; row++)
        {
            for (int k = 0; k < 16; k++)
            {
                a[(row * 16) + k] = WorkInputs.TensorA(key, warp, row, k);
            }
        }

        for (int k = 0; k < 16; k++)
        {
            for (int n = 0; n < 8; n++)
            {
                b[(k * 8) + n] = WorkInputs.TensorB(key, warp, chain, k, n);
            }
        }

        for (int row = 0; row < 16; row++)
        {
            for (int n = 0; n < 8; n++)
            {
                d[(row * 8) + n] = WorkInputs.TensorC(key, warp, chain, row, n);
            }
        }

        for (int i = 0; i < iterations; i++)
        {
            for (int row = 0; row < 16; row++)
            {
                for (int n = 0; n < 8; n++)
                {
                    float sum = d[(row * 8) + n];
                    for (int k = 0; k < 16; k++)
                    {
                        sum += a[(row * 16) + k] * b[(k * 8) + n];
                    }

                    d[(row * 8) + n] = sum;
                }
            }
        }

        int at = tileIndex * WorkShape.TensorTileElements;
        for (int e = 0; e < WorkShape.TensorTileElements; e++)
        {
            output[at + e] = d[e];
        }
    }

    private static uint PackA(InputKey key, uint warp, int row, int column) =>
        WorkInputs.HalfBitsOfInteger(WorkInputs.TensorA(key, warp, row, column))
        | (WorkInputs.HalfBitsOfInteger(WorkInputs.TensorA(key, warp, row, column + 1)) << 16);

    /// <summary>One accumulator chain of one lane: its four f32 accumulators and its two f16x2 B registers.</summary>
    private struct Chain
    {
        public Ref<float> D0;
        public Ref<float> D1;
        public Ref<float> D2;
        public Ref<float> D3;
        public Input<uint> B0;
        public Input<uint> B1;

        public static Chain Start(InputKey key, uint warp, int chain, int g, int t2) => new()
        {
            D0 = (float)WorkInputs.TensorC(key, warp, chain, g, t2),
            D1 = (float)WorkInputs.TensorC(key, warp, chain, g, t2 + 1),
            D2 = (float)WorkInputs.TensorC(key, warp, chain, g + 8, t2),
            D3 = (float)WorkInputs.TensorC(key, warp, chain, g + 8, t2 + 1),
            B0 = PackB(key, warp, chain, t2, g),
            B1 = PackB(key, warp, chain, t2 + 8, g),
        };

        public readonly void Store(ArrayView<float> output, int tile, int g, int t2)
        {
            int at = tile * WorkShape.TensorTileElements;
            output[at + (g * 8) + t2] = D0.Value;
            output[at + (g * 8) + t2 + 1] = D1.Value;
            output[at + ((g + 8) * 8) + t2] = D2.Value;
            output[at + ((g + 8) * 8) + t2 + 1] = D3.Value;
        }

        private static uint PackB(InputKey key, uint warp, int chain, int k, int n) =>
            WorkInputs.HalfBitsOfInteger(WorkInputs.TensorB(key, warp, chain, k, n))
            | (WorkInputs.HalfBitsOfInteger(WorkInputs.TensorB(key, warp, chain, k + 1, n)) << 16);
    }
}
