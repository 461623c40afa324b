using Metering.Engine.Registry;
using Npgsql;

namespace Metering.Engine.Audit;

/// <summary>Re-verifies a filing's metering-log proof stream for the registry (the registry's port, implemented here so that the registry does not call up into Audit).</summary>
public sealed class RegistryProofEvidence(NpgsqlDataSource dataSource) : IProofChainEvidence
{
    public async Task<ProofChainEvidence> VerifyStreamAsync(string providerId, string streamId, CancellationToken cancellationToken)
    {
        ChainVerification verification = await new ChainVerifier(dataSource).VerifyStreamAsync(providerId, streamId, cancellationToken);
        return new ProofChainEvidence(verification.RecordsChecked, verification.ComputedHead, verification.FirstBrokenSequence, verification.Evidence);
    }
}
