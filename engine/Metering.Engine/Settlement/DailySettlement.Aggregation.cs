using System.Data;
using System.Globalization;
using Dapper;
using Metering.Engine.Audit;
using Metering.Engine.Registry;
using Metering.Engine.Time;
using Metering.Engine.Vouchers;
using Npgsql;
using NpgsqlTypes;

namespace Metering.Engine.Settlement;

// Stages 2 and 3 of a run: the day's usage in one set-based pass with the Merkle roots and the metered count beside it, then late data of closed days.
public sealed partial class DailySettlement
{
    /// <summary>Per-record card time in SQL, the same rule as <see cref="Pricing.CardMilliseconds"/>: devices × share × duration in ms, rounded down once.</summary>
    private const string CardMsSql = "div(u.device_count::numeric * u.share_numerator * (extract(epoch FROM u.end_at - u.start_at) * 1000), u.share_denominator)";

    /// <summary>The one set-based pass over the day's usage that settlement is built on; the bench times it alone as the floor.</summary>
    public const string DayAggregationSql = $"""
        SELECT u.provider_id, u.holder_code, u.device_model, count(*)::bigint, sum(u.usage_npfh)::bigint, sum({CardMsSql})::bigint
        FROM usage_records u
        WHERE u.start_at >= $1 AND u.start_at < $2 AND u.stream_id NOT LIKE 'proof:%'
        GROUP BY u.provider_id, u.holder_code, u.device_model
        """;

    private static async Task<List<Group>> AggregateDayAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, DateOnly day, DateTimeOffset dayStart, DateTimeOffset dayEnd,
        CancellationToken cancellationToken)
    {
        await using var command = new NpgsqlCommand(DayAggregationSql, connection, transaction)
        {
            Parameters = { new() { Value = dayStart.UtcDateTime }, new() { Value = dayEnd.UtcDateTime } },
            CommandTimeout = 0,
        };
        var groups = new List<Group>();
        await using NpgsqlDataReader reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            groups.Add(new Group("usage", day, reader.GetString(0), reader.GetString(1), reader.GetString(2), reader.GetInt64(3), reader.GetInt64(4), reader.GetInt64(5)));
        }

        return groups;
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

    /// <summary>
    /// The day's metered usage, read on its own on a second connection in the run's snapshot:
    /// one pass over the day's records (proof streams excluded) that counts them and their usage
    /// for the reconciliation and folds each provider's Merkle root of the day (merkle-proofs.md)
    /// from their chain hashes. These are the roots as settled, which the statements publish.
    /// </summary>
    private async Task<Dictionary<string, (DailyRoot Root, long UsageNpfh)>> MeterAsync(string snapshot, DateOnly day, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection side = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await side.BeginTransactionAsync(IsolationLevel.RepeatableRead, cancellationToken);
        await side.ExecuteAsync(new CommandDefinition($"SET TRANSACTION SNAPSHOT '{snapshot}'", transaction: transaction, cancellationToken: cancellationToken));
        var metered = await DailyMerkle.RootsInSnapshotAsync(side, transaction, day, cancellationToken);
        await transaction.CommitAsync(cancellationToken);
        return metered;
    }
}
