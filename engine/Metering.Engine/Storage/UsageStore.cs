using Dapper;
using Metering.Engine.Catalog;
using Metering.Engine.Ingest;
using Metering.Protocol.V1;
using Npgsql;
using NpgsqlTypes;

namespace Metering.Engine.Storage;

/// <summary>Where a stream stands in the database.</summary>
public readonly record struct StreamHead(ulong CommittedSequence, byte[] ChainHash);

/// <summary>A batch's new records, ready to commit: each with its usage, catalog entry and chain hash.</summary>
public sealed class PreparedRecords
{
    public PreparedRecords(int capacity)
    {
        Records = new UsageRecord[capacity];
        UsageNanoPflopsHours = new long[capacity];
        Models = new DeviceModel[capacity];
        Hashes = new byte[capacity * CanonicalEncoding.HashBytes];
    }

    public UsageRecord[] Records { get; }
    public long[] UsageNanoPflopsHours { get; }
    public DeviceModel[] Models { get; }

    /// <summary>The chain hashes, 32 bytes each, back to back.</summary>
    public byte[] Hashes { get; }

    public int Count { get; set; }

    public ReadOnlyMemory<byte> HashAt(int index) => Hashes.AsMemory(index * CanonicalEncoding.HashBytes, CanonicalEncoding.HashBytes);

    public void Clear()
    {
        Array.Clear(Records, 0, Count);
        Array.Clear(Models, 0, Count);
        Count = 0;
    }
}

/// <summary>The stream's committed mark moved under us: another writer committed to it.</summary>
public sealed class StreamMovedException(string message) : Exception(message);

/// <summary>
/// The ingest tables. Commits a batch with one binary COPY inside a transaction that first locks
/// the stream's head row and checks the expected high-water mark, so only one writer can extend a
/// stream, whatever the number of server processes.
/// </summary>
public sealed class UsageStore(NpgsqlDataSource dataSource)
{
    private static readonly byte[] GenesisHash = new byte[CanonicalEncoding.HashBytes];

    private const string CopyCommand =
        "COPY usage_records (provider_id, stream_id, sequence, job_id, holder_code, device_model, device_count, "
        + "share_numerator, share_denominator, start_at, end_at, site, device_uuids, energy_mwh, catalog_version, usage_npfh, chain_hash) "
        + "FROM STDIN (FORMAT BINARY)";

    public NpgsqlDataSource DataSource => dataSource;

    /// <summary>Creates the stream if it is new and returns its committed mark and chain head.</summary>
    public async Task<StreamHead> OpenStreamAsync(string providerId, string streamId, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var row = await connection.QuerySingleAsync<(long Sequence, byte[] Head)>(new CommandDefinition("""
            WITH created AS (
                INSERT INTO ingest_streams (provider_id, stream_id, chain_head) VALUES (@providerId, @streamId, @genesis)
                ON CONFLICT (provider_id, stream_id) DO NOTHING
                RETURNING committed_sequence, chain_head)
            SELECT committed_sequence, chain_head FROM created
            UNION ALL
            SELECT committed_sequence, chain_head FROM ingest_streams WHERE provider_id = @providerId AND stream_id = @streamId
            LIMIT 1
            """, new { providerId, streamId, genesis = GenesisHash }, cancellationToken: cancellationToken));
        return new StreamHead((ulong)row.Sequence, row.Head);
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
    /// Appends the prepared records after <paramref name="expectedSequence"/> and moves the head,
    /// all in one transaction. Throws <see cref="StreamMovedException"/> when the head is no longer
    /// where this writer believes it is.
    /// </summary>
    /// <param name="alongside">More work for the same transaction (a raw-log upload's progress), or null.</param>
    public async Task CommitAsync(string providerId, string streamId, ulong expectedSequence, PreparedRecords batch, CancellationToken cancellationToken, Func<NpgsqlConnection, NpgsqlTransaction, Task>? alongside = null)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(cancellationToken);
        long committed = await connection.ExecuteScalarAsync<long>(new CommandDefinition(
            "SELECT committed_sequence FROM ingest_streams WHERE provider_id = @providerId AND stream_id = @streamId FOR UPDATE",
            new { providerId, streamId }, transaction, cancellationToken: cancellationToken));
        if ((ulong)committed != expectedSequence)
        {
            throw new StreamMovedException($"Stream {providerId}/{streamId} is at {committed}, not {expectedSequence}: another writer extended it.");
        }

        // The row loop writes synchronously: the importer buffers rows and only flushes when its
        // buffer fills, so per-field async calls would cost more than the rare blocking flush.
        await using (NpgsqlBinaryImporter importer = await connection.BeginBinaryImportAsync(CopyCommand, cancellationToken))
        {
            for (int i = 0; i < batch.Count; i++)
            {
                UsageRecord record = batch.Records[i];
                importer.StartRow();
                importer.Write(providerId, NpgsqlDbType.Text);
                importer.Write(streamId, NpgsqlDbType.Text);
                importer.Write((long)record.Sequence, NpgsqlDbType.Bigint);
                importer.Write(record.JobId, NpgsqlDbType.Text);
                importer.Write(record.HolderCode, NpgsqlDbType.Text);
                importer.Write(record.DeviceModel, NpgsqlDbType.Text);
                importer.Write((int)record.DeviceCount, NpgsqlDbType.Integer);
                importer.Write((int)record.ShareNumerator, NpgsqlDbType.Integer);
                importer.Write((int)record.ShareDenominator, NpgsqlDbType.Integer);
                importer.Write(UnixMs.ToDateTime(record.StartUnixMs), NpgsqlDbType.TimestampTz);
                importer.Write(UnixMs.ToDateTime(record.EndUnixMs), NpgsqlDbType.TimestampTz);
                importer.Write(record.Site, NpgsqlDbType.Text);
                if (record.DeviceUuids.Count == 0)
                {
                    importer.WriteNull();
                }
                else
                {
                    importer.Write<IList<string>>(record.DeviceUuids, NpgsqlDbType.Array | NpgsqlDbType.Text);
                }

                if (record.HasEnergyMwh)
                {
                    importer.Write((long)record.EnergyMwh, NpgsqlDbType.Bigint);
                }
                else
                {
                    importer.WriteNull();
                }

                importer.Write(batch.Models[i].CatalogVersion, NpgsqlDbType.Text);
                importer.Write(batch.UsageNanoPflopsHours[i], NpgsqlDbType.Bigint);
                importer.Write(batch.HashAt(i), NpgsqlDbType.Bytea);
            }

            await importer.CompleteAsync(cancellationToken);
        }

        ulong last = batch.Records[batch.Count - 1].Sequence;
        await connection.ExecuteAsync(new CommandDefinition(
            "UPDATE ingest_streams SET committed_sequence = @last, chain_head = @head, updated_at = now() WHERE provider_id = @providerId AND stream_id = @streamId",
            new { providerId, streamId, last = (long)last, head = batch.HashAt(batch.Count - 1).ToArray() }, transaction, cancellationToken: cancellationToken));
        if (alongside is not null)
        {
            await alongside(connection, transaction);
        }

        await transaction.CommitAsync(cancellationToken);
    }

    /// <summary>Records a replay whose content differs from what is committed. Runs in its own transaction.</summary>
    public async Task RecordTamperConflictAsync(string providerId, string streamId, ulong sequence, byte[] committedHash, byte[] offeredHash, byte[] offeredCanonical, string? peer, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await connection.ExecuteAsync(new CommandDefinition("""
            INSERT INTO tamper_conflicts (provider_id, stream_id, sequence, committed_hash, offered_hash, offered_canonical, peer)
            VALUES (@providerId, @streamId, @sequence, @committedHash, @offeredHash, @offeredCanonical, @peer)
            """, new { providerId, streamId, sequence = (long)sequence, committedHash, offeredHash, offeredCanonical, peer }, cancellationToken: cancellationToken));
    }
}

/// <summary>Conversions between Unix milliseconds and UTC DateTime.</summary>
public static class UnixMs
{
    public static DateTime ToDateTime(long unixMs) => new(DateTime.UnixEpoch.Ticks + unixMs * TimeSpan.TicksPerMillisecond, DateTimeKind.Utc);

    public static long FromDateTime(DateTime value) => (value.ToUniversalTime().Ticks - DateTime.UnixEpoch.Ticks) / TimeSpan.TicksPerMillisecond;
}
