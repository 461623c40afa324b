using System.Globalization;
using Dapper;
using Metering.Engine.Storage;
using Npgsql;

namespace Metering.Engine.Audit;

public sealed partial class AnomalyDetectors
{
    /// <summary>Rule: every tamper conflict recorded in the period, with the committed record it contradicts.</summary>
    private async Task<Counted> TamperConflictsAsync(string providerId, long fromMs, long untilMs, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        // The window counts every conflict of the period before the limit cuts the rows.
        var conflicts = (await connection.QueryAsync<(long Id, string Stream, long Sequence, byte[] Committed, byte[] Offered, byte[] Canonical, string? Peer, DateTime At, long Total)>(new CommandDefinition("""
            SELECT conflict_id, stream_id, sequence, committed_hash, offered_hash, offered_canonical, peer, detected_at, count(*) OVER () FROM tamper_conflicts
            WHERE provider_id = @providerId AND detected_at >= @from AND detected_at < @until ORDER BY conflict_id LIMIT @limit
            """, new { providerId, from = UnixMs.ToDateTime(fromMs), until = UnixMs.ToDateTime(untilMs), limit = _settings.AnomaliesPerKindMax }, cancellationToken: cancellationToken))).ToList();
        var anomalies = new List<Anomaly>();
        foreach (var c in conflicts)
        {
            List<EvidenceRow> committed = await EvidenceAsync(connection, providerId, c.Stream, (ulong)c.Sequence, cancellationToken);
            long at = UnixMs.FromDateTime(c.At);
            anomalies.Add(new Anomaly(AnomalyKind.TamperConflict, providerId, c.Stream, at, at,
                $"record {c.Sequence} of {c.Stream} was replayed with different content{(c.Peer is null ? "" : $" from {c.Peer}")}",
                committed, committed.Count,
                [new("conflict_id", c.Id.ToString(CultureInfo.InvariantCulture)), new("committed_hash", Convert.ToHexStringLower(c.Committed)),
                 new("offered_hash", Convert.ToHexStringLower(c.Offered)), new("offered_canonical", Convert.ToHexStringLower(c.Canonical))]));
        }

        return new Counted(anomalies, conflicts.Count == 0 ? 0 : conflicts[0].Total);
    }
}
