using System.Collections.Frozen;
using System.Data;
using System.Globalization;
using System.Numerics;
using System.Runtime.InteropServices;
using Dapper;
using Metering.Engine.Capacity;
using Metering.Engine.Registry;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Ingest;

/// <summary>
/// Ingest's plausibility check: a provider never uses more devices of a model at once, over all
/// its usage streams, than its fleet holds.
///
/// Concurrency is counted per whole second: a record covers the seconds from ⌈start⌉ to ⌊end⌋
/// (in seconds), and adds device_count × share to each, so a record that ends and one that starts
/// within the same second are never counted together (the check is lenient by under a second at
/// each end, never strict). The sums live in <c>usage_concurrency</c>, one row per provider,
/// model, minute and share denominator holding 60 per-second sums of device_count × numerator, so
/// every sum is an exact integer; seconds are compared exactly as Σ_d sum_d / d ≤ fleet over the
/// common multiple of the denominators present.
///
/// The check runs in the commit's (read committed) transaction after the COPY: it takes a
/// transaction-scoped advisory lock per (provider, model) in ascending key order, reads every
/// denominator's sums for the minutes the batch touches, adds the batch's, compares each second the
/// batch touches and writes the new sums back with a plain upsert (no array arithmetic in SQL). Two commits of one provider and model are thus ordered, and the second sees the
/// first's sums; commits of different models or providers do not wait for each other.
/// </summary>
internal static class FleetConcurrency
{
    public const int SecondsPerRow = 60;

    private sealed class Group(string model, uint denominator)
    {
        public string Model { get; } = model;

        public uint Denominator { get; } = denominator;

        public List<(long Second, long Delta)> Events { get; } = [];

        public SortedDictionary<long, long[]> Minutes { get; } = [];
    }

    /// <summary>
    /// Checks the prepared batches (one stream's, or those of several streams a group commit
    /// takes together) against the fleet; throws <see cref="IngestRefusedException"/> when a
    /// second would exceed it. Returns the write of the new sums, for the caller to send with the
    /// rest of its commit, or null when the batches add to no second.
    /// </summary>
    public static async Task<NpgsqlBatchCommand?> CheckAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string providerId, IReadOnlyList<PreparedRecords> batches, FleetSnapshot fleet,
        long nowUnixMs, int minutesPerBatchMax)
    {
        List<Group> groups = Aggregate(batches);
        int rows = 0;
        foreach (Group group in groups)
        {
            rows += Sweep(group, minutesPerBatchMax - rows);
            if (rows > minutesPerBatchMax)
            {
                throw new IngestRefusedException(new Refusal(IngestRefusalReason.BatchTooLarge,
                    $"the batch's records cover more than {minutesPerBatchMax} device-model minutes, more than the concurrency check takes at once; send records of fewer days per batch"));
            }
        }

        if (rows == 0)
        {
            return null;
        }

        // Read committed is what makes reading the sums after taking the lock see every commit
        // that held it before; a snapshot taken earlier (repeatable read) would miss them.
        if (transaction.IsolationLevel is not (IsolationLevel.ReadCommitted))
        {
            throw new InvalidOperationException($"The fleet check needs a read committed transaction, not {transaction.IsolationLevel}.");
        }

        long[] keys = groups.Select(g => g.Model).Distinct(StringComparer.Ordinal).Select(m => FleetValidationService.LockKey("concurrency", providerId, m)).Order().ToArray();

        // The sums are read under the locks, the batch's added here and written back whole: the
        // locks order every writer of these rows, so nothing changes them in between. The touched
        // minutes of a model are read as a few ranges of the primary key (runs of minutes with
        // short gaps), each one index range scan; OFFSET 0 keeps each range from being turned into
        // a join that scans all of the provider's minutes, which grow with every day metered.
        var touched = groups.SelectMany(g => g.Minutes.Keys.Select(m => (g.Model, Minute: m))).Distinct().ToList();
        var touchedSet = touched.ToHashSet();
        var (rangeModels, rangeFirsts, rangeLasts) = Ranges(touched);
        // The locks and the read go in one round trip: the statements run in order, and the read,
        // a statement of its own under read committed, takes its snapshot after the locks are held.
        var sums = new Dictionary<(string Model, long Minute), List<(long[] Levels, int Denominator)>>();
        IEnumerable<(string, DateTime, int, long[])> stored;
        using (SqlMapper.GridReader locked = await connection.QueryMultipleAsync("""
            SELECT pg_advisory_xact_lock(k) FROM unnest(@keys) AS k;
            SELECT u.m, c.minute_at, c.share_denominator, c.levels
            FROM unnest(@rangeModels, @rangeFirsts, @rangeLasts) AS u(m, f, l)
            CROSS JOIN LATERAL (
                SELECT c.minute_at, c.share_denominator, c.levels FROM usage_concurrency c
                WHERE c.provider_id = @providerId AND c.device_model = u.m AND c.minute_at BETWEEN u.f AND u.l OFFSET 0) AS c
            """, new { keys, providerId, rangeModels, rangeFirsts, rangeLasts }, transaction))
        {
            await locked.ReadAsync();
            stored = (await locked.ReadAsync<(string, DateTime, int, long[])>()).AsList();
        }

        foreach (var (model, minute, denominator, levelsStored) in stored)
        {
            var key = (model, UnixMs.FromDateTime(DateTime.SpecifyKind(minute, DateTimeKind.Utc)) / 1000 / SecondsPerRow);
            if (!touchedSet.Contains(key))
            {
                // A minute in a gap of a range: the batch adds nothing there, so it is neither judged nor written.
                continue;
            }

            if (!sums.TryGetValue(key, out var list))
            {
                list = [];
                sums.Add(key, list);
            }

            list.Add((levelsStored, denominator));
        }

        // Each row written is the stored sums plus the batch's, per denominator.
        var models = new string[rows];
        var minutes = new DateTime[rows];
        var denominators = new int[rows];
        var levels = new long[rows * SecondsPerRow];
        int row = 0;
        foreach (Group group in groups)
        {
            foreach (var (minute, added) in group.Minutes)
            {
                if (!sums.TryGetValue((group.Model, minute), out var list))
                {
                    list = [];
                    sums.Add((group.Model, minute), list);
                }

                int at = list.FindIndex(s => s.Denominator == (int)group.Denominator);
                long[] total = new long[SecondsPerRow];
                for (int second = 0; second < SecondsPerRow; second++)
                {
                    total[second] = checked(added[second] + (at >= 0 ? list[at].Levels[second] : 0));
                }

                if (at >= 0)
                {
                    list[at] = (total, (int)group.Denominator);
                }
                else
                {
                    list.Add((total, (int)group.Denominator));
                }

                models[row] = group.Model;
                minutes[row] = UnixMs.ToDateTime(minute * SecondsPerRow * 1000);
                denominators[row] = (int)group.Denominator;
                total.CopyTo(levels, row * SecondsPerRow);
                row++;
            }
        }

        // The bound of each model is taken once per commit, from the snapshot read once per
        // admission epoch: a dictionary per batch, nothing per record.
        var bounds = new Dictionary<string, (long Devices, string Source)>(StringComparer.Ordinal);
        foreach (Group group in groups)
        {
            bounds.TryAdd(group.Model, fleet.DevicesOf(group.Model, nowUnixMs));
        }

        foreach (var (model, minute) in touched.OrderBy(t => t.Minute).ThenBy(t => t.Model, StringComparer.Ordinal))
        {
            var (devices, source) = bounds[model];
            List<(long[] Levels, int Denominator)> atMinute = sums[(model, minute)];
            long[][] mine = groups.Where(g => g.Model == model && g.Minutes.ContainsKey(minute)).Select(g => g.Minutes[minute]).ToArray();
            for (int second = 0; second < SecondsPerRow; second++)
            {
                // Only seconds this batch adds to are judged: a fleet that shrank since is no
                // reason to refuse records that do not touch the excess.
                if (!mine.Any(added => added[second] > 0) || !Exceeds(atMinute, second, devices))
                {
                    continue;
                }

                long atSecond = minute * SecondsPerRow + second;
                UsageRecordRef first = FirstCovering(batches, model, atSecond);
                throw new IngestRefusedException(new Refusal(IngestRefusalReason.ConcurrencyAboveFleet,
                    $"record {first.Sequence}: at {Time(atSecond)} {providerId} would use {InUse(atMinute, second)} {model} devices at once over all its streams; its fleet holds {devices} ({source})"),
                    first.Sequence);
            }
        }

        // Still under the locks: the caller sends the write before its commit, and the locks are
        // held until then.
        return new NpgsqlBatchCommand("""
            INSERT INTO usage_concurrency (provider_id, device_model, minute_at, share_denominator, levels)
            SELECT $1, u.m, u.t, u.d, ($5::bigint[])[(u.i - 1) * 60 + 1 : u.i * 60]
            FROM unnest($2::text[], $3::timestamptz[], $4::integer[]) WITH ORDINALITY AS u(m, t, d, i)
            ON CONFLICT (provider_id, device_model, minute_at, share_denominator) DO UPDATE SET levels = excluded.levels
            """)
        {
            Parameters = { new() { Value = providerId }, new() { Value = models }, new() { Value = minutes }, new() { Value = denominators }, new() { Value = levels } },
        };
    }

    /// <summary>
    /// Untouched minutes a range read may step over between two touched ones: reading a few
    /// stored rows the batch does not need costs less than starting another index scan.
    /// </summary>
    private const long RangeGapMinutesMax = 30;

    /// <summary>The touched minutes of each model as inclusive ranges of minute starts, split where a gap is longer than <see cref="RangeGapMinutesMax"/>.</summary>
    private static (string[] Models, DateTime[] Firsts, DateTime[] Lasts) Ranges(List<(string Model, long Minute)> touched)
    {
        var models = new List<string>();
        var firsts = new List<DateTime>();
        var lasts = new List<DateTime>();
        foreach (var byModel in touched.GroupBy(t => t.Model, StringComparer.Ordinal))
        {
            long[] minutes = byModel.Select(t => t.Minute).Order().ToArray();
            long first = minutes[0];
            for (int i = 1; i <= minutes.Length; i++)
            {
                if (i < minutes.Length && minutes[i] - minutes[i - 1] <= RangeGapMinutesMax + 1)
                {
                    continue;
                }

                models.Add(byModel.Key);
                firsts.Add(UnixMs.ToDateTime(first * SecondsPerRow * 1000));
                lasts.Add(UnixMs.ToDateTime(minutes[i - 1] * SecondsPerRow * 1000));
                if (i < minutes.Length)
                {
                    first = minutes[i];
                }
            }
        }

        return (models.ToArray(), firsts.ToArray(), lasts.ToArray());
    }

    private readonly record struct UsageRecordRef(ulong Sequence);

    private static List<Group> Aggregate(IReadOnlyList<PreparedRecords> batches)
    {
        var groups = new Dictionary<(string, uint), Group>();
        foreach (PreparedRecords batch in batches)
        {
            AggregateInto(groups, batch);
        }

        return groups.Values.OrderBy(g => g.Model, StringComparer.Ordinal).ThenBy(g => g.Denominator).ToList();
    }

    private static void AggregateInto(Dictionary<(string, uint), Group> groups, PreparedRecords batch)
    {
        for (int i = 0; i < batch.Count; i++)
        {
            ref readonly IngestRecord record = ref batch.Records[i];
            // Whole seconds covered: [⌈start / 1000⌉, ⌊end / 1000⌋).
            long first = CeilingSeconds(record.StartUnixMs);
            long end = record.EndUnixMs / 1000;
            if (end <= first)
            {
                continue;
            }

            string model = batch.Models[i].Key;
            if (!groups.TryGetValue((model, record.ShareDenominator), out Group? group))
            {
                group = new Group(model, record.ShareDenominator);
                groups.Add((model, record.ShareDenominator), group);
            }

            long weight = (long)record.DeviceCount * record.ShareNumerator;
            group.Events.Add((first, weight));
            group.Events.Add((end, -weight));
        }
    }

    /// <summary>Turns a group's start and end events into per-second sums by minute; returns the rows made, stopping past the budget.</summary>
    private static int Sweep(Group group, int budget)
    {
        // Two events per record: the sort is most of the check's CPU on a large group, so it
        // compares through a struct (inlined) rather than a delegate call per comparison.
        Span<(long Second, long Delta)> events = CollectionsMarshal.AsSpan(group.Events);
        events.Sort(default(BySecond));
        long level = 0;
        // The minute the previous second fell in: consecutive seconds share it, so the sorted
        // map is searched once per minute, not once per second.
        long minute = long.MinValue;
        long[]? seconds = null;
        for (int e = 0; e < events.Length;)
        {
            long second = events[e].Second;
            while (e < events.Length && events[e].Second == second)
            {
                level += events[e++].Delta;
            }

            if (level == 0 || e == events.Length)
            {
                continue;
            }

            long next = events[e].Second;
            for (long s = second; s < next; s++)
            {
                long at = Math.DivRem(s, SecondsPerRow, out long within);
                if (within < 0)
                {
                    at--;
                    within += SecondsPerRow;
                }

                if (at != minute || seconds is null)
                {
                    minute = at;
                    if (!group.Minutes.TryGetValue(minute, out seconds))
                    {
                        if (group.Minutes.Count >= budget)
                        {
                            return group.Minutes.Count + 1;
                        }

                        seconds = new long[SecondsPerRow];
                        group.Minutes.Add(minute, seconds);
                    }
                }

                seconds[within] += level;
            }
        }

        return group.Minutes.Count;
    }

    /// <summary>Orders a group's events by second; the order of two events in one second does not matter, as their deltas are summed.</summary>
    private readonly struct BySecond : IComparer<(long Second, long Delta)>
    {
        public int Compare((long Second, long Delta) x, (long Second, long Delta) y) => x.Second.CompareTo(y.Second);
    }

    /// <summary>Σ sum_d / d &gt; devices at one second, exactly: in 128-bit integers for one denominator (the common case), else over the common multiple of the denominators present.</summary>
    private static bool Exceeds(List<(long[] Levels, int Denominator)> sums, int second, long devices)
    {
        if (sums.Count == 1)
        {
            return (Int128)sums[0].Levels[second] > (Int128)devices * sums[0].Denominator;
        }

        var (numerator, common) = Fraction(sums, second);
        return numerator > devices * common;
    }

    /// <summary>The devices in use at a second, to two decimals (rounded down), for the refusal's message.</summary>
    private static string InUse(List<(long[] Levels, int Denominator)> sums, int second)
    {
        var (numerator, common) = Fraction(sums, second);
        BigInteger hundredths = numerator * 100 / common;
        return string.Create(CultureInfo.InvariantCulture, $"{hundredths / 100}.{(int)(hundredths % 100):D2}");
    }

    private static (BigInteger Numerator, BigInteger Common) Fraction(List<(long[] Levels, int Denominator)> sums, int second)
    {
        BigInteger common = BigInteger.One;
        foreach (var (levels, denominator) in sums)
        {
            if (levels[second] != 0)
            {
                common = common / BigInteger.GreatestCommonDivisor(common, denominator) * denominator;
            }
        }

        BigInteger numerator = BigInteger.Zero;
        foreach (var (levels, denominator) in sums)
        {
            numerator += levels[second] * (common / denominator);
        }

        return (numerator, common);
    }

    private static UsageRecordRef FirstCovering(IReadOnlyList<PreparedRecords> batches, string model, long second)
    {
        foreach (PreparedRecords batch in batches)
        {
            for (int i = 0; i < batch.Count; i++)
            {
                ref readonly IngestRecord record = ref batch.Records[i];
                if (batch.Models[i].Key == model && CeilingSeconds(record.StartUnixMs) <= second && second < record.EndUnixMs / 1000)
                {
                    return new UsageRecordRef(record.Sequence);
                }
            }
        }

        return new UsageRecordRef(batches[0].Records[0].Sequence);
    }

    private static long CeilingSeconds(long unixMs) => unixMs / 1000 + (unixMs % 1000 > 0 ? 1 : 0);

    private static string Time(long unixSeconds) =>
        DateTimeOffset.FromUnixTimeSeconds(unixSeconds).ToOffset(ShanghaiTime.Offset).ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture) + " Asia/Shanghai";
}
