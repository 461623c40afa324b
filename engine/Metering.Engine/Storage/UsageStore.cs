using Dapper;
using Npgsql;

namespace Metering.Engine.Storage;

/// <summary>Where a stream stands in the database.</summary>
public readonly record struct StreamHead(ulong CommittedSequence, byte[] ChainHash);

/// <summary>
/// One row of <c>usage_records</c> as a writer hands it to the store: a record that has been
/// validated, normalised and chained elsewhere. A struct, so that handing a batch over allocates
/// nothing per row.
/// </summary>
public readonly record struct UsageRow(
    ulong Sequence,
    string JobId,
    string HolderCode,
    string DeviceModel,
    uint DeviceCount,
    uint ShareNumerator,
    uint ShareDenominator,
    long StartUnixMs,
    long EndUnixMs,
    string Site,
    IReadOnlyList<string> DeviceUuids,
    ulong? EnergyMwh,
    string CatalogVersion,
    long UsageNanoPflopsHours,
    ReadOnlyMemory<byte> ChainHash,
    uint? SmActiveBp = null);

/// <summary>A batch of rows for one stream, in sequence order, that the store copies in one go.</summary>
public interface IUsageRows
{
    int Count { get; }

    UsageRow RowAt(int index);
}

/// <summary>
/// A check or a write that must commit with a batch's rows or not at all (the registry's epoch,
/// the fleet's concurrency, a raw-log upload's progress). Each step is a named type of the feature
/// that owns the rule; the store knows none of them. A commit runs in as few round trips as the
/// steps allow: a step may copy rows of its own right after the batch's rows (before any lock),
/// hand the store a read to send with the head lock and a write to send with the head update
/// (after every step has run), instead of statements of their own. A step that throws rolls
/// everything back.
/// </summary>
public interface ICommitStep
{
    /// <summary>
    /// Runs right after the batch's rows are copied, before any head is locked: a write of new
    /// keys only (a raw-log upload's jobs), which no commit ahead of this one waits for, so that it
    /// overlaps that commit as the rows' COPY does. Throws to roll the commit back.
    /// </summary>
    Task CopyAsync(NpgsqlConnection connection, CancellationToken cancellationToken) => Task.CompletedTask;

    /// <summary>
    /// A statement the store sends in the round trip that locks the stream heads, after the lock,
    /// or null for none; <see cref="CheckLockRead"/> then gets the first column of its first row.
    /// </summary>
    NpgsqlBatchCommand? ReadWithLock() => null;

    /// <summary>Checks what <see cref="ReadWithLock"/>'s statement returned (null for no row); throws to roll the commit back.</summary>
    void CheckLockRead(object? value)
    {
    }

    /// <summary>
    /// Runs after the rows are copied, steps in order, while every stream head is locked and before
    /// any head moves. Returns a write for the store to send in one round trip with the head
    /// update, or null.
    /// </summary>
    Task<NpgsqlBatchCommand?> RunAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, CancellationToken cancellationToken);
}

/// <summary>One stream's part of a group commit: its rows and the mark its writer believes the stream is at.</summary>
internal readonly record struct StreamBatch(string StreamId, ulong ExpectedSequence, IUsageRows Rows);

/// <summary>The stream's committed mark moved under us: another writer committed to it.</summary>
internal sealed class StreamMovedException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// The ingest tables. Commits a batch with one binary COPY inside a transaction that then locks
/// the stream's head row and checks the expected high-water mark, so only one writer can extend a
/// stream, whatever the number of server processes.
/// </summary>
public sealed class UsageStore(NpgsqlDataSource dataSource)
{
    /// <summary>A chain hash is SHA-256: 32 bytes. The canonical encoding and the verifier size their hashes by it.</summary>
    public const int ChainHashBytes = 32;

    /// <summary>
    /// hash(0), the previous hash of a stream's first record: 32 zero bytes. One shared array for
    /// the store, the verifier and the claim checks, so it is never written to.
    /// </summary>
    internal static readonly byte[] GenesisHash = new byte[ChainHashBytes];

    private const string CopyCommand =
        "COPY usage_records (provider_id, stream_id, sequence, job_id, holder_code, device_model, device_count, "
        + "share_numerator, share_denominator, start_at, end_at, site, device_uuids, energy_mwh, catalog_version, usage_npfh, chain_hash, sm_active_bp) "
        + "FROM STDIN (FORMAT BINARY)";

    private const short CopyColumnCount = 18;

    public NpgsqlDataSource DataSource => dataSource;

    /// <summary>Creates the stream if it is new and returns its committed mark and chain head.</summary>
    public async Task<StreamHead> OpenStreamAsync(string providerId, string streamId, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        // Two statements, not one: a statement's snapshot would not see a row that a concurrent
        // opener inserted first, while the next statement does.
        await connection.ExecuteAsync(new CommandDefinition("""
            INSERT INTO ingest_streams (provider_id, stream_id, chain_head) VALUES (@providerId, @streamId, @genesis)
            ON CONFLICT (provider_id, stream_id) DO NOTHING
            """, new { providerId, streamId, genesis = GenesisHash }, cancellationToken: cancellationToken));
        return await ReadHeadAsync(connection, providerId, streamId, cancellationToken)
            ?? throw new InvalidOperationException($"Stream {providerId}/{streamId} vanished right after it was opened.");
    }

    /// <summary>Where a stream stands, without creating it: sequence 0 and the genesis hash for a stream not yet opened.</summary>
    public async Task<StreamHead> ReadStreamHeadAsync(string providerId, string streamId, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await ReadHeadAsync(connection, providerId, streamId, cancellationToken) ?? new StreamHead(0, GenesisHash);
    }

    private static async Task<StreamHead?> ReadHeadAsync(NpgsqlConnection connection, string providerId, string streamId, CancellationToken cancellationToken)
    {
        var rows = (await connection.QueryAsync<(long Sequence, byte[] Head)>(new CommandDefinition(
            "SELECT committed_sequence, chain_head FROM ingest_streams WHERE provider_id = @providerId AND stream_id = @streamId",
            new { providerId, streamId }, cancellationToken: cancellationToken))).AsList();
        return rows.Count == 0 ? null : new StreamHead((ulong)rows[0].Sequence, rows[0].Head);
    }

    /// <summary>Committed chain hashes for sequences first..last (inclusive); sequence 0 is the genesis hash.</summary>
    public async Task<byte[][]> ReadChainHashesAsync(string providerId, string streamId, ulong first, ulong last, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var rows = (await connection.QueryAsync<(long Sequence, byte[] Hash)>(new CommandDefinition("""
            SELECT sequence, chain_hash FROM usage_records
            WHERE provider_id = @providerId AND stream_id = @streamId AND sequence BETWEEN @first AND @last
            ORDER BY sequence
            """, new { providerId, streamId, first = (long)Math.Max(first, 1), last = (long)last }, cancellationToken: cancellationToken))).ToList();
        var hashes = new byte[last - first + 1][];
        foreach (var (sequence, hash) in rows)
        {
            hashes[(ulong)sequence - first] = hash;
        }

        if (first == 0)
        {
            hashes[0] = GenesisHash;
        }

        for (int i = 0; i < hashes.Length; i++)
        {
            if (hashes[i] is null)
            {
                throw new InvalidOperationException($"Stream {providerId}/{streamId} has no committed record {first + (ulong)i} below its high-water mark.");
            }
        }

        return hashes;
    }

    /// <summary>
    /// The stored chain hashes at each of the given sequences of one stream, keyed by sequence; a
    /// sequence the stream holds no record at is absent, and one it holds twice (a broken chain)
    /// has two. For checking saved receipts.
    /// </summary>
    public async Task<Dictionary<ulong, List<byte[]>>> ReadChainHashesAtAsync(string providerId, string streamId, IReadOnlyCollection<ulong> sequences, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var rows = await connection.QueryAsync<(long Sequence, byte[] Hash)>(new CommandDefinition("""
            SELECT sequence, chain_hash FROM usage_records
            WHERE provider_id = @providerId AND stream_id = @streamId AND sequence = ANY(@sequences)
            """, new { providerId, streamId, sequences = sequences.Select(s => (long)Math.Min(s, long.MaxValue)).ToArray() }, cancellationToken: cancellationToken));
        var hashes = new Dictionary<ulong, List<byte[]>>();
        foreach (var (sequence, hash) in rows)
        {
            if (!hashes.TryGetValue((ulong)sequence, out List<byte[]>? stored))
            {
                hashes[(ulong)sequence] = stored = [];
            }

            stored.Add(hash);
        }

        return hashes;
    }

    /// <summary>
    /// Appends the prepared records after <paramref name="expectedSequence"/> and moves the head,
    /// all in one transaction. Throws <see cref="StreamMovedException"/> when the head is no longer
    /// where this writer believes it is.
    /// </summary>
    /// <param name="steps">The checks and writes that commit with the rows (<see cref="ICommitStep"/>).</param>
    public Task CommitAsync(string providerId, string streamId, ulong expectedSequence, IUsageRows batch, IReadOnlyList<ICommitStep> steps, CancellationToken cancellationToken) =>
        CommitGroupAsync(providerId, [new StreamBatch(streamId, expectedSequence, batch)], steps, cancellationToken);

    /// <summary>
    /// Commits the batches of one or more streams of one provider in one transaction (a group
    /// commit): copies all rows in one COPY, locks every stream's head row in stream order and
    /// checks each mark, runs the steps once for the group, moves every head in one statement and
    /// commits once. All or nothing: any stream's failure rolls back every stream's rows, and the
    /// caller decides what each stream is told. Throws <see cref="StreamMovedException"/> when a
    /// head is not where its writer believes it is.
    /// </summary>
    internal async Task CommitGroupAsync(string providerId, IReadOnlyList<StreamBatch> batches, IReadOnlyList<ICommitStep> steps, CancellationToken cancellationToken)
    {
        await using OpenGroupCommit open = await BeginGroupAsync(providerId, batches, steps, cancellationToken);
        await open.FinishAsync(cancellationToken);
    }

    /// <summary>
    /// The first half of <see cref="CommitGroupAsync"/>: opens a transaction and copies the rows,
    /// then each step's own rows (<see cref="ICommitStep.CopyAsync"/>), taking no lock that another
    /// commit of the provider waits for (the rows are new keys, and nothing references a stream's
    /// head row), so that a provider's next commit can copy its rows while the one ahead of it
    /// holds the heads. <see cref="OpenGroupCommit.FinishAsync"/> does the rest with the same
    /// steps; disposing the returned commit without finishing it rolls the rows back.
    /// </summary>
    /// <remarks>
    /// With the rows copied before the heads are locked, a second writer of the same stream (another
    /// server process after a takeover) meets this one at the unique index instead of at the head
    /// row: its COPY waits for this transaction and then fails with a unique violation, or the two
    /// COPYs deadlock. Either means another writer is extending the stream, and is reported as the
    /// head check would report it, with <see cref="StreamMovedException"/>.
    /// </remarks>
    internal async Task<OpenGroupCommit> BeginGroupAsync(string providerId, IReadOnlyList<StreamBatch> batches, IReadOnlyList<ICommitStep> steps, CancellationToken cancellationToken)
    {
        NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        NpgsqlTransaction? transaction = null;
        try
        {
            // Read committed, named rather than left to the server's default: the fleet check reads
            // the concurrency sums after taking its locks and must see every commit that held them.
            transaction = await connection.BeginTransactionAsync(System.Data.IsolationLevel.ReadCommitted, cancellationToken);
            try
            {
                await CopyRowsAsync(connection, providerId, batches, cancellationToken);
            }
            catch (PostgresException e) when (e.SqlState is PostgresErrorCodes.UniqueViolation or PostgresErrorCodes.DeadlockDetected)
            {
                throw new StreamMovedException(
                    $"Provider {providerId}: another writer is writing the same records of stream {string.Join(", ", batches.Select(b => b.StreamId))} ({e.SqlState}).", e);
            }

            for (int i = 0; i < steps.Count; i++)
            {
                await steps[i].CopyAsync(connection, cancellationToken);
            }

            var open = new OpenGroupCommit(connection, transaction, providerId, batches, steps);
            transaction = null;
            return open;
        }
        catch
        {
            if (transaction is not null)
            {
                await transaction.DisposeAsync();
            }

            await connection.DisposeAsync();
            throw;
        }
    }

    /// <summary>
    /// A group commit whose rows are copied and whose transaction is open: the heads are not locked
    /// yet. <see cref="FinishAsync"/> locks, checks, runs the steps, moves the heads and commits;
    /// disposing it without that rolls everything back and returns the connection.
    /// </summary>
    internal sealed class OpenGroupCommit : IAsyncDisposable
    {
        private readonly NpgsqlConnection _connection;
        private readonly NpgsqlTransaction _transaction;
        private readonly string _providerId;
        private readonly IReadOnlyList<StreamBatch> _batches;
        private readonly IReadOnlyList<ICommitStep> _steps;
        private readonly string[] _streamIds;
        private readonly long[] _lasts;
        private readonly byte[][] _heads;
        private readonly DateTime[] _headStarts;

        internal OpenGroupCommit(NpgsqlConnection connection, NpgsqlTransaction transaction, string providerId, IReadOnlyList<StreamBatch> batches, IReadOnlyList<ICommitStep> steps)
        {
            _connection = connection;
            _transaction = transaction;
            _providerId = providerId;
            _batches = batches;
            _steps = steps;
            _streamIds = new string[batches.Count];
            _lasts = new long[batches.Count];
            _heads = new byte[batches.Count][];
            _headStarts = new DateTime[batches.Count];
            for (int i = 0; i < batches.Count; i++)
            {
                UsageRow newest = batches[i].Rows.RowAt(batches[i].Rows.Count - 1);
                _streamIds[i] = batches[i].StreamId;
                _lasts[i] = (long)newest.Sequence;
                _heads[i] = newest.ChainHash.ToArray();
                _headStarts[i] = UnixMs.ToDateTime(newest.StartUnixMs);
            }
        }

        /// <summary>
        /// Locks the heads with the steps' reads, runs the steps, moves every head with the steps'
        /// writes and commits. Throws <see cref="StreamMovedException"/> when a head is not where
        /// its writer believes it is; the commit then stays open until disposed, uncommitted.
        /// </summary>
        /// <remarks>
        /// With <see cref="BeginGroupAsync"/>, six round trips: the start of the COPY, its rows and
        /// end, the head locks with the steps' reads, each step's own statements (the fleet check's
        /// locks and sums), the head update with the steps' writes, and the COMMIT; the last four
        /// are the ones a provider's commits take one after another. A stream's newest record's
        /// start time goes with its head, as it names the partition where the head trigger finds
        /// that record.
        /// </remarks>
        public async Task FinishAsync(CancellationToken cancellationToken)
        {
            IReadOnlyList<ICommitStep> steps = _steps;
            await LockHeadsAsync(_connection, _transaction, _providerId, _batches, _streamIds, steps, cancellationToken);
            var writes = new List<NpgsqlBatchCommand>();
            for (int i = 0; i < steps.Count; i++)
            {
                if (await steps[i].RunAsync(_connection, _transaction, cancellationToken) is { } write)
                {
                    writes.Add(write);
                }
            }

            await using (var moveHeads = new NpgsqlBatch(_connection, _transaction))
            {
                moveHeads.BatchCommands.Add(new NpgsqlBatchCommand("""
                    UPDATE ingest_streams s SET committed_sequence = u.last, chain_head = u.head, head_start_at = u.start_at, updated_at = now()
                    FROM unnest($2::text[], $3::bigint[], $4::bytea[], $5::timestamptz[]) AS u(stream_id, last, head, start_at)
                    WHERE s.provider_id = $1 AND s.stream_id = u.stream_id
                    """)
                {
                    Parameters = { new() { Value = _providerId }, new() { Value = _streamIds }, new() { Value = _lasts }, new() { Value = _heads }, new() { Value = _headStarts } },
                });
                foreach (NpgsqlBatchCommand write in writes)
                {
                    moveHeads.BatchCommands.Add(write);
                }

                await moveHeads.ExecuteNonQueryAsync(cancellationToken);
                int moved = moveHeads.BatchCommands[0].RecordsAffected;
                if (moved != _batches.Count)
                {
                    throw new InvalidOperationException($"Provider {_providerId}: the head update touched {moved} rows for {_batches.Count} streams; the commit is rolled back.");
                }
            }

            await _transaction.CommitAsync(cancellationToken);
        }

        public async ValueTask DisposeAsync()
        {
            await _transaction.DisposeAsync();
            await _connection.DisposeAsync();
        }
    }

    /// <summary>
    /// Locks the head rows of the batches' streams and checks each mark, with the steps' reads in
    /// the same round trip, then lets each step check what it read. The rows are locked in stream
    /// order, so two group commits of overlapping streams (from two server processes) take them in
    /// the same order and cannot deadlock; the steps' reads run after the locks, as statements of
    /// their own.
    /// </summary>
    private static async Task LockHeadsAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string providerId, IReadOnlyList<StreamBatch> batches, string[] streamIds,
        IReadOnlyList<ICommitStep> steps, CancellationToken cancellationToken)
    {
        await using var batch = new NpgsqlBatch(connection, transaction);
        batch.BatchCommands.Add(new NpgsqlBatchCommand(
            "SELECT stream_id, committed_sequence FROM ingest_streams WHERE provider_id = $1 AND stream_id = ANY($2) ORDER BY stream_id FOR UPDATE")
        {
            Parameters = { new() { Value = providerId }, new() { Value = streamIds } },
        });
        var readers = new List<ICommitStep>();
        foreach (ICommitStep step in steps)
        {
            if (step.ReadWithLock() is { } read)
            {
                batch.BatchCommands.Add(read);
                readers.Add(step);
            }
        }

        var committed = new Dictionary<string, long>(StringComparer.Ordinal);
        var values = new object?[readers.Count];
        await using (NpgsqlDataReader reader = await batch.ExecuteReaderAsync(cancellationToken))
        {
            while (await reader.ReadAsync(cancellationToken))
            {
                committed[reader.GetString(0)] = reader.GetInt64(1);
            }

            for (int i = 0; i < readers.Count; i++)
            {
                await reader.NextResultAsync(cancellationToken);
                values[i] = await reader.ReadAsync(cancellationToken) && !await reader.IsDBNullAsync(0, cancellationToken) ? reader.GetValue(0) : null;
            }
        }

        foreach (StreamBatch stream in batches)
        {
            if (!committed.TryGetValue(stream.StreamId, out long at) || (ulong)at != stream.ExpectedSequence)
            {
                throw new StreamMovedException(committed.ContainsKey(stream.StreamId)
                    ? $"Stream {providerId}/{stream.StreamId} is at {at}, not {stream.ExpectedSequence}: another writer extended it."
                    : $"Stream {providerId}/{stream.StreamId} is not open.");
            }
        }

        for (int i = 0; i < readers.Count; i++)
        {
            readers[i].CheckLockRead(values[i]);
        }
    }

    /// <summary>
    /// Copies the rows of one or more streams in one binary COPY. Rows are encoded synchronously
    /// into one pooled buffer and sent in chunks of about 64 KiB, so the loop costs a few bytes
    /// per field and a socket write per chunk.
    /// </summary>
    private static async Task CopyRowsAsync(NpgsqlConnection connection, string providerId, IReadOnlyList<StreamBatch> batches, CancellationToken cancellationToken)
    {
        await using NpgsqlRawCopyStream copy = await connection.BeginRawBinaryCopyAsync(CopyCommand, cancellationToken);
        try
        {
            using var rows = new BinaryCopyWriter();
            rows.WriteHeader();
            for (int b = 0; b < batches.Count; b++)
            {
                IUsageRows batch = batches[b].Rows;
                for (int i = 0; i < batch.Count; i++)
                {
                    WriteRow(rows, providerId, batches[b].StreamId, batch.RowAt(i));
                    if (rows.Length >= BinaryCopyWriter.ChunkBytes)
                    {
                        await copy.WriteAsync(rows.Written, cancellationToken);
                        rows.Clear();
                    }
                }
            }

            rows.WriteTrailer();
            await copy.WriteAsync(rows.Written, cancellationToken);
        }
        catch
        {
            // Disposal would end the COPY normally and submit the rows sent so far; cancel it
            // instead. The transaction is rolled back either way.
            await copy.CancelAsync();
            throw;
        }
    }

    /// <summary>One row of <see cref="CopyCommand"/>, in its column order: the one place that order is written for writing.</summary>
    private static void WriteRow(BinaryCopyWriter rows, string providerId, string streamId, in UsageRow row)
    {
        rows.StartRow(CopyColumnCount);
        rows.WriteTextField(providerId);
        rows.WriteTextField(streamId);
        rows.WriteInt64Field((long)row.Sequence);
        rows.WriteTextField(row.JobId);
        rows.WriteTextField(row.HolderCode);
        rows.WriteTextField(row.DeviceModel);
        rows.WriteInt32Field((int)row.DeviceCount);
        rows.WriteInt32Field((int)row.ShareNumerator);
        rows.WriteInt32Field((int)row.ShareDenominator);
        rows.WriteTimestampField(row.StartUnixMs);
        rows.WriteTimestampField(row.EndUnixMs);
        rows.WriteTextField(row.Site);
        if (row.DeviceUuids.Count == 0)
        {
            rows.WriteNull();
        }
        else
        {
            rows.WriteTextArrayField(row.DeviceUuids);
        }

        if (row.EnergyMwh is ulong energy)
        {
            rows.WriteInt64Field((long)energy);
        }
        else
        {
            rows.WriteNull();
        }

        rows.WriteTextField(row.CatalogVersion);
        rows.WriteInt64Field(row.UsageNanoPflopsHours);
        rows.WriteByteaField(row.ChainHash.Span);
        if (row.SmActiveBp is uint smActiveBp)
        {
            rows.WriteInt32Field((int)smActiveBp);
        }
        else
        {
            rows.WriteNull();
        }
    }

    /// <summary>
    /// Records that the stream sent a heartbeat in the minute starting at <paramref name="minuteMs"/>
    /// (server time), with the exact server and client times of the first heartbeat of the minute.
    /// One autocommitted statement; returns false, having written nothing, when the minute is on
    /// record already (a reconnect within the minute).
    /// </summary>
    public async Task<bool> RecordHeartbeatAsync(string providerId, string streamId, long minuteMs, long receivedMs, long? clientMs, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        int inserted = await connection.ExecuteAsync(new CommandDefinition("""
            INSERT INTO stream_heartbeats (provider_id, stream_id, minute_at, received_at, client_at)
            VALUES (@providerId, @streamId, @minute, @received, @client)
            ON CONFLICT (provider_id, stream_id, minute_at) DO NOTHING
            """, new
        {
            providerId,
            streamId,
            minute = UnixMs.ToDateTime(minuteMs),
            received = UnixMs.ToDateTime(receivedMs),
            client = clientMs is long ms ? UnixMs.ToDateTime(ms) : (DateTime?)null,
        }, cancellationToken: cancellationToken));
        return inserted == 1;
    }

    /// <summary>
    /// Most bytes of an offered record's canonical encoding a tamper conflict keeps. The offered
    /// chain hash commits to the whole record; the first bytes show what it was (provider,
    /// stream, sequence, job) without letting each replay store a record's full size.
    /// </summary>
    public const int TamperCanonicalBytesMax = 1024;

    /// <summary>Most characters of the peer a tamper conflict keeps.</summary>
    public const int TamperPeerCharsMax = 256;

    /// <summary>
    /// Records a replay whose content differs from what is committed: the offered record's hash,
    /// its first <see cref="TamperCanonicalBytesMax"/> canonical bytes and its full length. Runs
    /// in its own transaction.
    /// </summary>
    public async Task RecordTamperConflictAsync(string providerId, string streamId, ulong sequence, byte[] committedHash, byte[] offeredHash, ReadOnlyMemory<byte> offeredCanonical, string? peer, CancellationToken cancellationToken)
    {
        byte[] kept = offeredCanonical[..Math.Min(offeredCanonical.Length, TamperCanonicalBytesMax)].ToArray();
        peer = peer is { Length: > TamperPeerCharsMax } ? peer[..TamperPeerCharsMax] : peer;
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await connection.ExecuteAsync(new CommandDefinition("""
            INSERT INTO tamper_conflicts (provider_id, stream_id, sequence, committed_hash, offered_hash, offered_canonical, offered_canonical_bytes, peer)
            VALUES (@providerId, @streamId, @sequence, @committedHash, @offeredHash, @kept, @length, @peer)
            """, new { providerId, streamId, sequence = (long)sequence, committedHash, offeredHash, kept, length = offeredCanonical.Length, peer }, cancellationToken: cancellationToken));
    }
}

/// <summary>Conversions between Unix milliseconds and UTC DateTime.</summary>
internal static class UnixMs
{
    public static DateTime ToDateTime(long unixMs) => new(DateTime.UnixEpoch.Ticks + unixMs * TimeSpan.TicksPerMillisecond, DateTimeKind.Utc);

    public static long FromDateTime(DateTime value) => (value.ToUniversalTime().Ticks - DateTime.UnixEpoch.Ticks) / TimeSpan.TicksPerMillisecond;
}
