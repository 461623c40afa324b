using Metering.Engine.Audit;
using Metering.Engine.Catalog;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;

namespace Metering.Server.Audit;

/// <summary>
/// The engine's audit services, registered once for the server's life: each holds only the data
/// source, the clock and its settings, so one instance serves every call at once.
/// </summary>
internal static class AuditServices
{
    public static IServiceCollection AddAuditServices(this IServiceCollection services, DeviceCatalog catalog, TimeProvider time, DetectorSettings? anomalies = null)
    {
        services.AddSingleton(provider => new AuditedProvider(provider.GetRequiredService<NpgsqlDataSource>()));
        services.AddSingleton(provider => new AuditQueryLog(provider.GetRequiredService<NpgsqlDataSource>(), time));
        services.AddSingleton(provider => new ChainVerifier(provider.GetRequiredService<NpgsqlDataSource>()));
        services.AddSingleton(provider => new DailyMerkle(provider.GetRequiredService<NpgsqlDataSource>()));
        services.AddSingleton(provider => new UsageQueries(provider.GetRequiredService<NpgsqlDataSource>()));
        services.AddSingleton(provider => new UsageExport(provider.GetRequiredService<NpgsqlDataSource>()));
        services.AddSingleton(provider => new AnomalyDetectors(provider.GetRequiredService<NpgsqlDataSource>(), time, anomalies));
        services.AddSingleton(provider => new HtmlReport(provider.GetRequiredService<NpgsqlDataSource>(), catalog, time));
        return services;
    }
}
