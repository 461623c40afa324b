using Metering.Engine.Storage;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Metering.Server.Hosting;

/// <summary>
/// Warns, at start and then twice a day, when the monthly partitions that `metering db migrate`
/// creates end within <see cref="MonthlyPartitions.WarningDays"/> days of the server's clock:
/// records past the last one land in the default partition, where their month's partition can
/// no longer be created (Storage/README.md). Running migrate again adds the months ahead. The
/// look is a warning only; a failed look is logged and tried again at the next.
/// </summary>
internal sealed partial class PartitionCoverageMonitor(NpgsqlDataSource dataSource, TimeProvider time, ILogger<PartitionCoverageMonitor> logger) : BackgroundService
{
    /// <summary>How often the coverage is looked at after the first look.</summary>
    public static readonly TimeSpan Period = TimeSpan.FromHours(12);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            await LookAsync(stoppingToken);
            try
            {
                await Task.Delay(Period, time, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    /// <summary>Logs a warning for each table whose partitions end within the warning window; returns those tables.</summary>
    public async Task<IReadOnlyList<string>> LookAsync(CancellationToken cancellationToken)
    {
        var shortOf = new List<string>();
        try
        {
            await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
            DateTimeOffset now = time.GetUtcNow();
            foreach (var (table, endsAt) in await MonthlyPartitions.CoverageAsync(connection, cancellationToken))
            {
                if (endsAt is { } end && end - now < TimeSpan.FromDays(MonthlyPartitions.WarningDays))
                {
                    LogRunningOut(logger, table, end, Math.Max(0, (int)Math.Floor((end - now).TotalDays)));
                    shortOf.Add(table);
                }
            }
        }
        catch (Exception e) when (e is NpgsqlException or TimeoutException)
        {
            LogLookFailed(logger, e.Message);
        }

        return shortOf;
    }

    [LoggerMessage(EventId = 9201, Level = LogLevel.Warning, Message = "The monthly partitions of {Table} end at {EndsAt:O}, in {Days} day(s): later records go to its default partition; run `metering db migrate` (--partition-months-ahead) to add the months ahead")]
    private static partial void LogRunningOut(ILogger logger, string table, DateTimeOffset endsAt, int days);

    [LoggerMessage(EventId = 9202, Level = LogLevel.Warning, Message = "Could not read how far the monthly partitions reach: {Detail}")]
    private static partial void LogLookFailed(ILogger logger, string detail);
}
