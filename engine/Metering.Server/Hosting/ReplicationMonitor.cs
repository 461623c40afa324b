using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using Grpc.Core;
using Metering.Engine.Storage;
using Metering.Engine.Telemetry;
using Metering.Protocol.V1;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Metering.Server.Hosting;

/// <summary>
/// Looks at the database's replication at start and then every
/// <see cref="ServerSettings.ReplicationCheckPeriodMs"/>, and, where the server requires durable
/// replication, holds back acknowledgements while a commit would live on the primary alone. The
/// look is periodic rather than per commit, so that the hot path reads one field; between two looks
/// a commit still waits for a synchronous standby whenever PostgreSQL names one, and the window in
/// which it does not (a standby dropped from synchronous_standby_names) is one period at most.
/// </summary>
internal sealed partial class ReplicationMonitor(NpgsqlDataSource dataSource, ServerSettings settings, ILogger<ReplicationMonitor> logger) : BackgroundService
{
    /// <summary>How long one look may take; a database slower than that does not count as durable.</summary>
    public static readonly TimeSpan CheckTimeout = TimeSpan.FromSeconds(2);

    private volatile ReplicationFinding _latest = new(ReplicationCondition.NotChecked, "", 0, "no check has run yet");

    /// <summary>Whether acknowledgements wait for durable replication (`serve --require-durable-replication`).</summary>
    public bool Required => settings.RequireDurableReplication;

    /// <summary>The latest look's finding.</summary>
    public ReplicationFinding Latest => _latest;

    /// <summary>The refusal to send instead of an acknowledgement, or null when the server may acknowledge.</summary>
    public RpcException? Refusal()
    {
        ReplicationFinding finding = _latest;
        if (!Required || finding.Condition == ReplicationCondition.Durable)
        {
            return null;
        }

        return Errors.Refused(StatusCode.Unavailable, IngestRefusal.ReplicationNotDurable,
            $"the server requires durable replication and the database does not provide it: {finding.Detail}; nothing is acknowledged until it does, reconnect later",
            new Dictionary<string, string> { ["why"] = WhyName(finding.Condition) });
    }

    /// <summary>The condition as the refusal's metadata and the metrics' reason label spell it.</summary>
    public static string WhyName(ReplicationCondition condition) => condition switch
    {
        ReplicationCondition.Durable => "DURABLE",
        ReplicationCondition.SynchronousCommitOff => "SYNCHRONOUS_COMMIT_OFF",
        ReplicationCondition.NoSynchronousStandby => "NO_SYNCHRONOUS_STANDBY",
        ReplicationCondition.NotPrimary => "NOT_PRIMARY",
        _ => "NOT_CHECKED",
    };

    /// <summary>Looks once before the server takes calls, so that the first stream meets a real finding.</summary>
    public override async Task StartAsync(CancellationToken cancellationToken)
    {
        await CheckOnceAsync(cancellationToken);
        ReplicationTelemetry.Watch(this);
        await base.StartAsync(cancellationToken);
    }

    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        ReplicationTelemetry.Forget(this);
        await base.StopAsync(cancellationToken);
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(TimeSpan.FromMilliseconds(settings.ReplicationCheckPeriodMs));
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken))
            {
                await CheckOnceAsync(stoppingToken);
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            // The server is stopping; the last finding no longer matters.
        }
    }

    private async Task CheckOnceAsync(CancellationToken cancellationToken)
    {
        ReplicationFinding finding;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(CheckTimeout);
        try
        {
            finding = await ReplicationDurability.CheckAsync(dataSource, timeout.Token);
        }
        catch (Exception e) when (e is NpgsqlException or TimeoutException || (e is OperationCanceledException && !cancellationToken.IsCancellationRequested))
        {
            finding = new(ReplicationCondition.NotChecked, "", 0, $"the database did not answer the replication check ({e.Message})");
        }

        ReplicationFinding previous = _latest;
        _latest = finding;
        if (previous.Condition == finding.Condition)
        {
            return;
        }

        if (finding.Condition == ReplicationCondition.Durable)
        {
            LogDurable(logger, finding.Detail);
        }
        else if (Required)
        {
            LogNotDurable(logger, WhyName(finding.Condition), finding.Detail);
        }
        else
        {
            LogNotDurableNotRequired(logger, WhyName(finding.Condition), finding.Detail);
        }
    }

    [LoggerMessage(EventId = 9101, Level = LogLevel.Information, Message = "Replication is durable: {Detail}")]
    private static partial void LogDurable(ILogger logger, string detail);

    [LoggerMessage(EventId = 9102, Level = LogLevel.Warning, Message = "Replication is not durable ({Why}): {Detail}; acknowledgements are refused until it is")]
    private static partial void LogNotDurable(ILogger logger, string why, string detail);

    [LoggerMessage(EventId = 9103, Level = LogLevel.Information, Message = "Replication is not durable ({Why}): {Detail}; not required (--require-durable-replication false)")]
    private static partial void LogNotDurableNotRequired(ILogger logger, string why, string detail);
}

/// <summary>
/// Health says NOT_SERVING while the server requires durable replication and does not have it:
/// a load balancer then sends streams elsewhere, and a person sees why in the check's description.
/// </summary>
internal sealed class ReplicationHealthCheck(ReplicationMonitor monitor) : IHealthCheck
{
    public const string Name = "replication";

    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        ReplicationFinding finding = monitor.Latest;
        return Task.FromResult(!monitor.Required || finding.Condition == ReplicationCondition.Durable
            ? HealthCheckResult.Healthy(finding.Detail)
            : HealthCheckResult.Unhealthy($"{ReplicationMonitor.WhyName(finding.Condition)}: {finding.Detail}"));
    }
}

/// <summary>
/// The gauge metering.replication.not_durable: for each condition other than durable, 1 while the
/// latest look found it and 0 otherwise, labelled with the condition's name, plus
/// metering.replication.required. The meter is the process's one; each running server's monitor
/// reports while it runs.
/// </summary>
internal static class ReplicationTelemetry
{
    private static readonly ConcurrentDictionary<ReplicationMonitor, byte> Monitors = new();

    private static readonly ReplicationCondition[] Conditions =
        [ReplicationCondition.SynchronousCommitOff, ReplicationCondition.NoSynchronousStandby, ReplicationCondition.NotPrimary, ReplicationCondition.NotChecked];

    private static readonly ObservableGauge<int> NotDurable = MeteringTelemetry.Meter.CreateObservableGauge("metering.replication.not_durable", Observe, unit: null,
        description: "1 for the condition that keeps replication from being durable now (label reason), 0 for the others; all 0 while a synchronous standby holds every commit.");

    private static readonly ObservableGauge<int> Required = MeteringTelemetry.Meter.CreateObservableGauge("metering.replication.required",
        () => Monitors.Keys.Select(m => new Measurement<int>(m.Required ? 1 : 0)), unit: null,
        description: "1 where the server refuses to acknowledge without durable replication (--require-durable-replication).");

    public static void Watch(ReplicationMonitor monitor)
    {
        // Touch both instruments, so that the static initialiser has created them before a scrape.
        _ = NotDurable.Name;
        _ = Required.Name;
        Monitors.TryAdd(monitor, 0);
    }

    public static void Forget(ReplicationMonitor monitor) => Monitors.TryRemove(monitor, out _);

    private static IEnumerable<Measurement<int>> Observe()
    {
        foreach (ReplicationMonitor monitor in Monitors.Keys)
        {
            ReplicationCondition now = monitor.Latest.Condition;
            foreach (ReplicationCondition condition in Conditions)
            {
                yield return new Measurement<int>(now == condition ? 1 : 0, new KeyValuePair<string, object?>("reason", ReplicationMonitor.WhyName(condition)));
            }
        }
    }
}
