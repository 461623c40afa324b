using Metering.Probe.Attestation.Checksums;

namespace Metering.Probe.Measurement;

/// <summary>The preset work sizes. Full sizes aim at 10 to 40 ms per run on an H100 so that timer and launch overheads stay below 0.1%.</summary>
internal static class WorkSizes
{
    /// <summary>Warps per SM over all waves: 16 resident (64 registers per thread) times 8 waves.</summary>
    private const int TensorWarpsPerMultiprocessor = 128;

    /// <summary>Thread waves of the FMA kernels: four times the resident maximum.</summary>
    private const int ThreadWaves = 4;

    private const int FullSteps = 32_768;

    private const int FullPasses = 10;

    public static WorkSize Small(KernelKind kind) => kind switch
    {
        KernelKind.TensorFp16 => new WorkSize(8, 8),
        KernelKind.PackedFp16 => new WorkSize(64, 64),
        KernelKind.Fp32Fma => new WorkSize(64, 64),
        KernelKind.MemoryBandwidth => new WorkSize(16, 2),
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "Unknown kernel kind."),
    };

    public static WorkSize Full(KernelKind kind, int multiprocessors, int threadsPerMultiprocessor, long memoryBytes)
    {
        long threads = (long)Math.Max(1, multiprocessors) * Math.Max(32, threadsPerMultiprocessor) * ThreadWaves;
        return kind switch
        {
            KernelKind.TensorFp16 => new WorkSize((int)Math.Min((long)Math.Max(1, multiprocessors) * TensorWarpsPerMultiprocessor, WorkShape.TensorWarpsMax), WorkShape.TensorIterationsMax),
            KernelKind.PackedFp16 or KernelKind.Fp32Fma => new WorkSize((int)Math.Min(threads, WorkShape.ThreadsMax), FullSteps),
            // Source and destination together take at most half the device memory.
            KernelKind.MemoryBandwidth => new WorkSize((int)Math.Clamp(memoryBytes / 4 / WorkShape.BandwidthChunkBytes, 1, WorkShape.BandwidthChunksMax), FullPasses),
            _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "Unknown kernel kind."),
        };
    }
}
