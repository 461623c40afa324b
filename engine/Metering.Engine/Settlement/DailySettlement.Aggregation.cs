using System.Data;
using System.Globalization;
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

    /// <summary>What the one pass reads beside the five leaf columns: what the aggregation groups by and what card time is computed from.</summary>
    private const string DayColumns = "u.holder_code, u.device_model, u.device_count, u.share_numerator, u.share_denominator, u.start_at, u.end_at";

    private const int DayColumnCount = 12;

    /// <summary>The day's groups and every provider's leaves, in leaf order, from one read.</summary>
    private sealed record DayRead(List<Group> Groups, List<ProviderLeaves> Leaves);

    /// <summary>
    /// The day's records (proof streams excluded), read once in the run's snapshot: each row goes
    /// both to the aggregation per provider, holder and model and to its provider's Merkle
    /// leaves (the leaf statement of <see cref="DailyLeaves"/>, with the aggregation's columns
    /// added), so the leaves are exactly the records the run prices. With more than one segment
    /// the providers are shared out, by their streams' committed records, between the run's
    /// connection and connections that import its snapshot, each reading its providers' records
    /// alone; a provider's records are all in one segment, so segments merge by concatenation.
    /// </summary>
    private async Task<DayRead> ReadDayAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, DateOnly day, CancellationToken cancellationToken)
    {
        List<string>[] shares = await ShareProvidersAsync(connection, transaction, cancellationToken);
        if (shares.Length == 1)
        {
            return await ReadSegmentAsync(connection, day, null, cancellationToken);
        }

        // Segment k reads the providers of share k; the last reads every provider not in another
        // share, so that a record of a provider without a stream row is read all the same.
        string[] conditions = new string[shares.Length];
        for (int k = 0; k < shares.Length - 1; k++)
        {
            conditions[k] = $"u.provider_id = ANY({TextArrayLiteral(shares[k])})";
        }

        conditions[^1] = $"NOT (u.provider_id = ANY({TextArrayLiteral(shares.SkipLast(1).SelectMany(s => s).ToList())}))";
        string snapshot = await connection.ExecuteScalarAsync<string>(new CommandDefinition("SELECT pg_export_snapshot()", transaction: transaction, cancellationToken: cancellationToken))
            ?? throw new InvalidOperationException("PostgreSQL exported no snapshot.");
        var reads = new List<Task<DayRead>> { ReadSegmentAsync(connection, day, conditions[0], cancellationToken) };
        for (int k = 1; k < shares.Length; k++)
        {
            reads.Add(ReadSegmentInSnapshotAsync(snapshot, day, conditions[k], cancellationToken));
        }

        // WhenAll waits for every segment, so none outlives the run, however one ended.
        DayRead[] segments = await Task.WhenAll(reads);
        List<Group> groups = [.. segments.SelectMany(r => r.Groups)
            .OrderBy(g => g.Provider, StringComparer.Ordinal).ThenBy(g => g.Holder, StringComparer.Ordinal).ThenBy(g => g.Model, StringComparer.Ordinal)];
        List<ProviderLeaves> leaves = [.. segments.SelectMany(r => r.Leaves).OrderBy(p => p.ProviderId, StringComparer.Ordinal)];
        return new DayRead(groups, leaves);
    }

    /// <summary>
    /// The providers of the run's snapshot shared out into at most <see cref="SettlementOptions.DaySegments"/>
    /// shares of about equal committed records (largest first, each to the lightest share); one
    /// share when there is one segment or fewer than two providers.
    /// </summary>
    private async Task<List<string>[]> ShareProvidersAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, CancellationToken cancellationToken)
    {
        if (_options.DaySegments == 1)
        {
            return [[]];
        }

        var providers = (await connection.QueryAsync<(string Provider, long Records)>(new CommandDefinition("""
            SELECT provider_id, sum(committed_sequence)::bigint FROM ingest_streams WHERE stream_id NOT LIKE 'proof:%'
            GROUP BY provider_id ORDER BY 2 DESC, 1
            """, transaction: transaction, cancellationToken: cancellationToken))).ToList();
        if (providers.Count < 2)
        {
            return [[]];
        }

        int count = Math.Min(_options.DaySegments, providers.Count);
        var shares = Enumerable.Range(0, count).Select(_ => new List<string>()).ToArray();
        long[] weights = new long[count];
        foreach (var (provider, records) in providers)
        {
            int lightest = Array.IndexOf(weights, weights.Min());
            shares[lightest].Add(provider);
            weights[lightest] += records;
        }

        return shares;
    }

    /// <summary>A SQL literal of a text array: each element in single quotes, a quote in it doubled (standard_conforming_strings is on since PostgreSQL 9.1).</summary>
    private static string TextArrayLiteral(IReadOnlyCollection<string> values) =>
        values.Count == 0 ? "ARRAY[]::text[]" : $"ARRAY[{string.Join(", ", values.Select(v => "'" + v.Replace("'", "''", StringComparison.Ordinal) + "'"))}]::text[]";

    /// <summary>One segment of the day on a connection of its own, in a transaction that imports the run's snapshot.</summary>
    private async Task<DayRead> ReadSegmentInSnapshotAsync(string snapshot, DateOnly day, string providerCondition, CancellationToken cancellationToken)
    {
        // Off the caller's thread at once, so that the segments parse side by side.
        await Task.Yield();
        await using NpgsqlConnection side = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await side.BeginTransactionAsync(IsolationLevel.RepeatableRead, cancellationToken);
        await side.ExecuteAsync(new CommandDefinition($"SET TRANSACTION SNAPSHOT '{snapshot}'", transaction: transaction, cancellationToken: cancellationToken));
        await side.ExecuteAsync(new CommandDefinition($"SET LOCAL statement_timeout = {(long)_options.StatementTimeout.TotalMilliseconds}", transaction: transaction, cancellationToken: cancellationToken));
        DayRead read = await ReadSegmentAsync(side, day, providerCondition, cancellationToken);
        await transaction.CommitAsync(cancellationToken);
        return read;
    }

    /// <summary>
    /// One read of the day's records (of the providers the condition selects, or all), in the
    /// connection's transaction: one <c>COPY (SELECT …) TO STDOUT</c> in binary, parsed straight
    /// from Npgsql's raw COPY stream. Leaf chunks are hashed on the thread pool while the rows
    /// arrive.
    /// </summary>
    private static async Task<DayRead> ReadSegmentAsync(NpgsqlConnection connection, DateOnly day, string? providerCondition, CancellationToken cancellationToken)
    {
        string copySql = $"COPY ({DailyLeaves.Sql(day, oneProvider: false, MerkleCutOff.None, DayColumns, providerCondition)}) TO STDOUT (FORMAT BINARY)";
        // A sequential scan that starts while another scans the same large table joins it midway
        // and wraps around (synchronized scans): the rows of every stream would then come out of
        // sequence order, and putting ten million leaves back in order costs more than the read.
        await using (var unsynchronised = new NpgsqlCommand("SET LOCAL synchronize_seqscans = off", connection))
        {
            await unsynchronised.ExecuteNonQueryAsync(cancellationToken);
        }

        var leaves = new LeafCollector(day);
        var totals = new DayTotals();
        try
        {
            await using (NpgsqlRawCopyStream copy = await connection.BeginRawBinaryCopyAsync(copySql, cancellationToken))
            {
                var rows = new BinaryCopyReader(copy, DayColumnCount);
                while (await rows.ReadAsync(cancellationToken))
                {
                    long usageNpfh = rows.Int64(3);
                    StreamLeaves stream = leaves.Add(rows.Field(0), rows.Field(1), rows.Int64(2), rows.Field(4), usageNpfh);
                    totals.Add(stream.ProviderUtf8, rows.Field(5), rows.Field(6), usageNpfh, rows.Int32(7), rows.Int32(8), rows.Int32(9), rows.Int64(10), rows.Int64(11));
                }
            }

            await leaves.FinishAsync();
        }
        finally
        {
            await leaves.DrainAsync();
        }

        List<Group> groups = totals.Groups().Select(g => new Group("usage", day, g.Provider, g.Holder, g.Model, g.Records, g.UsageNpfh, g.CardMs)).ToList();
        return new DayRead(groups, leaves.Providers());
    }

    /// <summary>
    /// Each provider's root of the day, folded from the pass's leaves (pure CPU, providers side
    /// by side), with the leaves' own count of usage for the reconciliation. These are the roots
    /// as settled, which the statements publish.
    /// </summary>
    private static Dictionary<string, (DailyRoot Root, long UsageNpfh)> FoldRoots(DateOnly day, List<ProviderLeaves> providers, CancellationToken cancellationToken)
    {
        var roots = new (DailyRoot Root, long UsageNpfh)[providers.Count];
        Parallel.For(0, providers.Count, new ParallelOptions { CancellationToken = cancellationToken },
            i => roots[i] = (providers[i].Fold(day, MerkleCutOff.AsSettled), providers[i].UsageNpfh));
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
