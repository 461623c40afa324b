using Metering.Protocol.V1;

namespace Metering.Client.Simulation;

/// <summary>One pool of identical accelerators at a site.</summary>
/// <param name="ShareDenominator">How the pool is sliced: 1 for whole devices, 7 for MIG slices (1g, 2g, 3g, 4g or 7g), 2 for half time-slices.</param>
public sealed record DevicePool(string Model, int Devices, uint ShareDenominator);

/// <summary>
/// A deterministic simulated cluster: the usage log one site's scheduler would write over one day,
/// as 5-minute metering intervals of the jobs running in it. Record n is a pure function of n (and
/// the seed), so an agent can resume from any sequence number without keeping state, exactly like
/// a platform that reads its own accounting table from a position.
///
/// Like a real scheduler it never runs more devices of a pool at once than the pool has (the
/// server refuses usage beyond a provider's fleet): each lane (a job slot per interval) belongs to
/// one pool, and a lane's job uses at most its share of the pool, ⌊devices / lanes of the pool⌋
/// and at least one device, so the pool holds when it has at least one device per lane.
/// </summary>
public sealed class SimulatedCluster
{
    public static readonly TimeSpan Interval = TimeSpan.FromMinutes(5);

    /// <summary>Shenzhen organisations that rent compute (valid GB 32100-2015 codes).</summary>
    public static readonly string[] Holders =
    [
        "91440300MA5G2XK3P1", "12440300455765421T", "91440300083412345N", "91440300MA5DC0RJ75",
        "52440300MA5FTQ7L2H", "91440300MA5H19UY86", "12440300G348188022", "91440300MA5EUJ6147",
        "914403003592485717", "91440300MA5FJ6X0AH", "91440300MA5GK1W2RJ", "91440300MA5D8R4N15",
    ];

    private static readonly uint[] JobSizes = [1, 1, 2, 4, 8, 8, 8, 16, 32];

    private readonly string _site;
    private readonly DevicePool[] _pools;
    private readonly long _dayStartMs;
    private readonly int _jobsPerInterval;
    private readonly ulong _seed;
    private readonly uint[] _laneDevicesMax;
    private readonly string[] _holders;

    // Each pool's device UUIDs, made the first time a record names the device and shared by every
    // later record that does: a record names up to eight, and a load tool asks for millions of
    // records, so making them anew cost up to eight strings per record in the process that
    // also runs the server in the load tool.
    // Filled without a lock: two threads that race make equal strings, and either may stay.
    private readonly string?[][] _deviceUuids;

    /// <param name="holders">The organisations the jobs run for; null: <see cref="Holders"/>.</param>
    public SimulatedCluster(string site, DevicePool[] pools, DateTimeOffset dayStart, int jobsPerInterval, ulong seed, string[]? holders = null)
    {
        _holders = holders is { Length: > 0 } ? holders : Holders;
        _site = site;
        _pools = pools;
        _dayStartMs = dayStart.ToUnixTimeMilliseconds();
        _jobsPerInterval = jobsPerInterval;
        _seed = seed;
        _laneDevicesMax = pools.Select((pool, index) => (uint)Math.Max(1, pool.Devices / LanesOf(index, pools.Length, jobsPerInterval))).ToArray();
        _deviceUuids = pools.Select(pool => new string?[pool.Devices]).ToArray();
    }

    /// <summary>Lanes l &lt; jobsPerInterval with l mod pools = index: the job slots of one pool.</summary>
    private static int LanesOf(int poolIndex, int pools, int jobsPerInterval) => Math.Max(1, (jobsPerInterval - poolIndex + pools - 1) / pools);

    public string Site => _site;

    /// <summary>The devices at the site, as the provider would declare them to the registry.</summary>
    public IReadOnlyList<DevicePool> Pools => _pools;

    /// <summary>Records in one day: one per running job per interval.</summary>
    public ulong RecordsPerDay => (ulong)(TimeSpan.FromDays(1) / Interval) * (ulong)_jobsPerInterval;

    /// <summary>
    /// The records a live scheduler has written by <paramref name="now"/>: those of every interval
    /// that has ended (a record never runs past its interval), counted from the day's start.
    /// </summary>
    public ulong RecordedThrough(DateTimeOffset now)
    {
        long elapsedMs = now.ToUnixTimeMilliseconds() - _dayStartMs;
        return elapsedMs <= 0 ? 0 : (ulong)(elapsedMs / (long)Interval.TotalMilliseconds) * (ulong)_jobsPerInterval;
    }

    /// <summary>Compute slices of a MIG-partitioned GA100 (A100, A800).</summary>
    private const uint MigSlicesPerGpu = 7;

    /// <summary>The slice counts of the GA100 MIG profiles (1g, 2g, 3g, 4g, 7g); 5 and 6 name no instance.</summary>
    private static readonly uint[] MigProfileSlices = [1, 2, 3, 4, 7];

    /// <summary>Record number <paramref name="sequence"/> (1-based). Past the day it continues into the next days.</summary>
    public UsageRecord RecordAt(ulong sequence)
    {
        ulong index = sequence - 1;
        ulong slot = index / (ulong)_jobsPerInterval;
        ulong lane = index % (ulong)_jobsPerInterval;

        // A lane runs a succession of jobs; each job lasts 1 to 48 intervals (5 minutes to 4 hours).
        ulong laneSeed = Mix(_seed ^ (lane * 0x9E3779B97F4A7C15));
        ulong jobNumber = slot / (1 + laneSeed % 48);
        ulong job = Mix(laneSeed ^ jobNumber);
        int poolIndex = (int)(lane % (ulong)_pools.Length);
        DevicePool pool = _pools[poolIndex];
        uint devices = pool.ShareDenominator == 1 ? Math.Min(JobSizes[(int)((job >> 8) % (ulong)JobSizes.Length)], _laneDevicesMax[poolIndex]) : 1;
        uint share = pool.ShareDenominator switch
        {
            1 => 1,
            // A share of seven names MIG slices, and only the slice counts of real MIG profiles exist (catalog 2026.1).
            MigSlicesPerGpu => MigProfileSlices[(int)((job >> 16) % (ulong)MigProfileSlices.Length)],
            _ => 1 + (uint)((job >> 16) % pool.ShareDenominator),
        };

        long start = _dayStartMs + (long)slot * (long)Interval.TotalMilliseconds;
        // Jobs start and stop off the interval grid now and then.
        long end = start + (long)Interval.TotalMilliseconds - (long)((job >> 24) % 4 == 0 ? (job >> 32) % 240_000 : 0);
        var record = new UsageRecord
        {
            Sequence = sequence,
            JobId = $"{_site}-{lane:D3}-{jobNumber:D5}",
            HolderCode = _holders[(int)((job >> 40) % (ulong)_holders.Length)],
            DeviceModel = pool.Model,
            DeviceCount = devices,
            ShareNumerator = share,
            ShareDenominator = pool.ShareDenominator,
            StartUnixMs = start,
            EndUnixMs = end,
            Site = _site,
            // Energy in mWh at roughly 70% of a 700 W board per whole device.
            EnergyMwh = (ulong)(end - start) * devices * share * 490 / pool.ShareDenominator / 3_600,
        };
        if (devices <= 8)
        {
            for (uint d = 0; d < devices; d++)
            {
                int device = (int)((lane * 8 + d) % (ulong)pool.Devices);
                record.DeviceUuids.Add(_deviceUuids[poolIndex][device] ??= $"GPU-{_site}-{device:D4}");
            }
        }

        return record;
    }

    /// <summary>
    /// The demo's three sites: mixed models, MIG slices and time-sliced inference cards. A pool
    /// grows to <paramref name="devicesPerLaneMin"/> devices per lane when it has fewer, so that
    /// many jobs per interval stay within the pools the provider declares; the load tool asks for
    /// 32 per lane, the largest job, so that no job is ever cut to fit.
    /// </summary>
    public static SimulatedCluster[] DemoSites(DateTimeOffset dayStart, int jobsPerInterval, ulong seed, int devicesPerLaneMin = 1) =>
    [
        Scaled("sz-nanshan-dc1", [new("H100-SXM", 512, 1), new("H800-SXM", 256, 1)], dayStart, jobsPerInterval, seed + 1, devicesPerLaneMin),
        Scaled("sz-qianhai-dc2", [new("A100-SXM", 256, 7), new("H20", 512, 1), new("A800-SXM", 128, 1)], dayStart, jobsPerInterval, seed + 2, devicesPerLaneMin),
        Scaled("sz-shenshan-dc3", [new("L40S", 192, 2), new("ASCEND-910B", 384, 1), new("H200-SXM", 64, 1)], dayStart, jobsPerInterval, seed + 3, devicesPerLaneMin),
    ];

    private static SimulatedCluster Scaled(string site, DevicePool[] pools, DateTimeOffset dayStart, int jobsPerInterval, ulong seed, int devicesPerLaneMin) =>
        new(site, pools.Select((pool, index) => pool with { Devices = Math.Max(pool.Devices, LanesOf(index, pools.Length, jobsPerInterval) * devicesPerLaneMin) }).ToArray(),
            dayStart, jobsPerInterval, seed);

    private static ulong Mix(ulong x)
    {
        // SplitMix64's finaliser: a cheap, well-spread hash for deterministic simulation.
        x ^= x >> 30;
        x *= 0xBF58476D1CE4E5B9;
        x ^= x >> 27;
        x *= 0x94D049BB133111EB;
        x ^= x >> 31;
        return x;
    }
}
