using System.Diagnostics;
using System.Reflection;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;
using Metering.Probe.Attestation.Checksums;
using Metering.Probe.Attestation.Results;
using Metering.Probe.Reporting;
using Microsoft.Extensions.Logging;

namespace Metering.Probe.Measurement;

/// <summary>No accelerator matched the device filter.</summary>
internal sealed class NoAcceleratorException(string message) : Exception(message);

/// <summary>
/// Runs the probe in-process: enumerates accelerators through ILGPU, measures each kernel on each
/// selected device (one warm-up run, then the timed runs) and commits to the outputs. The CPU
/// accelerator needs nothing but .NET, so tests run the whole probe with
/// <see cref="DeviceFilter.Cpu"/> and <see cref="SizePreset.Small"/>.
/// </summary>
public sealed class ProbeRunner
{
    private readonly ProbeSettings _settings;
    private readonly ILogger _logger;

    public ProbeRunner(ProbeSettings settings, ILogger logger)
    {
        ArgumentNullException.ThrowIfNull(settings);
        ArgumentNullException.ThrowIfNull(logger);
        if (settings.Nonce.Length != InputKey.NonceBytes)
        {
            throw new ArgumentException($"A nonce is {InputKey.NonceBytes} bytes.", nameof(settings));
        }

        if (settings.Runs < 1 || settings.Runs > ProbeSettings.RunsMax)
        {
            throw new ArgumentException($"Runs must be between 1 and {ProbeSettings.RunsMax}.", nameof(settings));
        }

        foreach ((KernelKind kind, WorkSize size) in settings.WorkOverrides)
        {
            if (WorkShape.Validate(kind, size) is string error)
            {
                throw new ArgumentException(error, nameof(settings));
            }
        }

        _settings = settings;
        _logger = logger;
    }

    /// <summary>The probe's version, reported with every result.</summary>
    public static string Version { get; } =
        typeof(ProbeRunner).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion.Split('+')[0] ?? "0.0.0";

    /// <exception cref="NoAcceleratorException">No accelerator matches the device filter.</exception>
    public ProbeReport Run(CancellationToken cancellationToken = default)
    {
        if (!_settings.Attested)
        {
            ProbeLog.Unattested(_logger);
        }

        using Context context = CreateContext(_settings.Devices);
        IReadOnlyList<Device> devices = Devices(context, _settings.Devices);
        if (_settings.CpuDeviceUuid is not null && devices.Any(d => d.AcceleratorType != AcceleratorType.CPU))
        {
            throw new ArgumentException($"A device UUID is given only to the CPU accelerator; this run measures {Describe(devices)}, whose UUIDs are the hardware's.");
        }

        ProbeLog.DevicesFound(_logger, devices.Count, Describe(devices));
        long createdAtUnixMs = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
        var reports = new List<DeviceReport>();
        for (int index = 0; index < devices.Count; index++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            reports.Add(MeasureDevice(context, devices[index], index, cancellationToken));
        }

        return new ProbeReport
        {
            Format = ProbeReport.CurrentFormat,
            ProbeVersion = Version,
            Nonce = _settings.Nonce,
            Attested = _settings.Attested,
            CreatedAtUnixMs = createdAtUnixMs,
            RunsPerKernel = _settings.Runs,
            Devices = reports,
        };
    }

    /// <summary>
    /// The devices a run with this filter measures, each with the UUID its report will carry (empty
    /// where none can be read, with the reason), without measuring anything: `run` checks them
    /// against the node key's registered UUIDs before it starts the challenges.
    /// </summary>
    public static IReadOnlyList<(string Name, string Uuid, string? Problem)> DeviceUuids(DeviceFilter filter, string? cpuDeviceUuid)
    {
        using Context context = CreateContext(filter);
        return [.. Devices(context, filter).Select(device =>
        {
            string uuid = UuidOf(device, cpuDeviceUuid, out string? problem);
            return (device.Name, uuid, problem);
        })];
    }

    private static Context CreateContext(DeviceFilter filter) => Context.Create(builder =>
    {
        builder.Optimize(OptimizationLevel.O2);
        // Auto looks for GPUs only: a CPU's figures count for nothing, and a run that measured
        // one without being asked would look like a node with no accelerator that passed a probe.
        if (filter is DeviceFilter.All or DeviceFilter.Cpu)
        {
            builder.DefaultCPU();
        }

        if (filter is DeviceFilter.Auto or DeviceFilter.All or DeviceFilter.Cuda)
        {
            builder.Cuda();
        }

        if (filter is DeviceFilter.Auto or DeviceFilter.All or DeviceFilter.OpenCL)
        {
            builder.OpenCL();
        }
    });

    private static IReadOnlyList<Device> Devices(Context context, DeviceFilter filter)
    {
        IReadOnlyList<Device> devices = Select(context.Devices, filter);
        if (devices.Count == 0 && filter == DeviceFilter.Auto)
        {
            throw new NoAcceleratorException(
                $"No GPU found: no CUDA device and no OpenCL GPU (ILGPU sees: {Describe(context.Devices)}). The probe does not fall back to the CPU by itself; "
                + "check the NVIDIA driver (nvidia-smi), or pass --device cpu for a smoke run on the CPU, whose figures attest no GPU.");
        }

        if (devices.Count == 0)
        {
            throw new NoAcceleratorException($"No {filter.ToString().ToLowerInvariant()} accelerator found (ILGPU sees: {Describe(context.Devices)}).");
        }

        return devices;
    }

    /// <summary>
    /// The UUID a device's report carries, known before any kernel runs because it enters the
    /// device's nonce: on the CPU accelerator the --device-uuid the probe was given; on CUDA the
    /// driver's (<see cref="CudaDeviceUuid"/>); none through OpenCL, which exposes no UUID. The
    /// server refuses a report device whose UUID the node's key does not register.
    /// </summary>
    private static string UuidOf(Device device, string? cpuDeviceUuid, out string? problem)
    {
        problem = null;
        switch (device)
        {
            case CudaDevice cuda:
                return CudaDeviceUuid.TryRead(cuda.DeviceId, out problem) ?? string.Empty;
            case { AcceleratorType: AcceleratorType.CPU }:
                return cpuDeviceUuid ?? string.Empty;
            default:
                problem = "OpenCL exposes no device UUID; measure an NVIDIA GPU through CUDA (--device cuda)";
                return string.Empty;
        }
    }

    private static List<Device> Select(IEnumerable<Device> all, DeviceFilter filter)
    {
        List<Device> OfType(AcceleratorType type) => all.Where(d => d.AcceleratorType == type).ToList();
        return filter switch
        {
            DeviceFilter.All => all.ToList(),
            DeviceFilter.Cpu => OfType(AcceleratorType.CPU),
            DeviceFilter.Cuda => OfType(AcceleratorType.Cuda),
            DeviceFilter.OpenCL => OfType(AcceleratorType.OpenCL),
            _ => OfType(AcceleratorType.Cuda) is { Count: > 0 } cuda ? cuda
                : all.Where(IsOpenClGpu).ToList(),
        };
    }

    /// <summary>An OpenCL device that is not a CPU: an OpenCL CPU driver (pocl, Intel's) would be the CPU fallback by another door.</summary>
    private static bool IsOpenClGpu(Device device) =>
        device is CLDevice openCl && !openCl.DeviceType.HasFlag(CLDeviceType.CL_DEVICE_TYPE_CPU);

    private static string Describe(IEnumerable<Device> devices)
    {
        string text = string.Join(", ", devices.Select(d => $"{d.Name} ({TypeName(d.AcceleratorType)})"));
        return text.Length == 0 ? "none" : text;
    }

    private DeviceReport MeasureDevice(Context context, Device device, int index, CancellationToken cancellationToken)
    {
        ProbeLog.DeviceStarting(_logger, index, device.Name, TypeName(device.AcceleratorType), device.NumMultiprocessors, MemoryBytes(device) / (1024 * 1024));
        using Accelerator accelerator = device.CreateAccelerator(context);
        string uuid = UuidOf(device, _settings.CpuDeviceUuid, out _);
        byte[] deviceNonce = DeviceNonce.Derive(_settings.Nonce, index, uuid);
        var measurements = new List<KernelMeasurement>();
        foreach (KernelKind kind in _settings.Kernels)
        {
            cancellationToken.ThrowIfCancellationRequested();
            measurements.Add(MeasureKernel(accelerator, device, index, kind, deviceNonce));
        }

        return new DeviceReport
        {
            Index = index,
            AcceleratorType = TypeName(device.AcceleratorType),
            ModelName = device.Name,
            Multiprocessors = device.NumMultiprocessors,
            ClockMhz = ClockMhz(device),
            MemoryBytes = MemoryBytes(device),
            Uuid = uuid,
            PciBusId = device is CudaDevice cuda ? cuda.NVMLPCIBusId : string.Empty,
            Measurements = measurements,
        };
    }

    /// <param name="deviceNonce">The device's own nonce (<see cref="DeviceNonce"/>), from which its inputs and its challenge come.</param>
    private KernelMeasurement MeasureKernel(Accelerator accelerator, Device device, int index, KernelKind kind, byte[] deviceNonce)
    {
        WorkSize size = SizeFor(kind, device);
        string name = KernelKinds.Name(kind);
        InputKey key = InputKey.Derive(deviceNonce, kind, size);
        using KernelRun run = KernelRun.Create(accelerator, kind, key, size);
        ProbeLog.KernelStarting(_logger, index, name, run.ArithmeticPath, size.Items, size.Iterations);

        // The warm-up run compiles and loads the kernel and brings the clocks up; it is not timed.
        run.Launch();
        accelerator.Synchronize();

        // Launch plus synchronise is timed on the host: at 10 ms and more per run, the few
        // microseconds of launch overhead are below the noise, and the clock is the same for every backend.
        long[] durationsNs = new long[_settings.Runs];
        for (int r = 0; r < durationsNs.Length; r++)
        {
            long start = Stopwatch.GetTimestamp();
            run.Launch();
            accelerator.Synchronize();
            TimeSpan elapsed = Stopwatch.GetElapsedTime(start);
            durationsNs[r] = Math.Max(1, (long)Math.Round(elapsed.TotalNanoseconds));
            ProbeLog.RunTimed(_logger, index, name, r + 1, durationsNs.Length, elapsed.TotalMilliseconds);
        }

        long medianNs = MeasurementMath.MedianNs(durationsNs);
        long workPerRun = WorkShape.WorkPerRun(kind, size);
        long rate = MeasurementMath.Rate(kind, workPerRun, medianNs);
        KernelChecksum checksum = Commitment.FromLeafHashes(deviceNonce, kind, size, run.HashLeaves());
        ProbeLog.KernelDone(_logger, index, name, rate, KernelKinds.RateUnit(kind), Convert.ToHexStringLower(checksum.Root), checksum.Openings.Count);
        return new KernelMeasurement
        {
            Kernel = name,
            ArithmeticPath = run.ArithmeticPath,
            Items = size.Items,
            Iterations = size.Iterations,
            WorkPerRun = workPerRun,
            RateUnit = KernelKinds.RateUnit(kind),
            DurationsNs = durationsNs,
            MedianDurationNs = medianNs,
            MedianRate = rate,
            Checksum = checksum,
        };
    }

    private WorkSize SizeFor(KernelKind kind, Device device)
    {
        if (_settings.WorkOverrides.TryGetValue(kind, out WorkSize explicitSize))
        {
            return explicitSize;
        }

        bool full = _settings.Size == SizePreset.Full || (_settings.Size == SizePreset.Auto && device.AcceleratorType != AcceleratorType.CPU);
        return full
            ? WorkSizes.Full(kind, device.NumMultiprocessors, device.MaxNumThreadsPerMultiprocessor, MemoryBytes(device))
            : WorkSizes.Small(kind);
    }

    /// <summary>ILGPU gives the CPU accelerator a memory size of long.MaxValue; the memory the process may use is the honest figure.</summary>
    private static long MemoryBytes(Device device) =>
        device.AcceleratorType == AcceleratorType.CPU ? GC.GetGCMemoryInfo().TotalAvailableMemoryBytes : device.MemorySize;

    /// <summary>
    /// ILGPU reports CUDA's clock attribute, which the driver gives in kHz, and OpenCL's maximum
    /// clock in MHz; a figure above 100,000 can only be kHz.
    /// </summary>
    private static int ClockMhz(Device device)
    {
        int clock = device switch
        {
            CudaDevice cuda => cuda.ClockRate,
            CLDevice openCl => openCl.ClockRate,
            _ => 0,
        };
        return clock > 100_000 ? clock / 1000 : clock;
    }

    internal static string TypeName(AcceleratorType type) => type switch
    {
        AcceleratorType.Cuda => "cuda",
        AcceleratorType.OpenCL => "opencl",
        AcceleratorType.CPU => "cpu",
        _ => type.ToString().ToLowerInvariant(),
    };
}
