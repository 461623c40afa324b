using System.Globalization;
using Npgsql;

namespace Metering.Engine.Audit;

public sealed partial class AnomalyDetectors
{
    /// <summary>Rule: every stream of the provider (proof streams too) is verified whole; each broken chain is one anomaly with the evidence of its first broken link.</summary>
    private async Task<IEnumerable<Anomaly>> ChainBreaksAsync(string providerId, CancellationToken cancellationToken)
    {
        IReadOnlyList<ChainVerification> verifications = await new ChainVerifier(dataSource).VerifyProviderAsync(providerId, VerificationRange.Whole, cancellationToken);
        var anomalies = new List<Anomaly>();
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        foreach (ChainVerification v in verifications.Where(v => !v.Intact))
        {
            ChainBreak evidence = v.Break!;
            List<EvidenceRow> rows = await EvidenceAsync(connection, providerId, v.StreamId, evidence.Sequence, cancellationToken);
            long at = rows.Count > 0 ? rows[0].StartUnixMs : 0;
            anomalies.Add(new Anomaly(AnomalyKind.ChainBroken, providerId, v.StreamId, at, rows.Count > 0 ? rows[0].EndUnixMs : 0,
                $"the chain of {v.StreamId} breaks at record {evidence.Sequence}: {evidence.Detail}", rows, rows.Count,
                [new("kind", evidence.Kind.ToString()), new("sequence", evidence.Sequence.ToString(CultureInfo.InvariantCulture)), new("previous_hash", evidence.PreviousHashHex),
                 new("stored_hash", evidence.StoredHashHex), new("computed_hash", evidence.ComputedHashHex), new("canonical", evidence.CanonicalHex)]));
        }

        return anomalies;
    }
}
