using System.Globalization;
using Dapper;
using Npgsql;

namespace Metering.Engine.Audit;

/// <summary>
/// Which usage records an audit query covers: those whose start lies in [From, Until), narrowed
/// by any of the optional fields. Proof streams are left out unless asked for: they are an
/// applicant's demonstration, not usage.
/// </summary>
public sealed record UsageFilter
{
    /// <summary>The longest period one query may cover.</summary>
    public static readonly TimeSpan PeriodMax = TimeSpan.FromDays(400);

    public string? ProviderId { get; init; }
    public string? HolderCode { get; init; }
    public string? JobId { get; init; }
    public string? DeviceModel { get; init; }
    public string? Site { get; init; }
    public string? StreamId { get; init; }
    public required DateTimeOffset From { get; init; }
    public required DateTimeOffset Until { get; init; }
    public bool IncludeProofStreams { get; init; }

    /// <summary>Throws <see cref="ArgumentException"/> naming what is wrong.</summary>
    public void Validate()
    {
        if (Until <= From)
        {
            throw new ArgumentException($"The period must end after it starts; it runs from {From:O} to {Until:O}.");
        }

        if (Until - From > PeriodMax)
        {
            throw new ArgumentException($"A query covers at most {PeriodMax.TotalDays:0} days; split the period.");
        }

        foreach (string? value in new[] { ProviderId, HolderCode, JobId, DeviceModel, Site, StreamId })
        {
            if (value is { Length: > 256 })
            {
                throw new ArgumentException("A filter value is longer than 256 characters.");
            }
        }
    }

    internal object Parameters => new
    {
        providerId = ProviderId,
        holderCode = HolderCode,
        jobId = JobId,
        deviceModel = DeviceModel,
        site = Site,
        streamId = StreamId,
        from = From.UtcDateTime,
        until = Until.UtcDateTime,
        includeProof = IncludeProofStreams,
    };

    internal const string Where = """
        start_at >= @from AND start_at < @until
          AND (@providerId::text IS NULL OR provider_id = @providerId)
          AND (@holderCode::text IS NULL OR holder_code = @holderCode)
          AND (@jobId::text IS NULL OR job_id = @jobId)
          AND (@deviceModel::text IS NULL OR device_model = @deviceModel)
          AND (@site::text IS NULL OR site = @site)
          AND (@streamId::text IS NULL OR stream_id = @streamId)
          AND (@includeProof OR stream_id NOT LIKE 'proof:%')
        """;
}

/// <summary>What an audit usage query groups by.</summary>
public enum UsageGrouping
{
    None,
    Provider,
    Holder,
    Job,
    DeviceModel,
    Site,
    Stream,

    /// <summary>Asia/Shanghai calendar day of the record's start, yyyy-MM-dd.</summary>
    Day,
}

/// <summary>
/// Totals of a set of records, all exact integers: the record count; device-milliseconds
/// (devices × share × duration, rounded down per record, the same rule as usage); and FP16 usage
/// in nano-PFLOPS·h as stored.
/// </summary>
public sealed record UsageTotals(string Key, long Records, long DeviceMs, long UsageNanoPflopsHours)
{
    public const long MsPerHour = 3_600_000;

    /// <summary>Device-hours with three decimals, rounded down, from integers.</summary>
    public string DeviceHours => Units.Fixed(DeviceMs / 3_600, 3);

    /// <summary>PFLOPS·h with nine decimals: exactly the stored nPFh.</summary>
    public string PflopsHours => Units.Fixed(UsageNanoPflopsHours, 9);
}

/// <summary>The groups of a usage query (largest usage first) and their total.</summary>
public sealed record UsageSummary(IReadOnlyList<UsageTotals> Groups, UsageTotals Total, bool Truncated);

/// <summary>Fixed-point formatting of integers; the audit path never touches floating point.</summary>
internal static class Units
{
    /// <summary>Formats <paramref name="scaled"/> / 10^<paramref name="decimals"/> with thousands separators.</summary>
    public static string Fixed(long scaled, int decimals)
    {
        long unit = 1;
        for (int i = 0; i < decimals; i++)
        {
            unit *= 10;
        }

        long whole = Math.DivRem(Math.Abs(scaled), unit, out long fraction);
        string sign = scaled < 0 ? "-" : "";
        return decimals == 0
            ? string.Create(CultureInfo.InvariantCulture, $"{sign}{whole:N0}")
            : string.Create(CultureInfo.InvariantCulture, $"{sign}{whole:N0}.{fraction.ToString(new string('0', decimals), CultureInfo.InvariantCulture)}");
    }
}

/// <summary>Usage totals for audit queries, computed by PostgreSQL over the partitions of the period.</summary>
public sealed class UsageQueries(NpgsqlDataSource dataSource)
{
    /// <summary>Most groups one query returns; the rest are summed in the total and flagged as truncated.</summary>
    public const int GroupsMax = 10_000;

    /// <summary>Device-milliseconds of a row, rounded down: count × numerator × duration ÷ denominator, in exact numeric arithmetic.</summary>
    internal const string DeviceMsSql =
        "div(device_count::numeric * share_numerator * ((extract(epoch FROM end_at) - extract(epoch FROM start_at)) * 1000), share_denominator)";

    public async Task<UsageSummary> SummariseAsync(UsageFilter filter, UsageGrouping grouping, int groupsLimit, CancellationToken cancellationToken)
    {
        filter.Validate();
        groupsLimit = groupsLimit <= 0 ? GroupsMax : Math.Min(groupsLimit, GroupsMax);
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        // One snapshot for the groups and the total, so that they add up.
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(System.Data.IsolationLevel.RepeatableRead, cancellationToken);
        var total = await connection.QuerySingleAsync<(long Records, decimal DeviceMs, decimal Usage)>(new CommandDefinition($"""
            SELECT count(*), coalesce(sum({DeviceMsSql}), 0), coalesce(sum(usage_npfh), 0) FROM usage_records WHERE {UsageFilter.Where}
            """, filter.Parameters, transaction, cancellationToken: cancellationToken));
        var groups = new List<UsageTotals>();
        bool truncated = false;
        if (grouping != UsageGrouping.None)
        {
            string key = KeySql(grouping);
            var rows = await connection.QueryAsync<(string Key, long Records, decimal DeviceMs, decimal Usage)>(new CommandDefinition($"""
                SELECT {key} AS key, count(*), sum({DeviceMsSql}), sum(usage_npfh) FROM usage_records WHERE {UsageFilter.Where}
                GROUP BY 1 ORDER BY 4 DESC, {key} COLLATE "C" LIMIT {groupsLimit + 1}
                """, filter.Parameters, transaction, cancellationToken: cancellationToken));
            groups.AddRange(rows.Select(r => new UsageTotals(r.Key, r.Records, checked((long)r.DeviceMs), checked((long)r.Usage))));
            if (groups.Count > groupsLimit)
            {
                groups.RemoveAt(groups.Count - 1);
                truncated = true;
            }
        }

        await transaction.CommitAsync(cancellationToken);
        return new UsageSummary(groups, new UsageTotals("total", total.Records, checked((long)total.DeviceMs), checked((long)total.Usage)), truncated);
    }

    internal static string KeySql(UsageGrouping grouping) => grouping switch
    {
        UsageGrouping.Provider => "provider_id",
        UsageGrouping.Holder => "holder_code",
        UsageGrouping.Job => "job_id",
        UsageGrouping.DeviceModel => "device_model",
        UsageGrouping.Site => "site",
        UsageGrouping.Stream => "stream_id",
        UsageGrouping.Day => "to_char((start_at AT TIME ZONE 'UTC') + interval '8 hours', 'YYYY-MM-DD')",
        _ => throw new ArgumentOutOfRangeException(nameof(grouping)),
    };

    /// <summary>Usage of one record in device-milliseconds, rounded down (the engine's side of <see cref="DeviceMsSql"/>).</summary>
    public static long DeviceMs(uint deviceCount, uint shareNumerator, uint shareDenominator, long durationMs) =>
        checked((long)((UInt128)deviceCount * shareNumerator * (ulong)durationMs / shareDenominator));
}
