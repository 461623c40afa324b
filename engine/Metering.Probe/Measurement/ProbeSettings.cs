using Metering.Probe.Attestation.Checksums;

namespace Metering.Probe.Measurement;

/// <summary>Which accelerators to measure.</summary>
public enum DeviceFilter
{
    /// <summary>
    /// CUDA devices if there are any, else OpenCL GPUs: one measurement per physical device. Never
    /// the CPU: without a GPU the run fails with <see cref="NoAcceleratorException"/>.
    /// </summary>
    Auto,

    /// <summary>Every accelerator ILGPU finds; a GPU visible through both CUDA and OpenCL is measured twice.</summary>
    All,
    Cpu,
    Cuda,
    OpenCL,
}

/// <summary>How large the work of each kernel is.</summary>
public enum SizePreset
{
    /// <summary>Full on GPUs, small on the CPU.</summary>
    Auto,

    /// <summary>A few milliseconds on ILGPU's CPU accelerator: tests and smoke runs.</summary>
    Small,

    /// <summary>Scaled to the device: tens of milliseconds per run on a datacentre GPU.</summary>
    Full,
}

/// <summary>Everything a probe run needs. The nonce is the server's, or a random one for an unattested run.</summary>
public sealed record ProbeSettings
{
    public const int RunsMax = ProbeVerifier.RunsMax;

    public required byte[] Nonce { get; init; }

    public required bool Attested { get; init; }

    public DeviceFilter Devices { get; init; } = DeviceFilter.Auto;

    /// <summary>Timed runs per kernel after one warm-up run; the report gives their median.</summary>
    public int Runs { get; init; } = 5;

    public SizePreset Size { get; init; } = SizePreset.Auto;

    /// <summary>Explicit work sizes that replace the preset for their kernel.</summary>
    public IReadOnlyDictionary<KernelKind, WorkSize> WorkOverrides { get; init; } = new Dictionary<KernelKind, WorkSize>();

    /// <summary>
    /// The UUID the report gives ILGPU's CPU accelerator, which has none of its own, so that tests
    /// and sandboxes can register it with a node key. Refused when a run would measure anything
    /// but the CPU: a GPU's UUID is the hardware's, never the caller's.
    /// </summary>
    public string? CpuDeviceUuid { get; init; }

    /// <summary>The kernels to measure, in order.</summary>
    public IReadOnlyList<KernelKind> Kernels { get; init; } = KernelKinds.All;
}
