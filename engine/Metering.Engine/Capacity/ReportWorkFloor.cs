using System.Globalization;
using Metering.Probe.Attestation.Checksums;
using Metering.Probe.Attestation.Results;

namespace Metering.Engine.Capacity;

/// <summary>
/// The least work a report's kernels may claim, checked before the nonce is spent and before any
/// leaf is recomputed. The floor is the probe's small preset, so that a report of one item and
/// one iteration is refused at once; it is a stopgap: the work a device must do will be set by
/// the server per model (issue 14), and then a report must carry exactly that work.
/// </summary>
public static class ReportWorkFloor
{
    public static WorkSize Of(KernelKind kind) => kind switch
    {
        KernelKind.TensorFp16 => new WorkSize(8, 8),
        KernelKind.PackedFp16 or KernelKind.Fp32Fma => new WorkSize(64, 64),
        KernelKind.MemoryBandwidth => new WorkSize(16, 2),
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "Unknown kernel kind."),
    };

    /// <summary>The first kernel whose work is outside its limits or below the floor, with why; null when every kernel's work is allowed.</summary>
    public static (string Kernel, string Detail)? FirstRefused(ProbeReport report)
    {
        for (int d = 0; d < report.Devices.Count; d++)
        {
            foreach (KernelMeasurement measurement in report.Devices[d].Measurements)
            {
                if (!KernelKinds.TryParse(measurement.Kernel, out KernelKind kind))
                {
                    // An unknown kernel is the verifier's refusal (UnknownKernel); it costs no leaf.
                    continue;
                }

                var size = new WorkSize(measurement.Items, measurement.Iterations);
                if (WorkShape.Validate(kind, size) is string limit)
                {
                    return (measurement.Kernel, $"device {d}: {limit}");
                }

                WorkSize floor = Of(kind);
                if (size.Items < floor.Items || size.Iterations < floor.Iterations)
                {
                    return (measurement.Kernel, string.Create(CultureInfo.InvariantCulture,
                        $"device {d}: {measurement.Kernel} work {size} is below the floor {floor} (items x iterations)"));
                }
            }
        }

        return null;
    }
}
