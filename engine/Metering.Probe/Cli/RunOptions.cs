using Metering.Client.Channels;
using Metering.Probe.Measurement;

namespace Metering.Probe.Cli;

/// <summary>The parsed `metering-probe run` command line, or the reason it could not be parsed.</summary>
internal sealed record RunOptions
{
    public const string ApiKeyVariable = "METERING_API_KEY";

    public const string ServerVariable = "METERING_SERVER";

    public const string CaVariable = "METERING_CA";

    public const string HelpText = """
        metering-probe run: proves this node's capacity to the Metering server in one call: starts
        (or joins) the challenges of the provider's open validation, runs the probe on exactly the
        nonce, runs and work the server set for this node, commits to the results with the node's
        key before the deadline the server times, then submits the signed report and prints what
        the server found. A node outside the sample has nothing to run (exit 0).

        Usage: metering-probe run --server URL --code CODE --node-id NODE --key FILE [options]

        Options:
          --server URL      The Metering server, https://HOST:PORT (http:// only to this machine), or
                            several stateless servers on one database, comma-separated
                            (https://a:7390,https://b:7390): calls go round-robin to those that answer.
                            Defaults to METERING_SERVER.
          --code CODE       The provider's credit code, as the API key's holder.
          --node-id NODE    This node, as the inventory declares it (`metering capacity inventory declare`).
          --key FILE        The node's private key (`metering-probe keygen --out FILE`), whose public
                            key is registered for NODE (`metering capacity key register`).
          --api-key KEY     The provider's API key. Defaults to METERING_API_KEY.
          --ca FILE         PEM of the CA that issued the server's certificate; only it is trusted.
                            Defaults to METERING_CA, else the system's roots.
          --device KIND     auto (default: the node's GPUs; without one the run stops, exit 3),
                            cuda, or cpu (ILGPU's CPU accelerator: test fleets only). The server
                            checks every device's UUID against those registered with the node's
                            key; on CUDA it is read from the driver (as nvidia-smi -L prints it)
                            and checked before the challenges start (exit 2 when unreadable or not
                            registered). opencl is refused: OpenCL exposes no UUID.
          --device-uuid ID  With --device cpu, required: the UUID the CPU accelerator reports, as
                            registered with the node's key (`metering capacity key register
                            --device-uuid ID`); it enters the report and the device's nonce.
          --json FILE       Also keep the submitted report in FILE.
          --quiet           No progress lines on standard error.
          -h, --help        Show this help.

        Output: progress on standard error; the node's outcome, a table of its devices and kernels
        against the catalog figures, and the fleet validation's state on standard output.
        Exit codes: 0 the node passed, or is not sampled; 1 the run failed; 2 bad options, a GPU
        device whose UUID cannot be read, or a --device-uuid the node's key does not register
        (nothing was measured or committed);
        3 no GPU (or none of --device); 4 the probe's own checksum check failed (nothing was sent);
        5 the server refused a call or could not be reached (its status and reason are printed), or
        the server lists this key as awaiting an operator's approval (NODE_KEY_NOT_APPROVED: `run`
        stops before the challenges start);
        6 the node failed (its report was judged so, or its commitment came after the deadline);
        7 a device awaits an operator's review.
        """;

    public bool ShowHelp { get; init; }

    public string? Error { get; init; }

    /// <summary>The server, or the servers balanced round-robin, that --server names.</summary>
    public ServerList Servers { get; init; } = null!;

    public string CreditCode { get; init; } = "";

    public string NodeId { get; init; } = "";

    public string KeyPath { get; init; } = "";

    public string ApiKey { get; init; } = "";

    public string? CaPath { get; init; }

    public DeviceFilter Devices { get; init; } = DeviceFilter.Auto;

    public string? CpuDeviceUuid { get; init; }

    public string? JsonPath { get; init; }

    public bool Verbose { get; init; } = true;

    public static RunOptions Parse(IReadOnlyList<string> args, Func<string, string?> environment)
    {
        if (args.Count > ProbeOptions.ArgumentsMax)
        {
            return Fail($"at most {ProbeOptions.ArgumentsMax} arguments are accepted");
        }

        var values = new Dictionary<string, string>();
        bool verbose = true;
        for (int i = 0; i < args.Count; i++)
        {
            string option = args[i];
            if (option is "-h" or "--help")
            {
                return new RunOptions { ShowHelp = true };
            }

            if (option == "--quiet")
            {
                verbose = false;
                continue;
            }

            if (option is not ("--server" or "--code" or "--node-id" or "--key" or "--api-key" or "--ca" or "--device" or "--device-uuid" or "--json"))
            {
                return Fail($"unknown option '{option}'");
            }

            if (i + 1 >= args.Count || args[i + 1].Length == 0)
            {
                return Fail($"{option} needs a value");
            }

            if (!values.TryAdd(option, args[++i]))
            {
                return Fail($"{option} is given twice");
            }
        }

        string? Value(string option, string? variable = null) =>
            values.TryGetValue(option, out string? value) ? value : variable is null ? null : environment(variable) is { Length: > 0 } set ? set : null;

        string? server = Value("--server", ServerVariable);
        string? apiKey = Value("--api-key", ApiKeyVariable);
        foreach ((string name, string? value) in new[] { ("--server", server), ("--code", Value("--code")), ("--node-id", Value("--node-id")), ("--key", Value("--key")) })
        {
            if (value is null)
            {
                return Fail(name == "--server" ? $"--server URL is required (or set {ServerVariable})" : $"{name} is required");
            }
        }

        if (apiKey is null)
        {
            return Fail($"give --api-key or set {ApiKeyVariable}: the provider's API key");
        }

        if (!ServerList.TryParse(server!, "--server", out ServerList? servers, out string? badServer))
        {
            return Fail(badServer!);
        }

        DeviceFilter devices = DeviceFilter.Auto;
        if (Value("--device") is string device)
        {
            devices = device switch
            {
                "auto" => DeviceFilter.Auto,
                "cpu" => DeviceFilter.Cpu,
                "cuda" => DeviceFilter.Cuda,
                "opencl" => DeviceFilter.OpenCL,
                _ => (DeviceFilter)(-1),
            };
            if (!Enum.IsDefined(devices))
            {
                // `all` is left out: it measures a GPU seen through CUDA and OpenCL twice, which no node declares.
                return Fail($"--device '{device}' is not one of auto, cuda, opencl, cpu");
            }
        }

        string? deviceUuid = Value("--device-uuid");
        if (devices == DeviceFilter.OpenCL)
        {
            // The server compares every report device's UUID with the node key's registered ones
            // (DEVICE_UUID_MISMATCH), and OpenCL exposes none: stopping here keeps a run that
            // cannot pass from starting every sampled node's challenge clock.
            return Fail("--device opencl cannot attest: OpenCL exposes no device UUID, which the server checks against the node key's; use --device cuda (or auto)");
        }

        if (devices != DeviceFilter.Cpu)
        {
            return deviceUuid is not null
                ? Fail("--device-uuid: only the CPU accelerator takes a UUID from the command line; add --device cpu (a GPU's UUID is read from its driver)")
                : Options(null);
        }

        if (deviceUuid is null)
        {
            return Fail("--device cpu needs --device-uuid ID: the UUID registered with the node's key (`metering capacity key register --device-uuid ID`)");
        }

        if (ProbeOptions.DeviceUuidError(deviceUuid) is string badUuid)
        {
            return Fail($"--device-uuid: {badUuid}");
        }

        return Options(deviceUuid);

        RunOptions Options(string? cpuDeviceUuid) => new()
        {
            Servers = servers!,
            CreditCode = Value("--code")!,
            NodeId = Value("--node-id")!,
            KeyPath = Value("--key")!,
            ApiKey = apiKey,
            CaPath = Value("--ca", CaVariable),
            Devices = devices,
            CpuDeviceUuid = cpuDeviceUuid,
            JsonPath = Value("--json"),
            Verbose = verbose,
        };
    }

    private static RunOptions Fail(string error) => new() { Error = error };
}
