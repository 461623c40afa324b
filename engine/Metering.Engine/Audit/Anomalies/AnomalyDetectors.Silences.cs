using System.Globalization;
using Dapper;
using Metering.Engine.Ingest;
using Metering.Engine.Storage;
using Npgsql;

namespace Metering.Engine.Audit;

public sealed partial class AnomalyDetectors
{
    /// <summary>A stream's heartbeat minutes from <see cref="FirstMinuteMs"/> to <see cref="LastMinuteMs"/>, no two consecutive ones further apart than the silence threshold.</summary>
    private sealed record HeartbeatRun(string StreamId, long FirstMinuteMs, long LastMinuteMs);

    /// <summary>What covered a stream before the period: the end of its last record that started before it, and its last heartbeat minute before it.</summary>
    private readonly record struct CoveredBefore(long? LastEndMs, long? LastHeartbeatMinuteMs);

    /// <summary>For the silence before a stream's first record or heartbeat in the period: what covered it last before the period.</summary>
    private async Task<Dictionary<string, CoveredBefore>> CoveredBeforeAsync(string providerId, long fromMs, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var rows = await connection.QueryAsync<(string Stream, DateTime? End, DateTime? Heartbeat)>(new CommandDefinition("""
            SELECT s.stream_id,
                   (SELECT r.end_at FROM usage_records r WHERE r.provider_id = s.provider_id AND r.stream_id = s.stream_id AND r.start_at < @from
                    ORDER BY r.sequence DESC LIMIT 1),
                   (SELECT h.minute_at FROM stream_heartbeats h WHERE h.provider_id = s.provider_id AND h.stream_id = s.stream_id AND h.minute_at < @from
                    ORDER BY h.minute_at DESC LIMIT 1)
            FROM ingest_streams s WHERE s.provider_id = @providerId AND s.stream_id NOT LIKE 'proof:%'
            """, new { providerId, from = UnixMs.ToDateTime(fromMs) }, cancellationToken: cancellationToken));
        return rows.Where(r => r.End is not null || r.Heartbeat is not null).ToDictionary(
            r => r.Stream,
            r => new CoveredBefore(r.End is { } end ? UnixMs.FromDateTime(end) : null, r.Heartbeat is { } beat ? UnixMs.FromDateTime(beat) : null),
            StringComparer.Ordinal);
    }

    /// <summary>
    /// The provider's heartbeat minutes in [from, until), folded by the database into runs in
    /// which consecutive minutes of a stream lie at most the silence threshold apart (a minute
    /// covers itself, so two minutes leave a gap of their distance less one minute). No silence
    /// can lie inside a run, so the detector needs only each run's first and last minute, however
    /// many minutes there are. Each stream's minutes are read through the table's key.
    /// </summary>
    private async Task<List<HeartbeatRun>> HeartbeatRunsAsync(string providerId, long fromMs, long untilMs, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var rows = (await connection.QueryAsync<(string Stream, DateTime First, DateTime Last)>(new CommandDefinition("""
            SELECT stream_id, min(minute_at), max(minute_at)
            FROM (SELECT stream_id, minute_at, sum(starts) OVER (PARTITION BY stream_id ORDER BY minute_at) AS run
                  FROM (SELECT s.stream_id, h.minute_at,
                               CASE WHEN h.minute_at - lag(h.minute_at) OVER (PARTITION BY s.stream_id ORDER BY h.minute_at) <= @joined THEN 0 ELSE 1 END AS starts
                        FROM ingest_streams s
                        CROSS JOIN LATERAL (SELECT minute_at FROM stream_heartbeats h
                                            WHERE h.provider_id = s.provider_id AND h.stream_id = s.stream_id AND h.minute_at >= @from AND h.minute_at < @until) h
                        WHERE s.provider_id = @providerId AND s.stream_id NOT LIKE 'proof:%') marked) numbered
            GROUP BY stream_id, run
            LIMIT @limit
            """, new
        {
            providerId,
            from = UnixMs.ToDateTime(fromMs),
            until = UnixMs.ToDateTime(Math.Max(fromMs, untilMs)),
            joined = _settings.Silence + TimeSpan.FromMilliseconds(HeartbeatMinutes.MinuteMs),
            limit = _settings.HeartbeatRunsMax + 1,
        }, cancellationToken: cancellationToken))).ToList();
        if (rows.Count > _settings.HeartbeatRunsMax)
        {
            throw new AuditLimitExceededException($"{providerId} has more than {_settings.HeartbeatRunsMax:N0} runs of heartbeats in the period; detect over a shorter period.");
        }

        return rows.Select(r => new HeartbeatRun(r.Stream, UnixMs.FromDateTime(r.First), UnixMs.FromDateTime(r.Last))).ToList();
    }

    /// <summary>Something that covers a stream over [start, end): one record, or one run of heartbeat minutes.</summary>
    private readonly record struct Cover(long StartMs, long EndMs, Usage? Record, HeartbeatRun? Heartbeats);

    /// <summary>
    /// Rule: a stream is covered over each of its records, [start, end), and over each minute (by
    /// the server's clock) in which it sent a heartbeat, [minute, minute + 1 min). Taking records
    /// and heartbeat minutes together in start order, the stream is covered up to the latest end
    /// so far; whenever the next one starts more than the silence threshold after that, or the
    /// period (cut at now) ends that long after it, the stream was silent: neither records nor
    /// heartbeats. A stream that had records or heartbeats before the period counts from the last
    /// of them; otherwise it is judged from its first record or heartbeat, and a stream that never
    /// sent either is not judged. The evidence is the record before the silence and the first one
    /// after it; the facts add the minute of the last heartbeat before it and of the first after
    /// it (or "none").
    /// </summary>
    private IEnumerable<Anomaly> Silences(string providerId, List<Usage> records, List<HeartbeatRun> heartbeats, long fromMs, long untilMs, Dictionary<string, CoveredBefore> coveredBefore)
    {
        long silenceMs = (long)_settings.Silence.TotalMilliseconds;
        var recordsOf = records.GroupBy(r => r.StreamId).ToDictionary(g => g.Key, g => g.ToList(), StringComparer.Ordinal);
        var heartbeatsOf = heartbeats.GroupBy(h => h.StreamId).ToDictionary(g => g.Key, g => g.ToList(), StringComparer.Ordinal);
        foreach (string stream in recordsOf.Keys.Concat(heartbeatsOf.Keys).Concat(coveredBefore.Keys).Distinct().Order(StringComparer.Ordinal))
        {
            var covers = new List<Cover>();
            covers.AddRange((recordsOf.GetValueOrDefault(stream) ?? []).Select(r => new Cover(r.StartMs, r.EndMs, r, null)));
            covers.AddRange((heartbeatsOf.GetValueOrDefault(stream) ?? []).Select(h => new Cover(h.FirstMinuteMs, h.LastMinuteMs + HeartbeatMinutes.MinuteMs, null, h)));
            // Start order; at one instant records before heartbeats, and records in sequence.
            covers.Sort((a, b) => a.StartMs != b.StartMs ? a.StartMs.CompareTo(b.StartMs)
                : (a.Record?.Sequence ?? ulong.MaxValue).CompareTo(b.Record?.Sequence ?? ulong.MaxValue));

            // The first record and the first heartbeat run at or after each position, for the evidence after a silence.
            var recordFrom = new Usage?[covers.Count + 1];
            var heartbeatsFrom = new HeartbeatRun?[covers.Count + 1];
            for (int i = covers.Count - 1; i >= 0; i--)
            {
                recordFrom[i] = covers[i].Record ?? recordFrom[i + 1];
                heartbeatsFrom[i] = covers[i].Heartbeats ?? heartbeatsFrom[i + 1];
            }

            CoveredBefore prior = coveredBefore.GetValueOrDefault(stream);
            long covered = Math.Max(prior.LastEndMs ?? long.MinValue, prior.LastHeartbeatMinuteMs is long minute ? minute + HeartbeatMinutes.MinuteMs : long.MinValue);
            long? lastHeartbeat = prior.LastHeartbeatMinuteMs;
            Usage? before = null;
            for (int i = 0; i < covers.Count; i++)
            {
                Cover cover = covers[i];
                if (covered != long.MinValue && cover.StartMs > fromMs)
                {
                    long silentFrom = Math.Max(covered, fromMs);
                    if (cover.StartMs - silentFrom > silenceMs)
                    {
                        yield return Silence(providerId, stream, silentFrom, cover.StartMs, before, recordFrom[i], lastHeartbeat, heartbeatsFrom[i]?.FirstMinuteMs);
                    }
                }

                covered = Math.Max(covered, cover.EndMs);
                if (cover.Record is { } record)
                {
                    before = record;
                }
                else
                {
                    lastHeartbeat = cover.Heartbeats!.LastMinuteMs;
                }
            }

            if (covered != long.MinValue && untilMs - Math.Max(covered, fromMs) > silenceMs)
            {
                yield return Silence(providerId, stream, Math.Max(covered, fromMs), untilMs, before, null, lastHeartbeat, null);
            }
        }
    }

    private Anomaly Silence(string providerId, string stream, long fromMs, long untilMs, Usage? before, Usage? after, long? lastHeartbeatMinuteMs, long? nextHeartbeatMinuteMs)
    {
        long minutes = (untilMs - fromMs) / 60_000;
        List<EvidenceRow> evidence = new[] { before, after }.Where(r => r is not null).Select(r => r!.Evidence()).ToList();
        bool toTheEnd = after is null && nextHeartbeatMinuteMs is null;
        return new Anomaly(AnomalyKind.SilentStream, providerId, stream, fromMs, untilMs,
            $"{stream} sent no records or heartbeats for {minutes / 60} h {minutes % 60} min{(toTheEnd ? ", to the end of the period" : "")}",
            evidence, evidence.Count,
            [new("silent_minutes", minutes.ToString(CultureInfo.InvariantCulture)), new("threshold_minutes", ((long)_settings.Silence.TotalMinutes).ToString(CultureInfo.InvariantCulture)),
             new("last_heartbeat_before", lastHeartbeatMinuteMs is long last ? Time(last) : "none"),
             new("first_heartbeat_after", nextHeartbeatMinuteMs is long next ? Time(next) : "none")]);
    }
}
