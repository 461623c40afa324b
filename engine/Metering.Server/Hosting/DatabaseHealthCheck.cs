using Metering.Engine.Storage;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Npgsql;

namespace Metering.Server.Hosting;

/// <summary>
/// Healthy while the database answers and its schema is at the version this engine ships; what
/// grpc.health.v1.Health reports as SERVING. One query per run, and runs are periodic rather
/// than per call (<see cref="ServerSettings.HealthCheckPeriodMs"/>), since health is served to
/// anyone without a key and must not let them load the database.
/// </summary>
internal sealed class DatabaseHealthCheck(NpgsqlDataSource dataSource) : IHealthCheck
{
    /// <summary>The name the check is registered under, as a health report shows it.</summary>
    public const string Name = "database";

    /// <summary>How long one run may take before it counts as unhealthy: a database that slow is not serving.</summary>
    public static readonly TimeSpan Timeout = TimeSpan.FromMilliseconds(2000);

    private static readonly int Shipped = Migrator.Embedded().Count;

    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        try
        {
            await using NpgsqlCommand command = dataSource.CreateCommand("SELECT coalesce(max(version), 0) FROM schema_migrations");
            int current = Convert.ToInt32(await command.ExecuteScalarAsync(cancellationToken), System.Globalization.CultureInfo.InvariantCulture);
            return current == Shipped
                ? HealthCheckResult.Healthy($"schema version {current}")
                : HealthCheckResult.Unhealthy($"the database is at schema version {current}, this engine needs {Shipped}");
        }
        catch (Exception e) when (e is NpgsqlException or OperationCanceledException or TimeoutException)
        {
            return HealthCheckResult.Unhealthy("the database does not answer", e);
        }
    }
}
