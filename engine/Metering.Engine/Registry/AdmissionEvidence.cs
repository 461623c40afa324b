using Npgsql;

namespace Metering.Engine.Registry;

/// <summary>
/// A provider's completed, unexpired fleet validation, as the verification stage takes it. The
/// validation belongs to Capacity, which sits above the registry, so the registry reads it through
/// <see cref="IFleetValidationEvidence"/> instead of calling Capacity.
/// </summary>
public sealed record FleetValidationEvidence(long ValidationId, int InventoryVersion, long VerifiedFp16Gflops, DateTimeOffset ExpiresAt,
    int Nodes, int Sampled, int Failed, int PassRateLowerBoundPpm);

/// <summary>Reads the fleet validation that the verification stage may take in place of a commissioned verifier's figure.</summary>
public interface IFleetValidationEvidence
{
    /// <summary>
    /// The provider's validation that is completed and unexpired at <paramref name="now"/>, or null.
    /// It reads inside the registry's transaction, so that the figure taken is the one current
    /// while the application is locked.
    /// </summary>
    Task<FleetValidationEvidence?> CurrentAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string providerId, DateTimeOffset now);
}

/// <summary>
/// The outcome of re-verifying a metering-log proof stream's chain: how many records verified, the
/// head they compute to, and where it broke if it did.
/// </summary>
public sealed record ProofChainEvidence(ulong RecordsChecked, byte[] ComputedHead, ulong? FirstBrokenSequence, string? Evidence)
{
    public bool Intact => FirstBrokenSequence is null;
}

/// <summary>
/// Re-verifies the chain of the stream a provider names as its metering-log proof. The verifier
/// belongs to Audit, which sits above the registry, so filing reads it through this port.
/// </summary>
public interface IProofChainEvidence
{
    Task<ProofChainEvidence> VerifyStreamAsync(string providerId, string streamId, CancellationToken cancellationToken);
}
