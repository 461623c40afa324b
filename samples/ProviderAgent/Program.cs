using System.Globalization;
using System.Net.Sockets;
using Grpc.Core;
using Grpc.Net.Client;
using Metering.Client.Channels;
using Metering.Client.Receipts;
using Metering.Client.Simulation;
using Metering.Client.Streaming;
using Metering.Client.Utilisation;
using Metering.Samples.ProviderAgent;

// A provider agent: streams one simulated site's day of usage to a Metering server.
//   provider-agent --server https://metering.example.org:7390[,https://...] --api-key KEY [--ca ca.pem]
//                  [--client-cert agent.pem --client-key agent.key] [--stream ID] [--day 2026-11-26]
//                  [--jobs-per-interval 100] [--drop-once-after N] [--live true] [--heartbeat-seconds N]
//                  [--receipts receipts.jsonl] [--dcgm-url http://HOST:9400/metrics | --nvidia-smi PROGRAM]
const string Usage = """
    Usage: provider-agent --server URL --api-key KEY [--ca FILE] [--client-cert FILE --client-key FILE]
                          [--stream ID] [--site 0|1|2] [--pools MODEL:DEVICES[,...]] [--holders CODE[,...]]
                          [--day YYYY-MM-DD]
                          [--jobs-per-interval N] [--drop-once-after N] [--live true] [--heartbeat-seconds N]
                          [--receipts FILE]
                          [--dcgm-url URL | --nvidia-smi PROGRAM] [--sm-samples N] [--sm-sample-seconds N]
    Streams a simulated site's day of GPU usage (5-minute metering intervals) and resumes
    after a disconnect. The API key may also come from METERING_API_KEY.
    --day defaults to yesterday by the server's clock (Asia/Shanghai), which in a sandbox
    runs ahead of this machine's. --pools replaces the site's demo devices with these, for
    example H100-SXM:256, so that the usage fits what the provider declared when it applied.
    --holders gives the credit codes of the organisations the jobs run for (default: a dozen
    sample codes), for example the holder of a contract with the provider.
    URL is https://HOST:PORT (or http:// to a server on this machine); several servers on one
    database as https://a:7390,https://b:7390, balanced round-robin, and a stream that loses
    its server resumes on another. --ca FILE trusts only the CA in that PEM file for the
    servers' certificates; --client-cert and --client-key (PEM) give the client certificate
    a key pinned to one needs (mutual TLS).
    --live true sends each interval once it has ended, as a running scheduler would, and waits
    in between; --heartbeat-seconds N (off by default) sends a heartbeat after N seconds of
    waiting, so that the audit can tell an idle platform from a dead one.
    --receipts FILE appends the server's signed receipt of every acknowledgement to FILE
    (JSON Lines); `metering audit check-receipts FILE` checks them against the database later.
    --dcgm-url http://HOST:9400/metrics reads DCGM_FI_PROF_SM_ACTIVE (a fraction from 0 to 1
    per GPU) from dcgm-exporter's Prometheus text, --sm-samples times (default 3),
    --sm-sample-seconds apart (default 5), before anything is sent; each GPU's mean becomes
    whole basis points (decimal arithmetic, rounded half away from zero) and every record
    carries sm_active_bp, the mean of its devices' GPUs rounded the same way. Device NNNN of
    the simulated site (the number in its UUID GPU-SITE-NNNN) is the exporter's GPU
    NNNN mod G, counting the G GPUs it lists in gpu-index order (gpu="NNNN mod G" when they
    are 0..G-1); a record listing no UUIDs (a job of more than 8 devices) takes the mean of
    all of them. --nvidia-smi PROGRAM reads nvidia-smi --query-gpu=index,utilization.gpu
    --format=csv,noheader,nounits instead: utilization.gpu counts a GPU busy when any kernel
    runs, so it is coarser than SM activity and reads high. Without either option records
    carry no sm_active_bp. A source that does not answer (connection, HTTP status, program
    failure) stops the agent with exit 5, one that answers with no usable figures (no
    DCGM_FI_PROF_SM_ACTIVE, garbage, a value above 1) with exit 2; nothing is sent then.
    Exit codes, as the metering CLI's: 0 done; 1 unexpected error; 2 usage error (nothing sent);
    4 refused by the server; 5 no server answers.
    """;

if (args.Contains("--help", StringComparer.Ordinal) || args is ["-h"])
{
    Console.WriteLine(Usage);
    return 0;
}

var arguments = Arguments.Parse(args, out string? problem);
if (arguments is null)
{
    if (problem is not null)
    {
        Console.Error.WriteLine($"error: {problem}");
    }

    Console.Error.WriteLine(Usage);
    return 2;
}

SortedDictionary<int, uint>? gpuMeansBp = null;
if (arguments.ActivitySource is not null)
{
    using var http = new HttpClient();
    var sampler = new SmActivitySampler(arguments.ActivitySource.StartsWith("nvidia-smi:", StringComparison.Ordinal)
        ? GpuActivitySources.NvidiaSmi(arguments.ActivitySource["nvidia-smi:".Length..])
        : GpuActivitySources.DcgmExporter(http, new Uri(arguments.ActivitySource)));
    try
    {
        await sampler.SampleAsync(arguments.SmSamples, TimeSpan.FromSeconds(arguments.SmSampleSeconds), CancellationToken.None);
    }
    catch (GpuActivityException e)
    {
        Console.Error.WriteLine($"error: {e.Message}");
        return e.Problem == GpuActivityProblem.Unreachable ? 5 : 2;
    }

    gpuMeansBp = sampler.TakeMeansBp();
    Console.Error.WriteLine($"SM activity over {arguments.SmSamples} sample(s): {string.Join(", ", gpuMeansBp.Select(gpu => $"gpu {gpu.Key} {gpu.Value} bp"))}");
}

GrpcChannel channel;
try
{
    channel = MeteringChannel.Open(new ChannelSettings(arguments.Server, arguments.Ca, arguments.ClientCertificate, arguments.ClientKey));
}
catch (ArgumentException e)
{
    // A certificate file that is missing or unreadable, or an http:// address to another machine.
    Console.Error.WriteLine($"error: {e.Message}");
    return 2;
}

using GrpcChannel opened = channel;
DateOnly day;
try
{
    day = arguments.Day ?? await ServerClock.YesterdayAsync(channel, arguments.ApiKey);
}
catch (RpcException e)
{
    return Refused(e);
}

DateTimeOffset dayStart = new(day.ToDateTime(TimeOnly.MinValue), TimeSpan.FromHours(8));
SimulatedCluster site = SimulatedCluster.DemoSites(dayStart, arguments.JobsPerInterval, seed: 2025)[arguments.Site];
if (arguments.Pools is not null || arguments.Holders is not null)
{
    site = new SimulatedCluster(site.Site, arguments.Pools ?? [.. site.Pools], dayStart, arguments.JobsPerInterval, seed: 2025 + 1 + (ulong)arguments.Site, arguments.Holders);
}

Console.Error.WriteLine($"streaming {day:yyyy-MM-dd} of site {site.Site} ({string.Join(", ", site.Pools.Select(pool => $"{pool.Model}:{pool.Devices}"))})");
using ReceiptsFile? receipts = arguments.ReceiptsPath is string receiptsPath ? new ReceiptsFile(receiptsPath) : null;
var streamer = new UsageStreamer(channel, arguments.ApiKey, new StreamerOptions
{
    DropOnceAfterRecords = arguments.DropOnceAfter,
    Reconnecting = reason => Console.Error.WriteLine($"reconnecting: {reason}"),
    RecordedThrough = arguments.Live ? () => site.RecordedThrough(DateTimeOffset.UtcNow) : null,
    HeartbeatInterval = arguments.HeartbeatSeconds is int seconds ? TimeSpan.FromSeconds(seconds) : null,
    Receipts = receipts,
});

try
{
    Func<ulong, Metering.Protocol.V1.UsageRecord> recordAt = gpuMeansBp is null ? site.RecordAt : sequence => WithSmActivity(site.RecordAt(sequence), gpuMeansBp);
    StreamResult result = await streamer.RunAsync(arguments.StreamId ?? site.Site, recordAt, site.RecordsPerDay, CancellationToken.None);
    Console.WriteLine($"stream {result.StreamId}: committed {result.CommittedSequence} records over {result.Connections} connection(s); chain head {Convert.ToHexStringLower(result.ChainHead)}");
    if (receipts is not null)
    {
        Console.WriteLine($"kept {receipts.Written} receipt(s) in {arguments.ReceiptsPath}");
    }

    return 0;
}
catch (RpcException e)
{
    return Refused(e);
}

// The mapping of simulated devices to the exporter's GPUs that --help states. The figures were
// taken before streaming and never change, so a record resent after a reconnect is the same record.
static Metering.Protocol.V1.UsageRecord WithSmActivity(Metering.Protocol.V1.UsageRecord record, SortedDictionary<int, uint> gpuMeansBp)
{
    int[] gpus = [.. gpuMeansBp.Keys];
    IEnumerable<int> used = record.DeviceUuids.Count == 0
        ? gpus
        : record.DeviceUuids.Select(uuid => gpus[(int)(ulong.Parse(uuid[(uuid.LastIndexOf('-') + 1)..], CultureInfo.InvariantCulture) % (ulong)gpus.Length)]);
    if (SmActivitySampler.MeanBp(gpuMeansBp, used) is uint bp)
    {
        record.SmActiveBp = bp;
    }

    return record;
}

static int Refused(RpcException e)
{
    if (e.InnerException is HttpRequestException or SocketException)
    {
        Console.Error.WriteLine($"error: no Metering server answers ({e.InnerException.Message})");
        return 5;
    }

    Console.Error.WriteLine($"refused: {e.StatusCode} {MeteringChannel.ReasonOf(e)}: {e.Status.Detail}");
    return 4;
}

internal sealed record Arguments(ServerList Server, string ApiKey, string? StreamId, int Site, DevicePool[]? Pools, string[]? Holders, DateOnly? Day, int JobsPerInterval, ulong? DropOnceAfter, bool Live, int? HeartbeatSeconds,
    string? Ca, string? ClientCertificate, string? ClientKey, string? ReceiptsPath, string? ActivitySource, int SmSamples, int SmSampleSeconds)
{
    /// <summary>The arguments, or null with what is wrong in <paramref name="problem"/> (null when only the usage needs showing).</summary>
    public static Arguments? Parse(string[] args, out string? problem)
    {
        problem = null;
        var values = new Dictionary<string, string>(StringComparer.Ordinal);
        for (int i = 0; i + 1 < args.Length; i += 2)
        {
            if (!args[i].StartsWith("--", StringComparison.Ordinal))
            {
                return null;
            }

            values[args[i][2..]] = args[i + 1];
        }

        if (args.Length % 2 != 0 || !values.TryGetValue("server", out string? server))
        {
            return null;
        }

        if (!ServerList.TryParse(server, "--server", out ServerList? servers, out problem))
        {
            return null;
        }

        string? key = values.GetValueOrDefault("api-key") ?? Environment.GetEnvironmentVariable("METERING_API_KEY");
        if (key is null)
        {
            return null;
        }

        int? heartbeatSeconds = null;
        if (values.TryGetValue("heartbeat-seconds", out string? heartbeat))
        {
            heartbeatSeconds = Whole(heartbeat, 1, int.MaxValue);
            if (heartbeatSeconds is null)
            {
                problem = $"--heartbeat-seconds must be a whole number of seconds above 0, not '{heartbeat}'";
                return null;
            }
        }

        // The demo has three sites: an index outside them is a typo, not a crash.
        string siteText = values.GetValueOrDefault("site", "0");
        if (Whole(siteText, 0, 2) is not int site)
        {
            problem = $"--site must be 0, 1 or 2, not '{siteText}'";
            return null;
        }

        string jobsText = values.GetValueOrDefault("jobs-per-interval", "100");
        if (Whole(jobsText, 1, int.MaxValue) is not int jobsPerInterval)
        {
            problem = $"--jobs-per-interval must be a whole number above 0, not '{jobsText}'";
            return null;
        }

        DateOnly? day = null;
        if (values.TryGetValue("day", out string? dayText))
        {
            if (!DateOnly.TryParseExact(dayText, "yyyy-MM-dd", CultureInfo.InvariantCulture, DateTimeStyles.None, out DateOnly parsed))
            {
                problem = $"--day must be a date as yyyy-MM-dd, not '{dayText}'";
                return null;
            }

            day = parsed;
        }

        ulong? dropOnceAfter = null;
        if (values.TryGetValue("drop-once-after", out string? drop))
        {
            if (!ulong.TryParse(drop, NumberStyles.None, CultureInfo.InvariantCulture, out ulong records))
            {
                problem = $"--drop-once-after must be a whole number of records, not '{drop}'";
                return null;
            }

            dropOnceAfter = records;
        }

        bool live = false;
        if (values.TryGetValue("live", out string? liveText) && !bool.TryParse(liveText, out live))
        {
            problem = $"--live must be true or false, not '{liveText}'";
            return null;
        }

        DevicePool[]? pools = null;
        if (values.TryGetValue("pools", out string? poolList))
        {
            pools = ParsePools(poolList);
            if (pools is null)
            {
                problem = $"--pools must be MODEL:DEVICES[,MODEL:DEVICES...] with whole devices above 0, not '{poolList}'";
                return null;
            }
        }

        // The SM-activity source: a dcgm-exporter URL, or "nvidia-smi:PROGRAM".
        string? activitySource = null;
        if (values.TryGetValue("dcgm-url", out string? dcgmUrl))
        {
            if (values.ContainsKey("nvidia-smi"))
            {
                problem = "give --dcgm-url or --nvidia-smi, not both";
                return null;
            }

            if (!Uri.TryCreate(dcgmUrl, UriKind.Absolute, out Uri? url) || url.Scheme is not ("http" or "https"))
            {
                problem = $"--dcgm-url must be an http:// or https:// URL like http://gpu-node-1:9400/metrics, not '{dcgmUrl}'";
                return null;
            }

            activitySource = url.ToString();
        }
        else if (values.TryGetValue("nvidia-smi", out string? nvidiaSmi))
        {
            activitySource = "nvidia-smi:" + nvidiaSmi;
        }

        string samplesText = values.GetValueOrDefault("sm-samples", "3");
        string secondsText = values.GetValueOrDefault("sm-sample-seconds", "5");
        if (Whole(samplesText, 1, 1_000) is not int smSamples || Whole(secondsText, 0, 3_600) is not int smSampleSeconds)
        {
            problem = $"--sm-samples must be 1 to 1000 and --sm-sample-seconds 0 to 3600, not '{samplesText}' and '{secondsText}'";
            return null;
        }

        return new Arguments(
            servers!,
            key,
            values.GetValueOrDefault("stream"),
            site,
            pools,
            values.TryGetValue("holders", out string? holders) ? holders.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries) : null,
            day,
            jobsPerInterval,
            dropOnceAfter,
            live,
            heartbeatSeconds,
            values.GetValueOrDefault("ca"),
            values.GetValueOrDefault("client-cert"),
            values.GetValueOrDefault("client-key"),
            values.GetValueOrDefault("receipts"),
            activitySource,
            smSamples,
            smSampleSeconds);
    }

    private static int? Whole(string text, int min, int max) =>
        int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out int value) && value >= min && value <= max ? value : null;

    /// <summary>Whole-device pools from MODEL:DEVICES[,MODEL:DEVICES]; null when the list is malformed.</summary>
    private static DevicePool[]? ParsePools(string text)
    {
        var pools = new List<DevicePool>();
        foreach (string part in text.Split(',', StringSplitOptions.TrimEntries))
        {
            string[] modelAndDevices = part.Split(':');
            if (modelAndDevices.Length != 2 || modelAndDevices[0].Length == 0
                || !int.TryParse(modelAndDevices[1], NumberStyles.None, CultureInfo.InvariantCulture, out int devices) || devices <= 0)
            {
                return null;
            }

            pools.Add(new DevicePool(modelAndDevices[0], devices, 1));
        }

        return pools.Count > 0 ? pools.ToArray() : null;
    }
}
