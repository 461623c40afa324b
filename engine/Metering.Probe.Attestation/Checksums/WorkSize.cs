namespace Metering.Probe.Attestation.Checksums;

/// <summary>
/// How much work one run of a kernel does. <see cref="Items"/> is the number of Merkle leaves
/// (warps for the tensor kernel, threads for the FMA kernels, 64 KiB chunks for the bandwidth
/// kernel); <see cref="Iterations"/> is what each item repeats (mma per chain, map steps per
/// thread, copy passes).
/// </summary>
public readonly record struct WorkSize(int Items, int Iterations)
{
    public override string ToString() => $"{Items}x{Iterations}";
}

/// <summary>
/// The fixed shape of each kernel and the limits on its work size. The limits keep every value
/// exact (see README: the tensor accumulators stay below 2^24), keep the server's check cheap
/// (a leaf costs at most a few million scalar operations) and keep buffers within a GPU's memory.
/// </summary>
public static class WorkShape
{
    /// <summary>Independent mma accumulator chains per warp.</summary>
    public const int TensorChainsPerWarp = 8;

    /// <summary>Elements of one 16x8 accumulator matrix.</summary>
    public const int TensorTileElements = 16 * 8;

    /// <summary>FLOPs of one m16n8k16 mma: 2 * 16 * 8 * 16.</summary>
    public const long TensorFlopsPerMma = 2 * 16 * 8 * 16;

    /// <summary>Independent (x, y) map pairs per thread in the FMA kernels.</summary>
    public const int PairsPerThread = 8;

    /// <summary>The FMA kernels are unrolled four steps at a time, so their step counts are multiples of this.</summary>
    public const int StepUnroll = 4;

    /// <summary>64-bit words in one bandwidth chunk (64 KiB), the bandwidth kernel's leaf.</summary>
    public const int BandwidthChunkWords = 8192;

    public const int BandwidthChunkBytes = BandwidthChunkWords * 8;

    /// <summary>Leaves the server asks the probe to open per kernel (fewer when a kernel has fewer leaves).</summary>
    public const int OpeningsPerKernel = 32;

    /// <summary>
    /// |C0| + iterations * 16 * 4 * 4 must stay below 2^24 so every f32 accumulator value is an exact integer:
    /// 16384 + 32768 * 256 = 8,404,992.
    /// </summary>
    public const int TensorIterationsMax = 32_768;

    public const int TensorWarpsMax = 1 << 20;

    public const int ThreadsMax = 1 << 24;

    /// <summary>At 65,536 steps a leaf of the FP16 kernel costs the server about two million scalar FMAs.</summary>
    public const int StepsMax = 65_536;

    /// <summary>2^15 chunks of 64 KiB: a 2 GiB source and a 2 GiB destination at most, so 32-bit indices reach every word.</summary>
    public const int BandwidthChunksMax = 1 << 15;

    public const int BandwidthPassesMax = 1_000;

    /// <summary>The bytes of one leaf's payload, the input of its leaf hash.</summary>
    public static int LeafPayloadBytes(KernelKind kind) => kind switch
    {
        KernelKind.TensorFp16 => TensorChainsPerWarp * TensorTileElements * 4,
        KernelKind.PackedFp16 or KernelKind.Fp32Fma => PairsPerThread * 2 * 4,
        KernelKind.MemoryBandwidth => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "Unknown kernel kind."),
    };

    /// <summary>Returns null when the size is allowed for the kind, otherwise the reason it is not.</summary>
    public static string? Validate(KernelKind kind, WorkSize size)
    {
        (int itemsMax, int iterationsMax, int iterationsMultiple) = kind switch
        {
            KernelKind.TensorFp16 => (TensorWarpsMax, TensorIterationsMax, 1),
            KernelKind.PackedFp16 or KernelKind.Fp32Fma => (ThreadsMax, StepsMax, StepUnroll),
            KernelKind.MemoryBandwidth => (BandwidthChunksMax, BandwidthPassesMax, 1),
            _ => (0, 0, 1),
        };
        if (itemsMax == 0)
        {
            return $"unknown kernel kind {(int)kind}";
        }

        if (size.Items < 1 || size.Items > itemsMax)
        {
            return $"{KernelKinds.Name(kind)} items must be between 1 and {itemsMax}, not {size.Items}";
        }

        if (size.Iterations < iterationsMultiple || size.Iterations > iterationsMax)
        {
            return $"{KernelKinds.Name(kind)} iterations must be between {iterationsMultiple} and {iterationsMax}, not {size.Iterations}";
        }

        if (size.Iterations % iterationsMultiple != 0)
        {
            return $"{KernelKinds.Name(kind)} iterations must be a multiple of {iterationsMultiple}, not {size.Iterations}";
        }

        return null;
    }

    /// <summary>
    /// The work of one run: FLOPs for arithmetic kernels (mma m16n8k16 = 4096 per warp-instruction,
    /// FMA = 2 per lane, packed FMA = 4 per lane), bytes read plus bytes written for bandwidth.
    /// </summary>
    public static long WorkPerRun(KernelKind kind, WorkSize size) => kind switch
    {
        KernelKind.TensorFp16 => (long)size.Items * TensorChainsPerWarp * size.Iterations * TensorFlopsPerMma,
        KernelKind.PackedFp16 => (long)size.Items * PairsPerThread * 2 * 4 * size.Iterations,
        KernelKind.Fp32Fma => (long)size.Items * PairsPerThread * 2 * 2 * size.Iterations,
        KernelKind.MemoryBandwidth => (long)size.Items * BandwidthChunkBytes * 2 * size.Iterations,
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "Unknown kernel kind."),
    };
}
