using System.Globalization;
using Dapper;
using Metering.Engine.Capacity;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Ingest;

/// <summary>The registry changed what ingest accepts from a provider after its snapshot was read.</summary>
internal sealed class AdmissionChangedException(string providerId)
    : Exception($"The registry entries of {providerId} changed while a batch was being committed.");

/// <summary>
/// What ingest accepts from one provider, as of one registry epoch: the intervals in which it
/// held an admitted service item, how each ended, and its suspensions. Immutable; checking a
/// record allocates nothing unless the record is refused.
/// </summary>
public sealed class AdmissionSnapshot
{
    /// <summary>One admission: [from, until), ended by expiry, withdrawal or revocation.</summary>
    internal readonly record struct Interval(long FromMs, long UntilMs, IngestRefusalReason EndReason, string Item, long ApplicationId);

    /// <summary>A suspension: [from, until); an open one runs to long.MaxValue.</summary>
    internal readonly record struct Suspension(long FromMs, long UntilMs, string Reason, long ApplicationId);

    private readonly Interval[] _intervals;
    private readonly Suspension[] _suspensions;

    internal AdmissionSnapshot(string providerId, bool registered, long epoch, Interval[] intervals, Suspension[] suspensions, FleetSnapshot? fleet = null, string? listedOn = null)
    {
        ProviderId = providerId;
        Registered = registered;
        ListedOn = listedOn;
        Epoch = epoch;
        _intervals = intervals;
        _suspensions = suspensions;
        Fleet = fleet ?? FleetSnapshot.Empty;
    }

    /// <summary>The provider's fleet per model, for ingest's plausibility check; read at the same epoch.</summary>
    public FleetSnapshot Fleet { get; }

    public string ProviderId { get; }

    /// <summary>Whether the registry holds the organisation at all (proof streams need only this).</summary>
    public bool Registered { get; }

    /// <summary>The integrity list the organisation was on when read, or null: a listed organisation may not write proofs.</summary>
    public string? ListedOn { get; }

    /// <summary>Whether the provider holds or held any admission; one that never did has no record ingest would take.</summary>
    public bool EverAdmitted => _intervals.Length > 0;

    /// <summary>The organisation's admission epoch when read; -1 when it is not registered.</summary>
    public long Epoch { get; }

    /// <summary>
    /// Whether a record of [startMs, endMs) falls inside the provider's admissions, with no
    /// suspension over any part of it. A renewal admitted in time starts exactly where the
    /// admission it renews ends, so a record running across that instant is taken as one
    /// continuous admission; a gap between two admissions is not covered. The refusal names the
    /// most specific reason at the first instant not covered: a suspension, then how the
    /// admission the record was in ended, then no admission at all.
    /// </summary>
    public Refusal Check(ulong sequence, long startMs, long endMs)
    {
        bool suspended = false;
        foreach (Interval interval in _intervals)
        {
            if (interval.FromMs < interval.UntilMs && interval.FromMs <= startMs && endMs <= interval.UntilMs)
            {
                if (!OverlapsSuspension(interval.ApplicationId, startMs, endMs))
                {
                    return default;
                }

                suspended = true;
            }
        }

        if (suspended || startMs >= endMs)
        {
            // The refusals are built apart, so that a lambda capturing the parameters cannot make
            // the compiler allocate a closure on every call, refused or not.
            return suspended ? Suspended(sequence, startMs, endMs) : Outside(sequence, startMs, endMs);
        }

        // Not inside one admission: walk forward through admissions that touch or overlap,
        // taking from each the part before its next suspension. At most one step per interval.
        long reached = startMs;
        while (reached < endMs)
        {
            long next = reached;
            bool suspendedHere = false;
            foreach (Interval interval in _intervals)
            {
                if (interval.FromMs <= reached && reached < interval.UntilMs)
                {
                    long free = UnsuspendedUntil(interval.ApplicationId, reached, Math.Min(interval.UntilMs, endMs));
                    suspendedHere |= free == reached;
                    next = Math.Max(next, free);
                }
            }

            if (next == reached)
            {
                return suspendedHere ? Suspended(sequence, reached, endMs) : Outside(sequence, reached, endMs);
            }

            reached = next;
        }

        return default;
    }

    /// <summary>How far from <paramref name="fromMs"/> towards <paramref name="untilMs"/> the application runs before a suspension of it begins.</summary>
    private long UnsuspendedUntil(long applicationId, long fromMs, long untilMs)
    {
        long free = untilMs;
        foreach (Suspension suspension in _suspensions)
        {
            if (suspension.ApplicationId == applicationId && suspension.FromMs < untilMs && fromMs < suspension.UntilMs)
            {
                free = Math.Min(free, Math.Max(suspension.FromMs, fromMs));
            }
        }

        return free;
    }

    private Refusal Suspended(ulong sequence, long startMs, long endMs)
    {
        Suspension s = _suspensions.First(s => s.FromMs < endMs && startMs < s.UntilMs);
        return new Refusal(IngestRefusalReason.ProviderSuspended,
            $"record {sequence}: {ProviderId} was suspended from {Time(s.FromMs)}{(s.UntilMs == long.MaxValue ? "" : $" to {Time(s.UntilMs)}")}, during the record ({s.Reason})");
    }

    private Refusal Outside(ulong sequence, long startMs, long endMs)
    {
        // The latest admission the record starts in or after, and how it ended.
        Interval? ended = null;
        foreach (Interval interval in _intervals)
        {
            if (interval.FromMs <= startMs && (ended is null || interval.FromMs > ended.Value.FromMs))
            {
                ended = interval;
            }
        }

        if (ended is { } e && endMs > e.UntilMs)
        {
            string how = e.EndReason switch
            {
                IngestRefusalReason.AdmissionWithdrawn => "withdrew from the programme",
                IngestRefusalReason.AdmissionRevoked => "had its admission revoked",
                _ => "reached the end of its admission validity",
            };
            return new Refusal(e.EndReason, $"record {sequence}: it ends at {Time(endMs)}, but {ProviderId} {how} at {Time(e.UntilMs)} (service item '{e.Item}')");
        }

        return new Refusal(IngestRefusalReason.ProviderNotAdmitted,
            _intervals.Length == 0
                ? $"record {sequence}: {ProviderId} holds no admitted service item; usage is taken only from admitted providers"
                : $"record {sequence}: it starts at {Time(startMs)}, before {ProviderId} was admitted ({string.Join(", ", _intervals.Select(i => $"'{i.Item}' from {Time(i.FromMs)}"))})");
    }

    private bool OverlapsSuspension(long applicationId, long startMs, long endMs)
    {
        foreach (Suspension suspension in _suspensions)
        {
            if (suspension.ApplicationId == applicationId && suspension.FromMs < endMs && startMs < suspension.UntilMs)
            {
                return true;
            }
        }

        return false;
    }

    private static string Time(long unixMs) =>
        DateTimeOffset.FromUnixTimeMilliseconds(unixMs).ToOffset(ShanghaiTime.Offset).ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture) + " Asia/Shanghai";
}

/// <summary>
/// Reads admission snapshots for ingest, and fences a commit against registry changes: the commit
/// reads the organisation's epoch FOR SHARE in its own transaction, and every registry change
/// that affects admission bumps the epoch under a row lock. So a commit either finishes before a
/// change takes effect or sees the new epoch and re-checks its records.
/// </summary>
public sealed class AdmissionGate(NpgsqlDataSource dataSource)
{
    public async Task<AdmissionSnapshot> LoadAsync(string providerId, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(System.Data.IsolationLevel.RepeatableRead, cancellationToken);
        long? epoch = await connection.ExecuteScalarAsync<long?>("SELECT admission_epoch FROM organisations WHERE provider_id = @providerId", new { providerId }, transaction);
        if (epoch is null)
        {
            return new AdmissionSnapshot(providerId, registered: false, -1, [], []);
        }

        var items = await connection.QueryAsync<(string Item, long ApplicationId, long FromMs, long EndsMs, long? EndedMs, string? EndKind)>("""
            SELECT service_item, application_id, floor(extract(epoch FROM valid_from) * 1000)::bigint, floor(extract(epoch FROM validity_ends_at) * 1000)::bigint,
                   floor(extract(epoch FROM ended_at) * 1000)::bigint, end_kind
            FROM service_items WHERE provider_id = @providerId
            """, new { providerId }, transaction);
        var suspensions = await connection.QueryAsync<(long ApplicationId, long FromMs, long? UntilMs, string Reason)>("""
            SELECT application_id, floor(extract(epoch FROM suspended_at) * 1000)::bigint, floor(extract(epoch FROM reinstated_at) * 1000)::bigint, reason
            FROM service_item_suspensions WHERE provider_id = @providerId
            """, new { providerId }, transaction);
        string? listedOn = await connection.ExecuteScalarAsync<string?>("""
            SELECT list_name FROM integrity_listings
            WHERE provider_id = @providerId AND listed_from <= (now() AT TIME ZONE 'Asia/Shanghai')::date
              AND (listed_until IS NULL OR listed_until >= (now() AT TIME ZONE 'Asia/Shanghai')::date)
            LIMIT 1
            """, new { providerId }, transaction);
        FleetSnapshot fleet = await FleetSnapshot.LoadAsync(connection, transaction, providerId);
        await transaction.CommitAsync(cancellationToken);

        AdmissionSnapshot.Interval[] intervals = items.Select(i =>
        {
            bool exited = i.EndedMs is { } ended && ended < i.EndsMs;
            IngestRefusalReason reason = !exited ? IngestRefusalReason.AdmissionExpired
                : i.EndKind == "withdrawn" ? IngestRefusalReason.AdmissionWithdrawn : IngestRefusalReason.AdmissionRevoked;
            return new AdmissionSnapshot.Interval(i.FromMs, exited ? i.EndedMs!.Value : i.EndsMs, reason, i.Item, i.ApplicationId);
        }).ToArray();
        // A suspension belongs to one admitted item: usage that another, unsuspended item covers
        // is still taken.
        AdmissionSnapshot.Suspension[] paused = suspensions.Select(s => new AdmissionSnapshot.Suspension(s.FromMs, s.UntilMs ?? long.MaxValue, s.Reason, s.ApplicationId)).ToArray();
        return new AdmissionSnapshot(providerId, registered: true, epoch.Value, intervals, paused, fleet, listedOn);
    }

    /// <summary>
    /// The statement that reads the epoch inside a commit's transaction and holds it until the
    /// commit ends, sent in the round trip that locks the stream heads (no row: not registered).
    /// </summary>
    public static NpgsqlBatchCommand EpochForShare(string providerId) =>
        new("SELECT admission_epoch FROM organisations WHERE provider_id = $1 FOR SHARE") { Parameters = { new() { Value = providerId } } };
}
