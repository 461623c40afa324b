using System.Globalization;
using Dapper;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Metering.Engine.Storage;

/// <summary>
/// Keeps the monthly partitions of the range-partitioned tables ahead of the clock. The
/// migrations create usage_records_2024_01 … usage_records_2027_12; every `metering db migrate`
/// (plain or --distributed) then creates each missing month from the month after the latest
/// partition through the current month plus <see cref="MonthsAheadDefault"/> (or what the
/// operator asks), named and bounded as the migrations name and bound them, so that it is
/// idempotent: a month whose partition exists is left alone. On Citus a partition created on a
/// distributed parent is distributed and co-located by Citus at once and inherits its row guards;
/// the migrator's guard step that follows adds its TRUNCATE guard and grants, as for any partition.
/// </summary>
/// <remarks>
/// A record of a month with no partition of its own lands in the DEFAULT partition
/// (usage_records_default). PostgreSQL then refuses to create that month's partition ("updated
/// partition constraint for default partition would be violated"), and moving the rows out would
/// delete evidence from an append-only table; so such a month is skipped, with a warning that
/// names it and how many rows hold it there, and the months after it are still created. Its rows
/// stay readable in the default partition (every query reads the parent table).
/// </remarks>
public static partial class MonthlyPartitions
{
    /// <summary>The tables partitioned by month on a timestamptz column; a test checks this against the migrated schema.</summary>
    public static IReadOnlyList<(string Table, string Column)> Tables { get; } = [("usage_records", "start_at")];

    /// <summary>Months created past the current one when the operator does not say: a year, so that a yearly migrate keeps ingest covered.</summary>
    public const int MonthsAheadDefault = 12;

    /// <summary>The most months ahead one run creates (ten years); past it, refused as a usage error.</summary>
    public const int MonthsAheadMax = 120;

    /// <summary>
    /// `metering serve` warns when the last monthly partition ends within this many days of its
    /// clock: the next records would go to the default partition, where their month's partition
    /// can no longer be created.
    /// </summary>
    public const int WarningDays = 60;

    /// <summary>Creates the missing monthly partitions of every table through the month of <paramref name="now"/> plus <paramref name="monthsAhead"/>; returns their names.</summary>
    public static async Task<IReadOnlyList<string>> EnsureAsync(NpgsqlConnection connection, DateTimeOffset now, int monthsAhead, ILogger logger, CancellationToken cancellationToken)
    {
        if (monthsAhead is < 0 or > MonthsAheadMax)
        {
            throw new ArgumentOutOfRangeException(nameof(monthsAhead), monthsAhead, $"Monthly partitions ahead must be 0 to {MonthsAheadMax}.");
        }

        var created = new List<string>();
        DateOnly through = FirstOfMonth(now.UtcDateTime).AddMonths(monthsAhead);
        foreach (var (table, column) in Tables)
        {
            DateOnly? latest = await LatestMonthAsync(connection, table, cancellationToken);
            if (latest is null)
            {
                continue;
            }

            for (DateOnly month = latest.Value.AddMonths(1); month <= through; month = month.AddMonths(1))
            {
                string name = NameOf(table, month);
                long stranded = await connection.ExecuteScalarAsync<long>(new CommandDefinition(
                    $"SELECT count(*) FROM {Quote(table + "_default")} WHERE {Quote(column)} >= @from AND {Quote(column)} < @until",
                    new { from = Bound(month), until = Bound(month.AddMonths(1)) }, cancellationToken: cancellationToken));
                if (stranded > 0)
                {
                    LogStranded(logger, name, stranded, table + "_default");
                    continue;
                }

                await connection.ExecuteAsync(new CommandDefinition(
                    $"CREATE TABLE IF NOT EXISTS {Quote(name)} PARTITION OF {Quote(table)} FOR VALUES FROM ('{Literal(month)}') TO ('{Literal(month.AddMonths(1))}')",
                    commandTimeout: 0, cancellationToken: cancellationToken));
                LogCreated(logger, name);
                created.Add(name);
            }
        }

        return created;
    }

    /// <summary>Where the last monthly partition of each table ends (exclusive), or null for a table with none.</summary>
    public static async Task<IReadOnlyList<(string Table, DateTimeOffset? EndsAt)>> CoverageAsync(NpgsqlConnection connection, CancellationToken cancellationToken)
    {
        var coverage = new List<(string, DateTimeOffset?)>();
        foreach (var (table, _) in Tables)
        {
            DateOnly? latest = await LatestMonthAsync(connection, table, cancellationToken);
            coverage.Add((table, latest is { } month ? new DateTimeOffset(Bound(month.AddMonths(1)), TimeSpan.Zero) : null));
        }

        return coverage;
    }

    /// <summary>The month of the table's latest partition named table_YYYY_MM, read from the catalog (the default partition and any other name left out).</summary>
    private static async Task<DateOnly?> LatestMonthAsync(NpgsqlConnection connection, string table, CancellationToken cancellationToken)
    {
        string? name = await connection.ExecuteScalarAsync<string?>(new CommandDefinition("""
            SELECT max(c.relname::text) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = to_regclass(@table) AND c.relname ~ ('^' || @table || '_[0-9]{4}_[0-9]{2}$')
            """, new { table }, cancellationToken: cancellationToken));
        return name is null ? null : DateOnly.ParseExact(name[(table.Length + 1)..], "yyyy_MM", CultureInfo.InvariantCulture);
    }

    private static DateOnly FirstOfMonth(DateTime utc) => new(utc.Year, utc.Month, 1);

    private static string NameOf(string table, DateOnly month) => $"{table}_{month.ToString("yyyy_MM", CultureInfo.InvariantCulture)}";

    private static DateTime Bound(DateOnly month) => month.ToDateTime(TimeOnly.MinValue, DateTimeKind.Utc);

    /// <summary>A bound as the migrations write it: midnight UTC of the month's first day.</summary>
    private static string Literal(DateOnly month) => month.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture) + " 00:00:00+00";

    private static string Quote(string identifier) => "\"" + identifier.Replace("\"", "\"\"", StringComparison.Ordinal) + "\"";

    [LoggerMessage(EventId = 1031, Level = LogLevel.Information, Message = "Created the monthly partition {Partition}")]
    private static partial void LogCreated(ILogger logger, string partition);

    [LoggerMessage(EventId = 1032, Level = LogLevel.Warning, Message = "Did not create the monthly partition {Partition}: {Rows} row(s) of its month are in {Default} already, where they stay (moving them would delete evidence); later months are created")]
    private static partial void LogStranded(ILogger logger, string partition, long rows, string @default);
}
