using System.Data;
using System.Globalization;
using System.Text.Json;
using Dapper;
using Metering.Engine.Audit;
using Metering.Engine.Registry;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Metering.Engine.Vouchers;
using Npgsql;
using NpgsqlTypes;

namespace Metering.Engine.Settlement;

// Stages 2 and 3 of a run: the day's usage and its Merkle leaves in one read, then late data of closed days.
public sealed partial class DailySettlement
{
    /// <summary>Per-record card time in SQL, the same rule as <see cref="Pricing.CardMilliseconds"/>: devices × share × duration in ms, rounded down once.</summary>
    private const string CardMsSql = "div(u.device_count::numeric * u.share_numerator * (extract(epoch FROM u.end_at - u.start_at) * 1000), u.share_denominator)";

    /// <summary>
    /// The set-based aggregation of the day's usage that the run's one pass computes as the rows
    /// stream past (<see cref="DayTotals"/>); the bench times it alone as the floor.
    /// </summary>
    public const string DayAggregationSql = $"""
        SELECT u.provider_id, u.holder_code, u.device_model, count(*)::bigint, sum(u.usage_npfh)::bigint, sum({CardMsSql})::bigint
        FROM usage_records u
        WHERE u.start_at >= $1 AND u.start_at < $2 AND u.stream_id NOT LIKE 'proof:%'
        GROUP BY u.provider_id, u.holder_code, u.device_model
        """;

    /// <summary>
    /// Beside each run's records, nPFh and pairs, what each of its records is priced by, one
    /// aggregate per attribute, the records in the same order in each (PostgreSQL advances all of
    /// a group's aggregates with each row): their durations as PostgreSQL's binary interval,
    /// their nPFh, their device count × share numerator (both positive integers, so the product
    /// fits a bigint) and their share denominators, back to back; then their holders and their
    /// device models, each as text joined by line feeds (<see cref="DayTotals.AddRecords"/>).
    /// One aggregate per attribute cost PostgreSQL about a third less than one aggregate of
    /// each record's attributes concatenated, whose <c>||</c> built a new value four times per
    /// record (bench/RESULTS.md, issue 17, attributes per aggregate). The runs are grouped by
    /// provider, stream and block of sequences only: grouping by holder, model and share as well
    /// made PostgreSQL hash and compare four more columns per record, which cost it more than
    /// sending them.
    /// </summary>
    private const string DayRecordAttributes =
        "string_agg(interval_send(u.end_at - u.start_at), ''::bytea), string_agg(int8send(u.usage_npfh), ''::bytea),"
        + " string_agg(int8send(u.device_count::bigint * u.share_numerator), ''::bytea), string_agg(int4send(u.share_denominator), ''::bytea),"
        + " string_agg(u.holder_code, E'\\n'), string_agg(u.device_model, E'\\n')";

    /// <summary>Columns of a run row: provider, stream, records, nPFh, other hash lengths, pairs, then the six record attributes.</summary>
    private const int DayColumnCount = 12;

    /// <summary>
    /// The memory PostgreSQL may give the read's grouping (<c>work_mem</c>, which hash
    /// aggregation may use twice over): the runs' pairs, 40 bytes a record, are held there until
    /// the segment's scan ends. A larger segment spills to disk, slower but the same.
    /// </summary>
    private const int DayReadWorkMemMb = 1024;

    /// <summary>
    /// The read's buffer: a run row must fit in half of it. A run has at most
    /// <see cref="DailyLeaves.RunRecordsMax"/> records of at most 128 bytes each (a 40-byte pair,
    /// 36 bytes of numbers, an 18-byte holder code, a model of at most 32 bytes, two line feeds), 8 MiB.
    /// </summary>
    private const int DayReadBufferBytes = 32 * 1024 * 1024;

    /// <summary>The day's groups, every provider's leaves in leaf order, how many connections read it and how many records each block range held, from one read.</summary>
    private sealed record DayRead(List<Group> Groups, List<ProviderLeaves> Leaves, int Connections, long[] RangeRecords);

    /// <summary>
    /// Blocks <see cref="FromBlock"/> up to <see cref="UntilBlock"/> of the day's partitions, and
    /// every block past them too when <see cref="OpenAbove"/> (the last range, which takes the
    /// blocks added after the sizes were taken).
    /// </summary>
    private sealed record BlockRange(long FromBlock, long UntilBlock, bool OpenAbove);

    /// <summary>One block range's share of the read, before the ranges are put together.</summary>
    private sealed record Segment(DayTotals Totals, LeafCollector Leaves, long Records);

    /// <summary>
    /// The day's records (proof streams excluded), read once in the run's snapshot as runs
    /// grouped by PostgreSQL (the leaf statement's rows, <see cref="DailyLeaves.RunsSql"/>): each
    /// run goes both to the aggregation per provider, holder and model and to its provider's
    /// Merkle leaves, so the leaves are exactly the records the run prices. With more than one segment
    /// the table is cut into ranges of blocks, read side by side by the run's connection and by
    /// connections that import its snapshot, so that each backend scans its own blocks instead
    /// of every backend scanning the whole day; each connection reads its ranges one after the
    /// other (range k on connection k modulo the connections), so that the engine takes in one
    /// range's runs while the backends group the next. The ranges are put together in block
    /// order: totals are summed, and each stream's leaves are put in sequence order once all are in.
    /// </summary>
    private async Task<DayRead> ReadDayAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, DateOnly day, CancellationToken cancellationToken)
    {
        BlockRange?[] ranges = await BlockRangesAsync(connection, transaction, day, cancellationToken);
        int connections = Math.Min(_options.DaySegments, ranges.Length);
        Segment[] segments;
        if (connections == 1)
        {
            segments = await ReadRangesAsync(connection, day, ranges, _options.DayChunkBlocks, cancellationToken);
        }
        else
        {
            string snapshot = await connection.ExecuteScalarAsync<string>(new CommandDefinition("SELECT pg_export_snapshot()", transaction: transaction, cancellationToken: cancellationToken))
                ?? throw new InvalidOperationException("PostgreSQL exported no snapshot.");
            BlockRange?[] Turns(int c) => [.. ranges.Where((_, k) => k % connections == c)];
            var reads = new List<Task<Segment[]>> { ReadRangesAsync(connection, day, Turns(0), _options.DayChunkBlocks, cancellationToken) };
            for (int c = 1; c < connections; c++)
            {
                reads.Add(ReadRangesInSnapshotAsync(snapshot, day, Turns(c), cancellationToken));
            }

            // WhenAll waits for every connection, so none outlives the run, however one ended.
            Segment[][] byConnection = await Task.WhenAll(reads);
            segments = [.. Enumerable.Range(0, ranges.Length).Select(k => byConnection[k % connections][k / connections])];
        }

        DayTotals totals = segments[0].Totals;
        LeafCollector leaves = segments[0].Leaves;
        foreach (Segment later in segments.Skip(1))
        {
            totals.Absorb(later.Totals);
            leaves.Absorb(later.Leaves);
        }

        List<Group> groups = totals.Groups().Select(g => new Group("usage", day, g.Provider, g.Holder, g.Model, g.Records, g.UsageNpfh, g.CardMs)).ToList();
        // The streams are put in leaf order by the fold of the roots, provider by provider, on
        // the thread pool while the run prices, instead of here, before it can price.
        return new DayRead(groups, leaves.Providers(ordered: false), connections, [.. segments.Select(s => s.Records)]);
    }

    /// <summary>
    /// The block ranges the day is read in, the first from block 0 and the last open above, so
    /// that together they hold every row, including rows of blocks added after the sizes were
    /// taken. The ranges cut the largest partition that holds the day (found by PostgreSQL's own
    /// pruning of the day's bounds) into equal parts,
    /// <see cref="SettlementOptions.DayRangesPerSegment"/> per segment, or one per segment when
    /// the partition has fewer blocks than that, or one in all when it has fewer blocks than
    /// segments; a range's condition on <c>u.ctid</c> applies to each partition's own blocks.
    /// No range (null, the whole day without a condition) when the day's partitions are empty or
    /// distributed by Citus.
    /// The conditions are written into the statement, since COPY takes no parameters; they hold
    /// nothing but block numbers.
    /// </summary>
    private async Task<BlockRange?[]> BlockRangesAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, DateOnly day, CancellationToken cancellationToken)
    {
        string plan = await connection.ExecuteScalarAsync<string>(new CommandDefinition(
            $"EXPLAIN (FORMAT JSON) SELECT 1 FROM usage_records u WHERE {DailyLeaves.DayBounds(day)}", transaction: transaction, cancellationToken: cancellationToken))
            ?? throw new InvalidOperationException("PostgreSQL returned no plan.");
        JsonElement root = JsonDocument.Parse(plan).RootElement;
        if (PlannedByCitus(root))
        {
            // On Citus the day is on the workers' shards, and an exported snapshot covers the
            // coordinator only: side connections would not read the shards in the run's
            // snapshot. The run's own transaction reads them, in one segment.
            return [null];
        }

        string[] partitions = [.. RelationNames(root).Distinct(StringComparer.Ordinal)];
        long blocks = await connection.ExecuteScalarAsync<long>(new CommandDefinition("""
            SELECT coalesce(max(pg_relation_size(c.oid)), 0) / current_setting('block_size')::bigint
            FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY(@partitions)
            """, new { partitions }, transaction, cancellationToken: cancellationToken));
        if (blocks == 0)
        {
            return [null];
        }

        int count = blocks >= _options.DaySegments * _options.DayRangesPerSegment ? _options.DaySegments * _options.DayRangesPerSegment
            : blocks >= _options.DaySegments ? _options.DaySegments : 1;

        var ranges = new BlockRange?[count];
        for (int k = 0; k < ranges.Length; k++)
        {
            ranges[k] = new BlockRange(blocks * k / ranges.Length, blocks * (k + 1) / ranges.Length, OpenAbove: k == ranges.Length - 1);
        }

        return ranges;
    }

    /// <summary>Whether a JSON plan is Citus's (a custom scan of its executor at the top): the table is distributed.</summary>
    private static bool PlannedByCitus(JsonElement plan) =>
        plan.ValueKind == JsonValueKind.Array && plan.GetArrayLength() > 0
        && plan[0].TryGetProperty("Plan", out JsonElement top)
        && top.TryGetProperty("Custom Plan Provider", out JsonElement provider)
        && provider.GetString()?.StartsWith("Citus", StringComparison.Ordinal) == true;

    /// <summary>The names of the relations a JSON plan scans, at any depth.</summary>
    private static IEnumerable<string> RelationNames(JsonElement node)
    {
        if (node.ValueKind == JsonValueKind.Array)
        {
            return node.EnumerateArray().SelectMany(RelationNames);
        }

        if (node.ValueKind != JsonValueKind.Object)
        {
            return [];
        }

        return node.EnumerateObject().SelectMany(p => p.NameEquals("Relation Name") && p.Value.ValueKind == JsonValueKind.String
            ? [p.Value.GetString()!]
            : RelationNames(p.Value));
    }

    /// <summary>Block ranges of the day, one after the other, on a connection of its own, in a transaction that imports the run's snapshot.</summary>
    private async Task<Segment[]> ReadRangesInSnapshotAsync(string snapshot, DateOnly day, BlockRange?[] blockRanges, CancellationToken cancellationToken)
    {
        // Off the caller's thread at once, so that the segments parse side by side.
        await Task.Yield();
        await using NpgsqlConnection side = await OpenRunConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await side.BeginTransactionAsync(IsolationLevel.RepeatableRead, cancellationToken);
        await side.ExecuteAsync(new CommandDefinition($"SET TRANSACTION SNAPSHOT '{snapshot}'", transaction: transaction, cancellationToken: cancellationToken));
        await side.ExecuteAsync(new CommandDefinition($"SET LOCAL statement_timeout = {(long)_options.StatementTimeout.TotalMilliseconds}", transaction: transaction, cancellationToken: cancellationToken));
        Segment[] read = await ReadRangesAsync(side, day, blockRanges, _options.DayChunkBlocks, cancellationToken);
        await transaction.CommitAsync(cancellationToken);
        return read;
    }

    /// <summary>
    /// Reads the block ranges (or, for a null range, the whole day) one after the other in the
    /// connection's transaction, under the read's settings, which are put back after the last.
    /// </summary>
    private static async Task<Segment[]> ReadRangesAsync(NpgsqlConnection connection, DateOnly day, BlockRange?[] blockRanges, int chunkBlocks, CancellationToken cancellationToken)
    {
        // A sequential scan that starts while another scans the same large table joins it midway
        // and wraps around (synchronized scans): each range would then scan more than its own
        // blocks. The grouping holds the range's pairs in memory until its scan ends, so its
        // memory is raised for the read; and the planner, which cannot know how few runs a day
        // has (it multiplies the grouping columns' distinct values), would sort the day's rows to
        // group them, which costs more than the read, so sorting is off for it. PostgreSQL's JIT
        // would compile each range's statement anew (LLVM took about a twelfth of the box's CPU
        // during a read of 10,000,000 records, and the run was no slower without it), so it is
        // off for the read too. The three settings are put back after the read.
        (string WorkMem, string EnableSort, string Jit) saved;
        await using (var settings = new NpgsqlCommand("SELECT current_setting('work_mem'), current_setting('enable_sort'), current_setting('jit')", connection))
        await using (NpgsqlDataReader reader = await settings.ExecuteReaderAsync(cancellationToken))
        {
            saved = await reader.ReadAsync(cancellationToken) ? (reader.GetString(0), reader.GetString(1), reader.GetString(2)) : throw new InvalidOperationException("PostgreSQL returned no settings.");
        }

        await using (var setup = new NpgsqlCommand($"SET LOCAL synchronize_seqscans = off; SET LOCAL work_mem = '{DayReadWorkMemMb}MB'; SET LOCAL enable_sort = off; SET LOCAL jit = off", connection))
        {
            await setup.ExecuteNonQueryAsync(cancellationToken);
        }

        // One buffer for all of the connection's ranges: a fresh 32 MiB for each would be paged in anew.
        byte[] buffer = GC.AllocateUninitializedArray<byte>(DayReadBufferBytes);
        var read = new Segment[blockRanges.Length];
        for (int k = 0; k < blockRanges.Length; k++)
        {
            read[k] = await ReadRangeAsync(connection, day, blockRanges[k], chunkBlocks, buffer, cancellationToken);
        }

        await using (var restore = new NpgsqlCommand("SELECT set_config('work_mem', $1, true), set_config('enable_sort', $2, true), set_config('jit', $3, true)", connection)
        {
            Parameters = { new() { Value = saved.WorkMem }, new() { Value = saved.EnableSort }, new() { Value = saved.Jit } },
        })
        {
            await restore.ExecuteNonQueryAsync(cancellationToken);
        }

        return read;
    }

    /// <summary>
    /// One read of the day's records (of the block range, or all), in the connection's
    /// transaction: one <c>COPY (SELECT …) TO STDOUT</c> in binary of the day's runs
    /// (<see cref="DailyLeaves.RunsSql"/>), grouped by PostgreSQL per provider, stream and block
    /// of sequence numbers, a range's a chunk of <paramref name="chunkBlocks"/> blocks at a time
    /// (<see cref="DailyLeaves.ChunkedRunsSql"/>) so that its runs flow while PostgreSQL scans,
    /// parsed straight from Npgsql's raw COPY stream. Each run's records go
    /// to the totals of their provider, holder and model, each with its card time from its
    /// duration, and its records' chain hashes to its stream's leaves, whose chunks are hashed
    /// on the thread pool while the runs arrive.
    /// </summary>
    private static async Task<Segment> ReadRangeAsync(NpgsqlConnection connection, DateOnly day, BlockRange? blockRange, int chunkBlocks, byte[] buffer, CancellationToken cancellationToken)
    {
        string runsSql = blockRange is { } range
            ? DailyLeaves.ChunkedRunsSql(day, DayRecordAttributes, range.FromBlock, range.UntilBlock, range.OpenAbove, chunkBlocks)
            : DailyLeaves.RunsSql(day, DayRecordAttributes, null);
        string copySql = $"COPY ({runsSql}) TO STDOUT (FORMAT BINARY)";
        var leaves = new LeafCollector(day);
        var totals = new DayTotals();
        long records = 0;
        try
        {
            await using (NpgsqlRawCopyStream copy = await connection.BeginRawBinaryCopyAsync(copySql, cancellationToken))
            {
                var runs = new BinaryCopyReader(copy, DayColumnCount, buffer);
                while (await runs.ReadAsync(cancellationToken))
                {
                    long runRecords = runs.Int64(2);
                    long usageNpfh = runs.Int64(3);
                    StreamLeaves stream = leaves.AddRun(runs.Field(0), runs.Field(1), runRecords, usageNpfh, runs.Int64(4), runs.Field(5));
                    totals.AddRecords(stream.ProviderUtf8, runRecords, usageNpfh, new RunAttributes(runs.Field(6), runs.Field(7), runs.Field(8), runs.Field(9), runs.Field(10), runs.Field(11)));
                    records += runRecords;
                }
            }

            await leaves.FinishAsync();
        }
        finally
        {
            await leaves.DrainAsync();
        }

        return new Segment(totals, leaves, records);
    }

    /// <summary>
    /// Each provider's root of the day, folded from the pass's leaves once its streams are put in
    /// sequence order (pure CPU, providers side by side), with the leaves' own count of usage for
    /// the reconciliation. These are the roots as settled, which the statements publish.
    /// </summary>
    private static Dictionary<string, (DailyRoot Root, long UsageNpfh)> FoldRoots(DateOnly day, List<ProviderLeaves> providers, CancellationToken cancellationToken)
    {
        var roots = new (DailyRoot Root, long UsageNpfh)[providers.Count];
        Parallel.For(0, providers.Count, new ParallelOptions { CancellationToken = cancellationToken },
            i =>
            {
                providers[i].Order();
                roots[i] = (providers[i].Fold(day, MerkleCutOff.AsSettled), providers[i].UsageNpfh);
            });
        return roots.ToDictionary(r => r.Root.ProviderId, StringComparer.Ordinal);
    }

    /// <summary>
    /// Records of closed days (other than this run's day) above the previous run's marks and up
    /// to this run's, which is where the snapshot's stream heads stand. Each stream's range is
    /// read along its primary key.
    /// </summary>
    private static async Task<List<Group>> AggregateLateAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, long previousRun, DateOnly day, DateOnly[] closedDays,
        CancellationToken cancellationToken)
    {
        DateOnly[] candidates = closedDays.Where(d => d != day).ToArray();
        if (candidates.Length == 0)
        {
            return [];
        }

        await using var command = new NpgsqlCommand($"""
            SELECT u.provider_id, u.holder_code, u.device_model, ((u.start_at AT TIME ZONE 'UTC') + interval '8 hours')::date AS usage_day,
                   count(*)::bigint, sum(u.usage_npfh)::bigint, sum({CardMsSql})::bigint
            FROM ingest_streams m
            LEFT JOIN settlement_stream_marks p ON p.provider_id = m.provider_id AND p.stream_id = m.stream_id AND p.run_id = $1
            JOIN LATERAL (
                SELECT * FROM usage_records r
                WHERE r.provider_id = m.provider_id AND r.stream_id = m.stream_id
                  AND r.sequence > coalesce(p.committed_sequence, 0) AND r.sequence <= m.committed_sequence
                  AND r.start_at >= $2 AND r.start_at < $3
            ) u ON true
            WHERE m.stream_id NOT LIKE 'proof:%' AND m.committed_sequence > coalesce(p.committed_sequence, 0)
              AND ((u.start_at AT TIME ZONE 'UTC') + interval '8 hours')::date = ANY($4)
            GROUP BY 1, 2, 3, 4
            """, connection, transaction)
        {
            Parameters =
            {
                new() { Value = previousRun },
                new() { Value = ShanghaiTime.StartOf(candidates.Min()).UtcDateTime },
                new() { Value = ShanghaiTime.StartOf(candidates.Max().AddDays(1)).UtcDateTime },
                new() { Value = candidates, NpgsqlDbType = NpgsqlDbType.Array | NpgsqlDbType.Date },
            },
            CommandTimeout = 0,
        };
        var groups = new List<Group>();
        await using NpgsqlDataReader reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            groups.Add(new Group("adjustment", reader.GetFieldValue<DateOnly>(3), reader.GetString(0), reader.GetString(1), reader.GetString(2), reader.GetInt64(4), reader.GetInt64(5), reader.GetInt64(6)));
        }

        return groups;
    }
}
