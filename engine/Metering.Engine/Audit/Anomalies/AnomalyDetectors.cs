using System.Globalization;
using Dapper;
using Metering.Engine.Capacity;
using Metering.Engine.Ingest;
using Metering.Engine.Registry;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Audit;

/// <summary>
/// Runs every detector over one provider and period [from, until) and returns the anomalies,
/// each with its evidence. Proof streams are left out of every detector but the chain check:
/// they are demonstrations, not usage. Records are loaded once, with a look-back of the longest
/// record (24 h) so that overlaps with records that started before the period are seen.
/// All arithmetic is integer; the rules are documented on each detector.
/// </summary>
public sealed partial class AnomalyDetectors(NpgsqlDataSource dataSource, TimeProvider time, DetectorSettings? settings = null)
{
    /// <summary>Records that started this long before the period can still overlap it.</summary>
    public static readonly TimeSpan LookBack = TimeSpan.FromHours(24);

    private readonly DetectorSettings _settings = Validated(settings ?? new DetectorSettings());

    private static DetectorSettings Validated(DetectorSettings settings)
    {
        settings.Validate();
        return settings;
    }

    /// <summary>One loaded record; strings are shared between records.</summary>
    private sealed record Usage(
        string StreamId, ulong Sequence, string JobId, string HolderCode, string DeviceModel, uint DeviceCount, uint ShareNumerator, uint ShareDenominator,
        long StartMs, long EndMs, string Site, string[] DeviceUuids, long UsageNpfh, uint? SmActiveBp)
    {
        public EvidenceRow Evidence() => new(StreamId, Sequence, JobId, HolderCode, DeviceModel, DeviceCount, ShareNumerator, ShareDenominator, StartMs, EndMs, Site, DeviceUuids, UsageNpfh, SmActiveBp);
    }

    /// <summary>The thresholds these detectors run with: the operator's, which a caller's own silence threshold overrides one run at a time.</summary>
    public DetectorSettings Settings => _settings;

    /// <summary>The same detectors over the same database and clock, with other thresholds (a caller's own silence threshold).</summary>
    public AnomalyDetectors With(DetectorSettings settings) => new(dataSource, time, settings);

    /// <summary>Every detector over the provider and period; the anomalies kept, without the counts.</summary>
    public async Task<IReadOnlyList<Anomaly>> DetectAsync(string providerId, DateTimeOffset from, DateTimeOffset until, CancellationToken cancellationToken) =>
        (await FindAsync(providerId, from, until, null, cancellationToken)).Anomalies;

    /// <summary>
    /// The detectors of <paramref name="kinds"/> (every kind when null or empty) over the provider
    /// and period, with how many anomalies each kind found in all. A detector whose kind was not
    /// asked for does not run, and the records and fleet are loaded only when one that reads them does.
    /// </summary>
    public async Task<AnomalyFindings> FindAsync(string providerId, DateTimeOffset from, DateTimeOffset until, IReadOnlySet<AnomalyKind>? kinds, CancellationToken cancellationToken)
    {
        if (until <= from || until - from > UsageFilter.PeriodMax)
        {
            throw new ArgumentException($"The period must end after it starts and span at most {UsageFilter.PeriodMax.TotalDays:0} days.");
        }

        bool Wants(AnomalyKind kind) => kinds is null || kinds.Count == 0 || kinds.Contains(kind);
        bool capacity = Wants(AnomalyKind.CapacityExceeded) || Wants(AnomalyKind.CapacityUnvalidated);
        long fromMs = from.ToUnixTimeMilliseconds();
        long untilMs = until.ToUnixTimeMilliseconds();
        long lookBackMs = (long)LookBack.TotalMilliseconds;
        List<Usage> records = capacity || Wants(AnomalyKind.DeviceDoubleBooked) || Wants(AnomalyKind.OutsideAdmission) || Wants(AnomalyKind.SilentStream) || Wants(AnomalyKind.AllocatedIdle)
            ? await LoadAsync(providerId, fromMs - lookBackMs, untilMs, cancellationToken)
            : [];
        Counted? exceeded = null, unvalidated = null;
        if (capacity)
        {
            // Records started at most a look-back before the period and last at most as long, so
            // every instant they cover lies in [from − look-back, until + look-back).
            FleetSnapshot fleet = await LoadFleetAsync(dataSource, providerId, fromMs - lookBackMs, untilMs + lookBackMs, cancellationToken);
            (exceeded, unvalidated) = Capacity(providerId, records, fromMs, untilMs, fleet);
        }

        var found = new Found(_settings.AnomaliesPerKindMax);
        found.Add(AnomalyKind.CapacityExceeded, Wants(AnomalyKind.CapacityExceeded) ? exceeded : null);
        found.Add(AnomalyKind.DeviceDoubleBooked, Wants(AnomalyKind.DeviceDoubleBooked) ? new Counted(DoubleBooked(providerId, records, fromMs, untilMs)) : null);
        found.Add(AnomalyKind.OutsideAdmission, Wants(AnomalyKind.OutsideAdmission)
            ? new Counted(OutsideAdmission(providerId, records, fromMs, await new AdmissionGate(dataSource).LoadAsync(providerId, cancellationToken)))
            : null);
        found.Add(AnomalyKind.TamperConflict, Wants(AnomalyKind.TamperConflict) ? await TamperConflictsAsync(providerId, fromMs, untilMs, cancellationToken) : null);
        found.Add(AnomalyKind.ChainBroken, Wants(AnomalyKind.ChainBroken) ? new Counted(await ChainBreaksAsync(providerId, cancellationToken)) : null);
        if (Wants(AnomalyKind.SilentStream))
        {
            long silenceUntilMs = Math.Min(untilMs, time.GetUtcNow().ToUnixTimeMilliseconds());
            List<HeartbeatRun> heartbeats = await HeartbeatRunsAsync(providerId, fromMs, silenceUntilMs, cancellationToken);
            found.Add(AnomalyKind.SilentStream,
                new Counted(Silences(providerId, records, heartbeats, fromMs, silenceUntilMs, await CoveredBeforeAsync(providerId, fromMs, cancellationToken))));
        }

        found.Add(AnomalyKind.UsageSpike, Wants(AnomalyKind.UsageSpike) ? new Counted(await SpikesAsync(providerId, from, until, cancellationToken)) : null);
        found.Add(AnomalyKind.CapacityUnvalidated, Wants(AnomalyKind.CapacityUnvalidated) ? unvalidated : null);
        found.Add(AnomalyKind.AllocatedIdle, Wants(AnomalyKind.AllocatedIdle) ? new Counted(AllocatedIdle(providerId, records, fromMs)) : null);
        return new AnomalyFindings(found.Kept, found.Kinds, _settings.AnomaliesPerKindMax);
    }

    /// <summary>
    /// A kind's anomalies as a detector hands them over: either every one, to be cut here, or a
    /// list the detector already cut to the cap with the number it found in all.
    /// </summary>
    private sealed record Counted(IEnumerable<Anomaly> Anomalies, long? FoundTotal = null);

    /// <summary>Collects the kinds in order, keeping at most the cap of each and counting them all.</summary>
    private sealed class Found(int perKindMax)
    {
        public List<Anomaly> Kept { get; } = [];

        public List<AnomalyKindCount> Kinds { get; } = [];

        /// <summary>Adds a kind's anomalies and its count; a null means the kind did not run, and it gets no count.</summary>
        public void Add(AnomalyKind kind, Counted? anomalies)
        {
            if (anomalies is null)
            {
                return;
            }

            long found = 0;
            int kept = 0;
            foreach (Anomaly anomaly in anomalies.Anomalies)
            {
                found++;
                if (kept < perKindMax)
                {
                    Kept.Add(anomaly);
                    kept++;
                }
            }

            Kinds.Add(new AnomalyKindCount(kind, Math.Max(found, anomalies.FoundTotal ?? 0), kept));
        }
    }

    /// <summary>
    /// The provider's fleet with every validation that can be in force at some instant of
    /// [from, until): the same reading ingest's plausibility check makes (<see cref="FleetSnapshot"/>),
    /// with the history the audit needs. Shared with the HTML report.
    /// </summary>
    internal static async Task<FleetSnapshot> LoadFleetAsync(NpgsqlDataSource dataSource, string providerId, long fromMs, long untilMs, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(System.Data.IsolationLevel.RepeatableRead, cancellationToken);
        try
        {
            return await FleetSnapshot.LoadAsync(connection, transaction, providerId, fromMs, untilMs, cancellationToken);
        }
        catch (FleetHistoryLimitExceededException e)
        {
            throw new AuditLimitExceededException(e.Message);
        }
    }

    private async Task<List<Usage>> LoadAsync(string providerId, long fromMs, long untilMs, CancellationToken cancellationToken)
    {
        var strings = new Dictionary<string, string>(StringComparer.Ordinal);
        string Shared(string value) => strings.TryGetValue(value, out string? shared) ? shared : strings[value] = value;
        var records = new List<Usage>();
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using var command = new NpgsqlCommand("""
            SELECT stream_id, sequence, job_id, holder_code, device_model, device_count, share_numerator, share_denominator,
                   start_at, end_at, site, device_uuids, usage_npfh, sm_active_bp
            FROM usage_records
            WHERE provider_id = $1 AND start_at >= $2 AND start_at < $3 AND stream_id NOT LIKE 'proof:%'
            ORDER BY stream_id COLLATE "C", sequence
            """, connection)
        {
            Parameters = { new() { Value = providerId }, new() { Value = UnixMs.ToDateTime(fromMs) }, new() { Value = UnixMs.ToDateTime(untilMs) } },
        };
        await using NpgsqlDataReader reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            if (records.Count == _settings.RecordsMax)
            {
                throw new AuditLimitExceededException($"{providerId} has more than {_settings.RecordsMax:N0} records in the period; detect over a shorter period.");
            }

            string[] uuids = reader.IsDBNull(11) ? [] : reader.GetFieldValue<string[]>(11);
            for (int i = 0; i < uuids.Length; i++)
            {
                uuids[i] = Shared(uuids[i]);
            }

            records.Add(new Usage(Shared(reader.GetString(0)), (ulong)reader.GetInt64(1), reader.GetString(2), Shared(reader.GetString(3)), Shared(reader.GetString(4)),
                (uint)reader.GetInt32(5), (uint)reader.GetInt32(6), (uint)reader.GetInt32(7), UnixMs.FromDateTime(reader.GetDateTime(8)),
                UnixMs.FromDateTime(reader.GetDateTime(9)), Shared(reader.GetString(10)), uuids, reader.GetInt64(12),
                reader.IsDBNull(13) ? null : (uint)reader.GetInt32(13)));
        }

        return records;
    }
}
