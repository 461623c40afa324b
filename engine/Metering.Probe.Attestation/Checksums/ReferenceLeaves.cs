using System.Buffers.Binary;

namespace Metering.Probe.Attestation.Checksums;

/// <summary>
/// Computes one leaf's payload on the CPU, exactly as the kernels define it; the server's side of
/// the check. Payload layouts (all integers big-endian):
/// tensor: per chain, row (16), column (8) the accumulator as a signed 32-bit integer;
/// FMA kernels: per pair the final x then y as 32-bit words (binary32 bits, or two binary16 with
/// the low lane in the low half); bandwidth: the chunk's 64-bit fold.
/// </summary>
internal static class ReferenceLeaves
{
    public static void Compute(KernelKind kind, InputKey key, WorkSize size, int item, Span<byte> payload)
    {
        if (payload.Length != WorkShape.LeafPayloadBytes(kind))
        {
            throw new ArgumentException($"A {KernelKinds.Name(kind)} leaf payload is {WorkShape.LeafPayloadBytes(kind)} bytes.", nameof(payload));
        }

        if ((uint)item >= (uint)size.Items)
        {
            throw new ArgumentOutOfRangeException(nameof(item), item, "The leaf index is outside the work size.");
        }

        switch (kind)
        {
            case KernelKind.TensorFp16:
                Tensor(key, size.Iterations, (uint)item, payload);
                break;
            case KernelKind.PackedFp16:
                PackedHalf(key, size.Iterations, (uint)item, payload);
                break;
            case KernelKind.Fp32Fma:
                Single(key, size.Iterations, (uint)item, payload);
                break;
            case KernelKind.MemoryBandwidth:
                BinaryPrimitives.WriteUInt64BigEndian(payload, BandwidthFold(key, item));
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(kind), kind, "Unknown kernel kind.");
        }
    }

    /// <summary>
    /// The accumulator after n mma steps of D = A * B + D from C is C + n * (A * B): every value is an
    /// integer below 2^24, so the GPU's FP32 sums are exact and this closed form equals them.
    /// </summary>
    private static void Tensor(InputKey key, int iterations, uint warp, Span<byte> payload)
    {
        Span<int> a = stackalloc int[16 * 16];
        for (int row = 0; row < 16; row++)
        {
            for (int k = 0; k < 16; k++)
            {
                a[(row * 16) + k] = WorkInputs.TensorA(key, warp, row, k);
            }
        }

        Span<int> b = stackalloc int[16 * 8];
        for (int chain = 0; chain < WorkShape.TensorChainsPerWarp; chain++)
        {
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
                    long dot = 0;
                    for (int k = 0; k < 16; k++)
                    {
                        dot += a[(row * 16) + k] * b[(k * 8) + n];
                    }

                    long value = WorkInputs.TensorC(key, warp, chain, row, n) + (iterations * dot);
                    int at = ((chain * WorkShape.TensorTileElements) + (row * 8) + n) * 4;
                    BinaryPrimitives.WriteInt32BigEndian(payload[at..], checked((int)value));
                }
            }
        }
    }

    /// <summary>
    /// Each lane runs the map x = fma(y, -e, x); y = fma(x, e, y) (Minsky's circle map) in binary16.
    /// Rounding makes it non-linear, so there is no shortcut: the server replays the steps.
    /// </summary>
    private static void PackedHalf(InputKey key, int steps, uint thread, Span<byte> payload)
    {
        for (int lane = 0; lane < 2; lane++)
        {
            ushort e = (ushort)WorkInputs.HalfBitsOfSixteenths(WorkInputs.CoefficientNumerator(key, thread, (uint)lane));
            ushort negativeE = (ushort)(e ^ 0x8000);
            for (int pair = 0; pair < WorkShape.PairsPerThread; pair++)
            {
                ushort x = (ushort)WorkInputs.HalfSeed(WorkInputs.PairWord(key, thread, pair, 0) >> (16 * lane));
                ushort y = (ushort)WorkInputs.HalfSeed(WorkInputs.PairWord(key, thread, pair, 1) >> (16 * lane));
                for (int step = 0; step < steps; step++)
                {
                    x = SoftFloat.FusedMultiplyAddHalf(y, negativeE, x);
                    y = SoftFloat.FusedMultiplyAddHalf(x, e, y);
                }

                int at = pair * 8;
                WriteLane(payload[at..], lane, x);
                WriteLane(payload[(at + 4)..], lane, y);
            }
        }
    }

    /// <summary>The same map in binary32; MathF.FusedMultiplyAdd is IEEE fma, bit-equal to fma.rn.f32.</summary>
    private static void Single(InputKey key, int steps, uint thread, Span<byte> payload)
    {
        float e = BitConverter.UInt32BitsToSingle(WorkInputs.SingleBitsOfSixteenths(WorkInputs.CoefficientNumerator(key, thread, 0)));
        for (int pair = 0; pair < WorkShape.PairsPerThread; pair++)
        {
            float x = BitConverter.UInt32BitsToSingle(WorkInputs.SingleSeed(WorkInputs.PairWord(key, thread, pair, 0)));
            float y = BitConverter.UInt32BitsToSingle(WorkInputs.SingleSeed(WorkInputs.PairWord(key, thread, pair, 1)));
            for (int step = 0; step < steps; step++)
            {
                x = MathF.FusedMultiplyAdd(y, -e, x);
                y = MathF.FusedMultiplyAdd(x, e, y);
            }

            BinaryPrimitives.WriteUInt32BigEndian(payload[(pair * 8)..], BitConverter.SingleToUInt32Bits(x));
            BinaryPrimitives.WriteUInt32BigEndian(payload[((pair * 8) + 4)..], BitConverter.SingleToUInt32Bits(y));
        }
    }

    /// <summary>The fold of one chunk of the copied buffer, which holds the source words unchanged.</summary>
    public static ulong BandwidthFold(InputKey key, int chunk)
    {
        ulong state = WorkInputs.FoldOffset;
        long first = (long)chunk * WorkShape.BandwidthChunkWords;
        for (int i = 0; i < WorkShape.BandwidthChunkWords; i++)
        {
            state = WorkInputs.Fold(state, WorkInputs.BandwidthWord(key, first + i));
        }

        return state;
    }

    private static void WriteLane(Span<byte> word, int lane, ushort half)
    {
        // The word is big-endian: the high lane's two bytes come first, the low lane's last.
        int at = lane == 0 ? 2 : 0;
        BinaryPrimitives.WriteUInt16BigEndian(word[at..], half);
    }
}
