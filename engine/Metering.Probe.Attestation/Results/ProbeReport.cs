using System.Text.Json.Serialization;

namespace Metering.Probe.Attestation.Results;

/// <summary>
/// What one probe run reports: the devices it measured, each kernel's integer rate and timings,
/// and each kernel's checksum commitment with its opened leaves. Nothing here is floating point:
/// the server compares these integers against the catalog and against money.
/// The JSON form is <see cref="ProbeReportJson"/>; the form to sign is <see cref="ProbeReportEncoding"/>.
/// </summary>
public sealed record ProbeReport
{
    public const string CurrentFormat = "metering-probe/v1";

    public const int DevicesMax = 64;

    public required string Format { get; init; }

    public required string ProbeVersion { get; init; }

    /// <summary>The 32-byte nonce every input was derived from.</summary>
    [JsonPropertyName("nonceHex")]
    [JsonConverter(typeof(HexBytesConverter))]
    public required byte[] Nonce { get; init; }

    /// <summary>False when the nonce was drawn locally (no --nonce): such a report proves nothing to a server.</summary>
    public required bool Attested { get; init; }

    public required long CreatedAtUnixMs { get; init; }

    public required int RunsPerKernel { get; init; }

    public required IReadOnlyList<DeviceReport> Devices { get; init; }
}

/// <summary>One accelerator as ILGPU describes it, and what was measured on it.</summary>
public sealed record DeviceReport
{
    public required int Index { get; init; }

    /// <summary>"cuda", "opencl" or "cpu".</summary>
    public required string AcceleratorType { get; init; }

    public required string ModelName { get; init; }

    public required int Multiprocessors { get; init; }

    /// <summary>The peak clock the driver reports, in MHz; 0 where ILGPU does not know it (CPU).</summary>
    public required int ClockMhz { get; init; }

    /// <summary>Device memory; for the CPU accelerator the memory available to the process.</summary>
    public required long MemoryBytes { get; init; }

    /// <summary>
    /// The device UUID, which the server matches against the UUIDs registered with the node's key:
    /// on the CPU accelerator the probe's --device-uuid (a CPU has none); on CUDA empty, because
    /// ILGPU 1.5.3 exposes neither NVML's UUID nor cuDeviceGetUuid.
    /// </summary>
    public required string Uuid { get; init; }

    /// <summary>The PCI bus id (domain:bus:device) of a CUDA device; empty elsewhere.</summary>
    public required string PciBusId { get; init; }

    public required IReadOnlyList<KernelMeasurement> Measurements { get; init; }
}

/// <summary>One kernel on one device: the work of a run, each timed run's duration and the median rate.</summary>
public sealed record KernelMeasurement
{
    /// <summary>The kernel's stable name, for example "tensor-fp16" (see <see cref="Checksums.KernelKinds.Name"/>).</summary>
    public required string Kernel { get; init; }

    /// <summary>"ptx" for inline PTX on CUDA; "portable" for the exact emulated path of CPU and OpenCL, whose rates are not hardware peaks.</summary>
    public required string ArithmeticPath { get; init; }

    public required int Items { get; init; }

    public required int Iterations { get; init; }

    /// <summary>FLOPs (arithmetic kernels) or bytes read plus written (bandwidth) per run.</summary>
    public required long WorkPerRun { get; init; }

    /// <summary>"mflops" (10^6 FLOP/s) or "mbps" (10^6 bytes/s).</summary>
    public required string RateUnit { get; init; }

    /// <summary>The timed runs in order, after one untimed warm-up run, in nanoseconds.</summary>
    public required IReadOnlyList<long> DurationsNs { get; init; }

    public required long MedianDurationNs { get; init; }

    /// <summary><see cref="WorkPerRun"/> over <see cref="MedianDurationNs"/> in <see cref="RateUnit"/>, rounded down.</summary>
    public required long MedianRate { get; init; }

    public required KernelChecksum Checksum { get; init; }
}

/// <summary>The Merkle root over a kernel's leaves and the leaves the challenge asked for.</summary>
public sealed record KernelChecksum
{
    public required int LeafCount { get; init; }

    [JsonPropertyName("rootHex")]
    [JsonConverter(typeof(HexBytesConverter))]
    public required byte[] Root { get; init; }

    public required IReadOnlyList<LeafOpening> Openings { get; init; }
}

/// <summary>One opened leaf: its index, its hash and the sibling hashes up to the root.</summary>
public sealed record LeafOpening
{
    public required int Index { get; init; }

    [JsonPropertyName("leafHashHex")]
    [JsonConverter(typeof(HexBytesConverter))]
    public required byte[] LeafHash { get; init; }

    [JsonPropertyName("pathHex")]
    [JsonConverter(typeof(HexBytesListConverter))]
    public required IReadOnlyList<byte[]> Path { get; init; }
}
