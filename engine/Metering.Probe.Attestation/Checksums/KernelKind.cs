namespace Metering.Probe.Attestation.Checksums;

/// <summary>The four measurements of the probe. The numeric values are part of every hash input; never renumber them.</summary>
public enum KernelKind : byte
{
    /// <summary>Tensor-core FP16 multiply with FP32 accumulation (<c>mma.sync m16n8k16</c> on CUDA).</summary>
    TensorFp16 = 1,

    /// <summary>Packed FP16 fused multiply-add (<c>fma.rn.f16x2</c> on CUDA).</summary>
    PackedFp16 = 2,

    /// <summary>FP32 fused multiply-add (<c>fma.rn.f32</c> on CUDA).</summary>
    Fp32Fma = 3,

    /// <summary>Device-memory bandwidth: a copy between two device buffers, counting bytes read and written.</summary>
    MemoryBandwidth = 4,
}

/// <summary>Names, units and parsing of <see cref="KernelKind"/>.</summary>
public static class KernelKinds
{
    /// <summary>Every kind, in the order the probe measures them.</summary>
    public static IReadOnlyList<KernelKind> All { get; } = [KernelKind.TensorFp16, KernelKind.PackedFp16, KernelKind.Fp32Fma, KernelKind.MemoryBandwidth];

    /// <summary>The stable name used in JSON, on the command line and in tables.</summary>
    public static string Name(KernelKind kind) => kind switch
    {
        KernelKind.TensorFp16 => "tensor-fp16",
        KernelKind.PackedFp16 => "packed-fp16",
        KernelKind.Fp32Fma => "fp32-fma",
        KernelKind.MemoryBandwidth => "memory-bandwidth",
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "Unknown kernel kind."),
    };

    /// <summary>
    /// The unit of the integer rate a measurement reports: MFLOP/s for arithmetic (fine enough that
    /// a CPU's rate is not rounded to nothing; an H100's tensor rate is under 10^9), MB/s (10^6
    /// bytes per second) for bandwidth.
    /// </summary>
    public static string RateUnit(KernelKind kind) => kind == KernelKind.MemoryBandwidth ? "mbps" : "mflops";

    public static bool IsDefined(KernelKind kind) => kind is KernelKind.TensorFp16 or KernelKind.PackedFp16 or KernelKind.Fp32Fma or KernelKind.MemoryBandwidth;

    /// <summary>Accepts the stable name and the short names of the command line (tensor, fp16x2, fp32, bandwidth).</summary>
    public static bool TryParse(string? text, out KernelKind kind)
    {
        kind = text switch
        {
            "tensor-fp16" or "tensor" => KernelKind.TensorFp16,
            "packed-fp16" or "fp16x2" => KernelKind.PackedFp16,
            "fp32-fma" or "fp32" => KernelKind.Fp32Fma,
            "memory-bandwidth" or "bandwidth" => KernelKind.MemoryBandwidth,
            _ => 0,
        };
        return kind != 0;
    }
}
