using Metering.Engine.Registry;
using Npgsql;

namespace Metering.Engine.Capacity;

/// <summary>Hands the registry's verification stage the provider's current fleet validation (the registry's port, implemented here so that the registry does not call up into Capacity).</summary>
public sealed class RegistryFleetEvidence : IFleetValidationEvidence
{
    public async Task<FleetValidationEvidence?> CurrentAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string providerId, DateTimeOffset now) =>
        await FleetValidationService.CurrentAsync(connection, transaction, providerId, now) is { } v
            ? new FleetValidationEvidence(v.ValidationId, v.InventoryVersion, v.VerifiedFp16Gflops, v.ExpiresAt, v.Nodes, v.Sampled, v.Failed, v.PassRateLowerBoundPpm)
            : null;
}
