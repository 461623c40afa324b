using Dapper;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Settlement;

/// <summary>A day that has ended and is not closed, with the usage records that start in it.</summary>
public sealed record PendingDay(DateOnly Day, long Records);

/// <summary>
/// The days a nightly settle has still to close: every day after the last closed one (or, before
/// the first settlement, from the first day with usage) through yesterday, Asia/Shanghai, with
/// the records of each, so that a day without records is closed only when someone says so.
/// </summary>
public sealed class PendingDays(NpgsqlDataSource dataSource, TimeProvider time)
{
    /// <summary>Most days one listing returns; a longer backlog is settled and listed again.</summary>
    public const int DaysMax = 400;

    public async Task<IReadOnlyList<PendingDay>> ListAsync(CancellationToken cancellationToken)
    {
        DateOnly yesterday = ShanghaiTime.DateOf(time.GetUtcNow()).AddDays(-1);
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        DateTime? lastClosed = await connection.ExecuteScalarAsync<DateTime?>(new CommandDefinition("SELECT max(day) FROM settlement_runs", cancellationToken: cancellationToken));
        DateOnly? from = lastClosed is { } closed
            ? DateOnly.FromDateTime(closed).AddDays(1)
            : await connection.ExecuteScalarAsync<DateTime?>(new CommandDefinition(
                "SELECT ((min(start_at) AT TIME ZONE 'UTC') + interval '8 hours')::date FROM usage_records WHERE stream_id NOT LIKE 'proof:%'",
                cancellationToken: cancellationToken)) is { } first ? DateOnly.FromDateTime(first) : null;
        if (from is not DateOnly start || start > yesterday)
        {
            return [];
        }

        DateOnly through = start.AddDays(DaysMax - 1) < yesterday ? start.AddDays(DaysMax - 1) : yesterday;
        Dictionary<DateOnly, long> counts = await CountAsync(connection, start, through, cancellationToken);
        var days = new List<PendingDay>();
        for (DateOnly day = start; day <= through; day = day.AddDays(1))
        {
            days.Add(new PendingDay(day, counts.GetValueOrDefault(day)));
        }

        return days;
    }

    /// <summary>
    /// Whether any usage record (proof streams aside) starts in <paramref name="day"/>: the first
    /// one found answers, so a day of ten million records costs no count before its settlement.
    /// The subquery selects a constant, not an empty list: Citus plans an empty target list over
    /// the shards of a distributed table into a statement PostgreSQL refuses ("a column
    /// definition list is required").
    /// </summary>
    public async Task<bool> HasRecordsAsync(DateOnly day, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await connection.ExecuteScalarAsync<bool>(new CommandDefinition(
            "SELECT EXISTS (SELECT 1 FROM usage_records WHERE start_at >= @from AND start_at < @until AND stream_id NOT LIKE 'proof:%')",
            new { from = ShanghaiTime.StartOf(day).UtcDateTime, until = ShanghaiTime.StartOf(day.AddDays(1)).UtcDateTime }, cancellationToken: cancellationToken));
    }

    private static async Task<Dictionary<DateOnly, long>> CountAsync(NpgsqlConnection connection, DateOnly from, DateOnly through, CancellationToken cancellationToken)
    {
        var rows = await connection.QueryAsync<(DateTime Day, long Records)>(new CommandDefinition("""
            SELECT ((start_at AT TIME ZONE 'UTC') + interval '8 hours')::date AS day, count(*) AS records
            FROM usage_records
            WHERE start_at >= @from AND start_at < @until AND stream_id NOT LIKE 'proof:%'
            GROUP BY 1
            """, new { from = ShanghaiTime.StartOf(from).UtcDateTime, until = ShanghaiTime.StartOf(through.AddDays(1)).UtcDateTime }, cancellationToken: cancellationToken));
        return rows.ToDictionary(r => DateOnly.FromDateTime(r.Day), r => r.Records);
    }
}
