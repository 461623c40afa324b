using System.Globalization;
using Metering.Engine.Catalog;
using Metering.Probe.Attestation.Checksums;
using Metering.Probe.Attestation.Results;

namespace Metering.Engine.Capacity;

/// <summary>One kernel of a node's challenge: the set work of one run, its physical floor, and its time over the whole node.</summary>
/// <param name="WorkPerRun">FLOPs or bytes of one run (<see cref="WorkShape.WorkPerRun"/>).</param>
/// <param name="DurationFloorNs">The time one run takes at 1.10 × the model's peak, rounded down: no reported run is shorter.</param>
/// <param name="NodeWork">The work of every run, warm-up included, on every device of the node.</param>
/// <param name="ExpectedMs">The time <paramref name="NodeWork"/> takes at the healthy threshold (0.90 × reference), rounded up.</param>
/// <param name="PeakMs">The time <paramref name="NodeWork"/> takes at the model's peak, rounded up.</param>
public sealed record KernelChallenge(KernelKind Kind, WorkSize Size, long WorkPerRun, long DurationFloorNs, long NodeWork, long ExpectedMs, long PeakMs)
{
    public string Kernel => KernelKinds.Name(Kind);
}

/// <summary>
/// The work the server sets for one sampled node: per kernel the size of a run, the timed runs
/// (each kernel also runs once untimed, as a warm-up), and what the whole node should take.
/// </summary>
public sealed record ChallengePlan(string Model, int Devices, int Runs, IReadOnlyList<KernelChallenge> Kernels)
{
    /// <summary>The node's whole work at the healthy threshold, in milliseconds: the sum over kernels.</summary>
    public long ExpectedMs => Kernels.Sum(k => k.ExpectedMs);

    /// <summary>The node's whole work at the model's peak, in milliseconds: no honest node commits sooner.</summary>
    public long PeakMs => Math.Max(1, Kernels.Sum(k => k.PeakMs));

    /// <summary>The stored form of the sizes: "tensor-fp16=8:8,packed-fp16=64:64,...", in kernel order.</summary>
    public string SizesText => string.Join(",", Kernels.Select(k => $"{k.Kernel}={k.Size.Items}:{k.Size.Iterations}"));

    public KernelChallenge? Of(string kernel) => Kernels.FirstOrDefault(k => k.Kernel == kernel);
}

/// <summary>
/// Sizes each kernel's work per device model, and reads a node's timing on the server's clock.
///
/// The work: the catalog's explicit sizes where it gives them (the CPU test fixture), otherwise
/// sized from the model's reference so that the runs of one kernel on one device (the warm-up and
/// the timed runs together) take <see cref="CapacitySettings.ChallengeKernelTime"/> at the healthy
/// threshold, 0.90 × reference, within the kernel's limits (<see cref="WorkShape"/>): a kernel the
/// limits cap takes less. The probe runs the devices of a node one after another, so the node's
/// expected time is the sum over devices and kernels.
///
/// The timing: the server measures T = commitment received − challenges issued. The node's
/// credited time is C = max(T − allowance, time of the work at the model's peak), and C is split
/// across kernels in proportion to their expected times; kernel k's rate is its node work over
/// its share, never above the model's peak. A commitment inside the deadline (T ≤ expected +
/// allowance) so gives every kernel at least the healthy threshold; one after it is late.
/// </summary>
internal static class ChallengeWork
{
    /// <summary>Iterations a computed size starts from (as the probe's full preset), so that items carry the parallelism.</summary>
    private static int BaseIterations(KernelKind kind) => kind switch
    {
        KernelKind.TensorFp16 => WorkShape.TensorIterationsMax,
        KernelKind.PackedFp16 or KernelKind.Fp32Fma => 32_768,
        _ => 10,
    };

    private static (int ItemsMax, int IterationsMax, int Multiple) Limits(KernelKind kind) => kind switch
    {
        KernelKind.TensorFp16 => (WorkShape.TensorWarpsMax, WorkShape.TensorIterationsMax, 1),
        KernelKind.PackedFp16 or KernelKind.Fp32Fma => (WorkShape.ThreadsMax, WorkShape.StepsMax, WorkShape.StepUnroll),
        _ => (WorkShape.BandwidthChunksMax, WorkShape.BandwidthPassesMax, 1),
    };

    /// <summary>The plan for a node of <paramref name="devices"/> devices of <paramref name="model"/>.</summary>
    public static ChallengePlan Plan(DeviceModel model, int devices, CapacitySettings settings)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(settings);
        ProbeProfile probe = model.Probe ?? throw new ArgumentException($"{model.Key} has no probe figures.", nameof(model));
        int launches = settings.ChallengeRunsPerKernel + 1;
        var sizes = new Dictionary<KernelKind, WorkSize>();
        foreach (KernelKind kind in KernelKinds.All)
        {
            if (probe.Work is { } explicitSizes)
            {
                sizes[kind] = explicitSizes[kind];
                continue;
            }

            // Work of one run = healthy rate (units/s) × kernel time / launches.
            Int128 healthyPerSecond = (Int128)probe.Reference.Of(kind) * 1_000_000 * AttestationJudge.HealthyFromReferenceTenths / 10;
            Int128 target = healthyPerSecond * (long)settings.ChallengeKernelTime.TotalMilliseconds / 1000 / launches;
            sizes[kind] = SizeFor(kind, target);
        }

        return From(model, devices, settings.ChallengeRunsPerKernel, sizes);
    }

    /// <summary>The plan for sizes already set (those stored with a nonce), with the model's current figures.</summary>
    public static ChallengePlan From(DeviceModel model, int devices, int runs, IReadOnlyDictionary<KernelKind, WorkSize> sizes)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(sizes);
        ProbeProfile probe = model.Probe ?? throw new ArgumentException($"{model.Key} has no probe figures.", nameof(model));
        var kernels = new List<KernelChallenge>(KernelKinds.All.Count);
        foreach (KernelKind kind in KernelKinds.All)
        {
            WorkSize size = sizes[kind];
            long perRun = WorkShape.WorkPerRun(kind, size);
            Int128 nodeWork = (Int128)perRun * (runs + 1) * devices;
            long reference = probe.Reference.Of(kind);
            long peak = probe.Peak.Of(kind);

            // Rates are 10^6 units per second, so a millisecond holds rate × 1000 units; at the
            // healthy threshold, 0.90 × reference, it holds reference × 900.
            long expectedMs = (long)CeilDiv(nodeWork, (Int128)reference * 900);
            long peakMs = (long)CeilDiv(nodeWork, (Int128)peak * 1000);

            // One run at 1.10 × peak takes perRun × 1000 / (1.10 × peak) ns = perRun × 10,000 / (peak × 11).
            long floorNs = (long)((Int128)perRun * 10_000 / ((Int128)peak * AttestationJudge.ForgedAbovePeakTenths));
            kernels.Add(new KernelChallenge(kind, size, perRun, floorNs, checked((long)nodeWork), Math.Max(1, expectedMs), peakMs));
        }

        return new ChallengePlan(model.Key, devices, runs, kernels);
    }

    /// <summary>Parses <see cref="ChallengePlan.SizesText"/>.</summary>
    public static IReadOnlyDictionary<KernelKind, WorkSize> ParseSizes(string text)
    {
        var sizes = new Dictionary<KernelKind, WorkSize>();
        foreach (string part in (text ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            string[] kindAndSize = part.Split('=');
            string[] numbers = kindAndSize.Length == 2 ? kindAndSize[1].Split(':') : [];
            if (numbers.Length != 2 || !KernelKinds.TryParse(kindAndSize[0], out KernelKind kind))
            {
                throw new FormatException($"'{part}' is not KERNEL=ITEMS:ITERATIONS.");
            }

            sizes[kind] = new WorkSize(int.Parse(numbers[0], CultureInfo.InvariantCulture), int.Parse(numbers[1], CultureInfo.InvariantCulture));
        }

        return sizes;
    }

    /// <summary>A size of about <paramref name="target"/> units per run within the kernel's limits: base iterations, then items, then more iterations where items run out.</summary>
    internal static WorkSize SizeFor(KernelKind kind, Int128 target)
    {
        (int itemsMax, int iterationsMax, int multiple) = Limits(kind);
        long perItemIteration = WorkShape.WorkPerRun(kind, new WorkSize(1, 1));
        Int128 units = Int128.Max(1, CeilDiv(target, perItemIteration));
        Int128 iterations = Int128.Max(BaseIterations(kind), CeilDiv(units, itemsMax));
        iterations = Int128.Min(iterationsMax, CeilDiv(iterations, multiple) * multiple);
        Int128 items = Int128.Clamp(CeilDiv(units, iterations), 1, itemsMax);
        return new WorkSize((int)items, (int)iterations);
    }

    /// <summary>The first kernel of the commitment's devices that is not exactly the set work (sizes and timed runs), with why; null when all are.</summary>
    public static (string Kernel, string Detail)? FirstDifference(IEnumerable<CommittedDevice> devices, ChallengePlan plan)
    {
        ArgumentNullException.ThrowIfNull(devices);
        ArgumentNullException.ThrowIfNull(plan);
        foreach (CommittedDevice device in devices)
        {
            if (device.Kernels.Count != plan.Kernels.Count || device.Kernels.Select(k => k.Kernel).Distinct(StringComparer.Ordinal).Count() != device.Kernels.Count)
            {
                return ("", $"device {device.Index} ran {device.Kernels.Count} distinct kernel(s); the challenge sets {plan.Kernels.Count}: {string.Join(", ", plan.Kernels.Select(k => k.Kernel))}");
            }

            foreach (CommittedKernel kernel in device.Kernels)
            {
                if (plan.Of(kernel.Kernel) is not { } set)
                {
                    return (kernel.Kernel, $"device {device.Index}: kernel '{kernel.Kernel}' is not one the challenge sets");
                }

                if (kernel.Items != set.Size.Items || kernel.Iterations != set.Size.Iterations || kernel.Runs != plan.Runs)
                {
                    return (kernel.Kernel, string.Create(CultureInfo.InvariantCulture,
                        $"device {device.Index}: {kernel.Kernel} ran {kernel.Items}x{kernel.Iterations} with {kernel.Runs} timed run(s); the challenge set {set.Size} with {plan.Runs} for {plan.Model}"));
                }
            }
        }

        return null;
    }

    /// <summary>The first reported run shorter than its kernel's physical floor; null when none is.</summary>
    public static (int Device, string Kernel, long DurationNs, long FloorNs)? FirstBelowFloor(ProbeReport report, ChallengePlan plan)
    {
        ArgumentNullException.ThrowIfNull(report);
        ArgumentNullException.ThrowIfNull(plan);
        foreach (DeviceReport device in report.Devices)
        {
            foreach (KernelMeasurement measurement in device.Measurements)
            {
                if (plan.Of(measurement.Kernel) is not { } set)
                {
                    continue;
                }

                foreach (long duration in measurement.DurationsNs)
                {
                    if (duration < set.DurationFloorNs)
                    {
                        return (device.Index, measurement.Kernel, duration, set.DurationFloorNs);
                    }
                }
            }
        }

        return null;
    }

    /// <summary>Each kernel's rate on the server's clock, in the probe's units (see the class summary), by kernel name.</summary>
    public static IReadOnlyDictionary<string, long> ServerRates(ChallengePlan plan, ProbeProfile probe, long elapsedMs, long allowanceMs)
    {
        ArgumentNullException.ThrowIfNull(plan);
        ArgumentNullException.ThrowIfNull(probe);
        long credited = Math.Max(elapsedMs - allowanceMs, plan.PeakMs);
        long expected = Math.Max(1, plan.ExpectedMs);
        var rates = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (KernelChallenge kernel in plan.Kernels)
        {
            Int128 shareMs = Int128.Max(1, (Int128)credited * kernel.ExpectedMs / expected);
            Int128 rate = kernel.NodeWork / (shareMs * 1000);
            rates[kernel.Kernel] = (long)Int128.Min(rate, probe.Peak.Of(kernel.Kind));
        }

        return rates;
    }

    private static Int128 CeilDiv(Int128 a, Int128 b) => (a + b - 1) / b;
}
