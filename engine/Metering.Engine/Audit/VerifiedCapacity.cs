using Dapper;
using Npgsql;

namespace Metering.Engine.Audit;

/// <summary>A provider's verified devices, per site and device model.</summary>
public sealed class VerifiedCapacity(IReadOnlyDictionary<(string Site, string Model), long> devices, string source)
{
    /// <summary>Devices at a site of a model; 0 when none were declared there.</summary>
    public long DevicesAt(string site, string model) => devices.TryGetValue((site, model), out long count) ? count : 0;

    public IReadOnlyDictionary<(string Site, string Model), long> Devices => devices;

    /// <summary>Where the figures come from, for the report to say.</summary>
    public string Source => source;

    /// <summary>
    /// The one place that decides what "verified capacity" means. Until the capacity issue's
    /// fleet validation lands, it is the devices declared in the provider's admitted
    /// applications (application_capacity of applications in state 'admitted'), which the
    /// commissioned verification stage reviewed; an item admitted twice for the same site and
    /// model counts its devices once per application. When the validated fleet exists, this
    /// method reads it instead and nothing else changes.
    /// </summary>
    public static async Task<VerifiedCapacity> LoadAsync(NpgsqlDataSource dataSource, string providerId, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var rows = await connection.QueryAsync<(string Site, string Model, long Devices)>(new CommandDefinition("""
            SELECT c.site, c.device_model, sum(c.device_count)::bigint
            FROM application_capacity c JOIN applications a ON a.provider_id = c.provider_id AND a.application_id = c.application_id
            WHERE c.provider_id = @providerId AND a.state = 'admitted'
            GROUP BY c.site, c.device_model
            """, new { providerId }, cancellationToken: cancellationToken));
        return new VerifiedCapacity(rows.ToDictionary(r => (r.Site, r.Model), r => r.Devices), "devices declared in the provider's admitted applications");
    }
}
