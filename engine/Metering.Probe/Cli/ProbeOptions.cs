using System.Security.Cryptography;
using Metering.Probe.Attestation.Checksums;
using Metering.Probe.Attestation.Results;
using Metering.Probe.Measurement;

namespace Metering.Probe.Cli;

/// <summary>The parsed command line, or the reason it could not be parsed.</summary>
internal sealed record ProbeOptions
{
    /// <summary>Arguments beyond this are a mistake, not a command line.</summary>
    public const int ArgumentsMax = 64;

    public bool ShowHelp { get; init; }

    public ProbeSettings? Settings { get; init; }

    public string? JsonPath { get; init; }

    public bool Verbose { get; init; } = true;

    public string? Error { get; init; }

    public const string HelpText = """
        metering-probe: measures the FP16 tensor, packed FP16, FP32 and memory-bandwidth capacity of
        each accelerator on this node through ILGPU, on inputs derived from a server-issued nonce,
        and commits to every result with a Merkle checksum the server can check exactly.

        Usage: metering-probe [options]              measure, and print the table
               metering-probe keygen --out FILE     make this node's signing key (keygen --help)
               metering-probe run --server URL ...  prove this node to the server (run --help)

        Options:
          --nonce HEX         The 32-byte nonce the server issued, as 64 hex digits. Without it the
                              probe draws a random nonce and the report is marked unattested.
                              With it, every kernel run needs its --work from the server's
                              challenge (and --runs its runs_per_kernel).
          --device KIND       auto (default: CUDA devices, else OpenCL GPUs; never the CPU: without
                              a GPU the probe says so and exits with 3), cuda, opencl, cpu (ILGPU's
                              CPU accelerator, only when asked), or all (every accelerator ILGPU
                              finds; a GPU seen through CUDA and OpenCL is then measured twice).
          --runs N            Timed runs per kernel after one warm-up run (1-100, default 5); the
                              median is reported.
          --size PRESET       auto (default: full on GPUs, small on the CPU), small, or full.
          --work KIND=I:N     An explicit work size for one kernel, repeatable. KIND is tensor,
                              fp16x2, fp32 or bandwidth; I is the items (warps, threads or 64 KiB
                              chunks), N the iterations (mma per chain, map steps (a multiple of 4),
                              or copy passes).
          --kernels LIST      Comma-separated kernels to run (default: tensor,fp16x2,fp32,bandwidth).
          --device-uuid ID    The UUID to report for ILGPU's CPU accelerator (tests and sandboxes:
                              a CPU has none), as registered with the node's key. Only with
                              --device cpu; a GPU's UUID comes from the hardware.
          --json FILE         Also write the machine-readable report (integers only) to FILE.
          --quiet             No progress lines on standard error.
          -h, --help          Show this help.

        Output: progress on standard error, a table on standard output. Exit codes: 0 success,
        1 a run failed, 2 bad options, 3 no GPU (--device auto) or no accelerator of the kind asked,
        4 the checksum self-check failed.
        """;

    public static ProbeOptions Parse(IReadOnlyList<string> args)
    {
        if (args.Count > ArgumentsMax)
        {
            return Fail($"at most {ArgumentsMax} arguments are accepted");
        }

        byte[]? nonce = null;
        DeviceFilter devices = DeviceFilter.Auto;
        int runs = 5;
        SizePreset size = SizePreset.Auto;
        var overrides = new Dictionary<KernelKind, WorkSize>();
        IReadOnlyList<KernelKind> kernels = KernelKinds.All;
        string? json = null;
        string? deviceUuid = null;
        bool verbose = true;
        for (int i = 0; i < args.Count; i++)
        {
            string option = args[i];
            if (option is "-h" or "--help")
            {
                return new ProbeOptions { ShowHelp = true };
            }

            if (option == "--quiet")
            {
                verbose = false;
                continue;
            }

            if (option is not ("--nonce" or "--device" or "--runs" or "--size" or "--work" or "--kernels" or "--json" or "--device-uuid"))
            {
                return Fail($"unknown option '{option}'");
            }

            if (i + 1 >= args.Count)
            {
                return Fail($"{option} needs a value");
            }

            string value = args[++i];
            string? error = option switch
            {
                "--nonce" => ParseNonce(value, out nonce),
                "--device" => ParseDevice(value, out devices),
                "--runs" => ParseRuns(value, out runs),
                "--size" => ParseSize(value, out size),
                "--work" => ParseWork(value, overrides),
                "--kernels" => ParseKernels(value, out kernels),
                "--device-uuid" => ParseDeviceUuid(value, out deviceUuid),
                _ => ParseJsonPath(value, out json),
            };
            if (error is not null)
            {
                return Fail($"{option}: {error}");
            }
        }

        if (deviceUuid is not null && devices != DeviceFilter.Cpu)
        {
            return Fail("--device-uuid: only the CPU accelerator takes a UUID from the command line; add --device cpu (a GPU's UUID is the hardware's)");
        }

        bool attested = nonce is not null;

        // An attested run does the work the server set, not a preset the probe chose: the server
        // refuses any other work (WORK_SIZE_REFUSED).
        KernelKind[] unset = kernels.Where(k => !overrides.ContainsKey(k)).ToArray();
        if (attested && unset.Length > 0)
        {
            return Fail($"--nonce: an attested run takes the work of every kernel from the server's challenge; give --work for {string.Join(", ", unset.Select(KernelKinds.Name))}");
        }

        return new ProbeOptions
        {
            JsonPath = json,
            Verbose = verbose,
            Settings = new ProbeSettings
            {
                Nonce = nonce ?? RandomNumberGenerator.GetBytes(InputKey.NonceBytes),
                Attested = attested,
                Devices = devices,
                Runs = runs,
                Size = size,
                WorkOverrides = overrides,
                Kernels = kernels,
                CpuDeviceUuid = deviceUuid,
            },
        };
    }

    private static ProbeOptions Fail(string error) => new() { Error = error };

    private static string? ParseNonce(string value, out byte[]? nonce)
    {
        nonce = null;
        if (value.Length != InputKey.NonceBytes * 2)
        {
            return $"a nonce is {InputKey.NonceBytes * 2} hex digits ({InputKey.NonceBytes} bytes), not {value.Length} characters";
        }

        if (!HexBytes.TryParse(value, out byte[] bytes))
        {
            return "a nonce holds hex digits only (0-9, a-f)";
        }

        nonce = bytes;
        return null;
    }

    private static string? ParseDevice(string value, out DeviceFilter devices)
    {
        devices = value switch
        {
            "auto" => DeviceFilter.Auto,
            "all" => DeviceFilter.All,
            "cpu" => DeviceFilter.Cpu,
            "cuda" => DeviceFilter.Cuda,
            "opencl" => DeviceFilter.OpenCL,
            _ => (DeviceFilter)(-1),
        };
        return Enum.IsDefined(devices) ? null : $"'{value}' is not one of auto, cuda, opencl, cpu, all";
    }

    private static string? ParseRuns(string value, out int runs) =>
        int.TryParse(value, System.Globalization.NumberStyles.None, null, out runs) && runs >= 1 && runs <= ProbeSettings.RunsMax
            ? null
            : $"'{value}' is not a whole number from 1 to {ProbeSettings.RunsMax}";

    private static string? ParseSize(string value, out SizePreset size)
    {
        size = value switch
        {
            "auto" => SizePreset.Auto,
            "small" => SizePreset.Small,
            "full" => SizePreset.Full,
            _ => (SizePreset)(-1),
        };
        return Enum.IsDefined(size) ? null : $"'{value}' is not one of auto, small, full";
    }

    private static string? ParseWork(string value, Dictionary<KernelKind, WorkSize> overrides)
    {
        string[] kindAndSize = value.Split('=');
        string[] numbers = kindAndSize.Length == 2 ? kindAndSize[1].Split(':') : [];
        if (numbers.Length != 2)
        {
            return $"'{value}' is not KIND=ITEMS:ITERATIONS, for example tensor=1024:4096";
        }

        if (!KernelKinds.TryParse(kindAndSize[0], out KernelKind kind))
        {
            return $"'{kindAndSize[0]}' is not one of tensor, fp16x2, fp32, bandwidth";
        }

        if (!int.TryParse(numbers[0], System.Globalization.NumberStyles.None, null, out int items)
            || !int.TryParse(numbers[1], System.Globalization.NumberStyles.None, null, out int iterations))
        {
            return $"'{kindAndSize[1]}' is not two whole numbers ITEMS:ITERATIONS";
        }

        var size = new WorkSize(items, iterations);
        if (WorkShape.Validate(kind, size) is string error)
        {
            return error;
        }

        return overrides.TryAdd(kind, size) ? null : $"{KernelKinds.Name(kind)} is given twice";
    }

    private static string? ParseKernels(string value, out IReadOnlyList<KernelKind> kernels)
    {
        var list = new List<KernelKind>();
        kernels = list;
        foreach (string name in value.Split(','))
        {
            if (!KernelKinds.TryParse(name, out KernelKind kind))
            {
                return $"'{name}' is not one of tensor, fp16x2, fp32, bandwidth";
            }

            if (list.Contains(kind))
            {
                return $"'{name}' is listed twice";
            }

            list.Add(kind);
        }

        return null;
    }

    /// <summary>What a server registers: 1 to 96 characters from [A-Za-z0-9._:/-].</summary>
    private static string? ParseDeviceUuid(string value, out string? uuid)
    {
        uuid = value;
        return DeviceUuidError(value);
    }

    /// <summary>Why a device UUID is not one a server registers (1 to 96 characters from [A-Za-z0-9._:/-]), or null when it is.</summary>
    public static string? DeviceUuidError(string value) =>
        value.Length is >= 1 and <= 96 && value.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or ':' or '/' or '-')
            ? null
            : $"'{value}' is not 1 to 96 characters from [A-Za-z0-9._:/-]";

    private static string? ParseJsonPath(string value, out string? json)
    {
        json = value;
        return value.Length == 0 || value.StartsWith('-') ? $"'{value}' is not a file name" : null;
    }
}
