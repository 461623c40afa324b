using System.Data;
using Dapper;
using Metering.Engine.Signing;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Metering.Engine.Transparency;

/// <summary>Why a log request was refused.</summary>
public enum LogProblem
{
    /// <summary>A size of 0, a first size past the second, a leaf named two ways or not at all.</summary>
    ArgumentInvalid,

    /// <summary>No leaf for that provider and day.</summary>
    LeafNotFound,

    /// <summary>The server never signed a head of that size with its current key.</summary>
    HeadNotFound,

    /// <summary>A size or leaf index past the end of the log.</summary>
    BeyondLog,

    /// <summary>The log is larger than one request reads.</summary>
    LimitExceeded,
}

/// <summary>A log request refused; nothing was written.</summary>
public sealed class TransparencyLogException(LogProblem problem, string message) : Exception(message)
{
    public LogProblem Problem { get; } = problem;
}

/// <summary>A leaf of the log with its audit path in the tree of <paramref name="TreeSize"/> leaves.</summary>
public sealed record LogInclusion(long LeafIndex, long TreeSize, LogLeaf Leaf, IReadOnlyList<byte[]> Path);

/// <summary>
/// The transparency log (transparency-log.md): settlement appends each closed day's provider roots
/// inside its own transaction (<see cref="AppendAsync"/>); the server signs a tree head for every
/// new size it sees and serves heads, inclusion proofs and consistency proofs. Both tables are
/// append-only evidence. Settlement needs no key: signing happens here, on the server's side.
/// </summary>
public sealed partial class TransparencyLog(NpgsqlDataSource dataSource, ServerSigningKey signingKey, TimeProvider time, ILogger logger)
{
    /// <summary>Most leaves one request reads: a provider a day for decades of a large programme.</summary>
    public const int LeavesMax = 4 * 1024 * 1024;

    // Serialises signing within this process; the table's primary key settles races between servers.
    private readonly SemaphoreSlim _signing = new(1, 1);

    /// <summary>
    /// Appends the run's leaves after the log's last, on the run's connection and in its
    /// transaction, so that the leaves commit exactly when the day closes. Runs are ordered by
    /// settlement's own lock, and the leaf index is the primary key, so two runs never share one.
    /// </summary>
    /// <returns>The index of the first leaf appended (the log's size before).</returns>
    public static async Task<long> AppendAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, LogAppend append, CancellationToken cancellationToken)
    {
        long next = await connection.ExecuteScalarAsync<long>(new CommandDefinition(
            "SELECT coalesce(max(leaf_index) + 1, 0) FROM transparency_log_leaves", transaction: transaction, cancellationToken: cancellationToken));
        long index = next;
        foreach (LogLeaf leaf in append.Leaves)
        {
            // A leaf the canonical encoding cannot carry fails the run here, before it is stored.
            _ = leaf.Encode();
            await connection.ExecuteAsync(new CommandDefinition("""
                INSERT INTO transparency_log_leaves (leaf_index, day, provider_id, leaf_count, daily_root, settlement_sha256, run_id, appended_at)
                VALUES (@index, @day, @provider, @count, @root, @settlement, @run, @at)
                """, new
            {
                index,
                day = leaf.Day,
                provider = leaf.ProviderId,
                count = leaf.LeafCount,
                root = leaf.DailyRoot,
                settlement = leaf.SettlementSha256,
                run = append.RunId,
                at = append.At.UtcDateTime,
            }, transaction, cancellationToken: cancellationToken));
            index++;
        }

        return next;
    }

    /// <summary>Every leaf, in index order. A gap in the indexes is refused loudly: only a rewrite past the triggers makes one.</summary>
    public async Task<List<LogLeaf>> ReadLeavesAsync(CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await ReadLeavesAsync(connection, null, cancellationToken);
    }

    private static async Task<List<LogLeaf>> ReadLeavesAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, CancellationToken cancellationToken)
    {
        long count = await connection.ExecuteScalarAsync<long>(new CommandDefinition("SELECT count(*) FROM transparency_log_leaves", transaction: transaction, cancellationToken: cancellationToken));
        if (count > LeavesMax)
        {
            throw new TransparencyLogException(LogProblem.LimitExceeded, $"the log has {count} leaves; one request reads at most {LeavesMax}");
        }

        var rows = await connection.QueryAsync<(long Index, DateTime Day, string Provider, long Count, byte[] Root, byte[] Settlement)>(new CommandDefinition("""
            SELECT leaf_index, day, provider_id, leaf_count, daily_root, settlement_sha256 FROM transparency_log_leaves ORDER BY leaf_index
            """, transaction: transaction, cancellationToken: cancellationToken));
        var leaves = new List<LogLeaf>((int)count);
        foreach (var row in rows)
        {
            if (row.Index != leaves.Count)
            {
                throw new InvalidOperationException($"the transparency log has no leaf {leaves.Count} but a leaf {row.Index}: its table was rewritten past its triggers");
            }

            leaves.Add(new LogLeaf(DateOnly.FromDateTime(row.Day), row.Provider, row.Count, row.Root, row.Settlement));
        }

        return leaves;
    }

    /// <summary>
    /// The head of the log as it stands, signed with the server's key: the stored head of the
    /// current size, or, when the log has grown since the last one, a new head signed now and
    /// stored. Two servers that sign one size at once keep the first stored and both serve it.
    /// </summary>
    public async Task<SignedTreeHead> LatestHeadAsync(CancellationToken cancellationToken)
    {
        await _signing.WaitAsync(cancellationToken);
        try
        {
            await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
            await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(IsolationLevel.RepeatableRead, cancellationToken);
            List<LogLeaf> leaves = await ReadLeavesAsync(connection, transaction, cancellationToken);
            byte[] root = LogTree.Root(Hashes(leaves), leaves.Count);
            SignedTreeHead? stored = await StoredHeadAsync(connection, transaction, leaves.Count, signingKey.KeyId, cancellationToken);
            if (stored is not null)
            {
                if (!stored.Root.AsSpan().SequenceEqual(root))
                {
                    // The stored leaves no longer give the root this server signed: someone rewrote
                    // them. The signed head stays as it was; outsiders' consistency checks show it.
                    LogRootChanged(logger, leaves.Count, stored.RootHex, Convert.ToHexStringLower(root));
                }

                await transaction.CommitAsync(cancellationToken);
                return stored;
            }

            SignedTreeHead head = SignedTreeHead.Sign(signingKey, leaves.Count, root, time.GetUtcNow().ToUnixTimeMilliseconds());
            await connection.ExecuteAsync(new CommandDefinition("""
                INSERT INTO transparency_tree_heads (tree_size, key_id, root, timestamp_unix_ms, signature)
                VALUES (@size, @keyId, @root, @timestamp, @signature)
                ON CONFLICT (tree_size, key_id) DO NOTHING
                """, new { size = head.TreeSize, keyId = head.KeyId, root = head.Root, timestamp = head.TimestampUnixMs, signature = head.Signature },
                transaction, cancellationToken: cancellationToken));
            await transaction.CommitAsync(cancellationToken);
            SignedTreeHead kept = await HeadAsync(head.TreeSize, cancellationToken);
            LogSigned(logger, kept.TreeSize, kept.RootHex, kept.KeyId);
            return kept;
        }
        finally
        {
            _signing.Release();
        }
    }

    /// <summary>The head of <paramref name="treeSize"/> that the server signed with its current key.</summary>
    public async Task<SignedTreeHead> HeadAsync(long treeSize, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await StoredHeadAsync(connection, null, treeSize, signingKey.KeyId, cancellationToken)
            ?? throw new TransparencyLogException(LogProblem.HeadNotFound,
                $"the server has no head of size {treeSize} signed with key {signingKey.KeyId}; heads are signed for each size the server saw, and the latest on request");
    }

    /// <summary>
    /// The audit path of a leaf, named by its index or by provider and day, in the tree of
    /// <paramref name="treeSize"/> leaves (0 for the latest signed head's size).
    /// </summary>
    public async Task<LogInclusion> InclusionAsync(long? leafIndex, string? providerId, DateOnly? day, long treeSize, CancellationToken cancellationToken)
    {
        if ((leafIndex is null) == (providerId is null || day is null))
        {
            throw new TransparencyLogException(LogProblem.ArgumentInvalid, "name the leaf either by its index or by provider and day, not both and not neither");
        }

        if (treeSize < 0 || leafIndex < 0)
        {
            throw new TransparencyLogException(LogProblem.ArgumentInvalid, "tree size and leaf index are not negative");
        }

        if (treeSize == 0)
        {
            treeSize = (await LatestHeadAsync(cancellationToken)).TreeSize;
        }

        List<LogLeaf> leaves = await ReadLeavesAsync(cancellationToken);
        long index = leafIndex ?? leaves.FindIndex(l => l.ProviderId == providerId && l.Day == day);
        if (index < 0)
        {
            throw new TransparencyLogException(LogProblem.LeafNotFound, $"the log has no leaf of {providerId} on {day:yyyy-MM-dd}: the day is not settled, or the provider had no statement that day");
        }

        if (treeSize > leaves.Count)
        {
            throw new TransparencyLogException(LogProblem.BeyondLog, $"tree size {treeSize} is past the end of the log, which has {leaves.Count} leaves");
        }

        if (index >= treeSize)
        {
            throw new TransparencyLogException(LogProblem.BeyondLog, $"leaf {index} is not in the tree of {treeSize} leaves{(index < leaves.Count ? "; it was appended later" : "")}");
        }

        return new LogInclusion(index, treeSize, leaves[(int)index], LogTree.InclusionPath(Hashes(leaves), index, treeSize));
    }

    /// <summary>PROOF(from, to) over the stored leaves.</summary>
    public async Task<List<byte[]>> ConsistencyAsync(long fromSize, long toSize, CancellationToken cancellationToken)
    {
        if (fromSize <= 0 || toSize <= 0)
        {
            throw new TransparencyLogException(LogProblem.ArgumentInvalid, $"both sizes must be at least 1 (a tree of no leaves is consistent with every tree); got from {fromSize}, to {toSize}");
        }

        if (fromSize > toSize)
        {
            throw new TransparencyLogException(LogProblem.ArgumentInvalid, $"from ({fromSize}) is past to ({toSize}); a log only grows");
        }

        List<LogLeaf> leaves = await ReadLeavesAsync(cancellationToken);
        if (toSize > leaves.Count)
        {
            throw new TransparencyLogException(LogProblem.BeyondLog, $"to ({toSize}) is past the end of the log, which has {leaves.Count} leaves");
        }

        return LogTree.ConsistencyProof(Hashes(leaves), fromSize, toSize);
    }

    private static List<byte[]> Hashes(List<LogLeaf> leaves) => leaves.Select(l => l.Hash()).ToList();

    private static async Task<SignedTreeHead?> StoredHeadAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, long treeSize, string keyId, CancellationToken cancellationToken)
    {
        var rows = await connection.QueryAsync<(long Size, byte[] Root, long Timestamp, string KeyId, byte[] Signature)>(new CommandDefinition("""
            SELECT tree_size, root, timestamp_unix_ms, key_id, signature FROM transparency_tree_heads WHERE tree_size = @treeSize AND key_id = @keyId
            """, new { treeSize, keyId }, transaction, cancellationToken: cancellationToken));
        return rows.Select(r => new SignedTreeHead(r.Size, r.Root, r.Timestamp, r.KeyId, r.Signature)).FirstOrDefault();
    }

    [LoggerMessage(EventId = 7001, Level = LogLevel.Information, Message = "Transparency log: signed the head of size {TreeSize}, root {Root}, key {KeyId}")]
    private static partial void LogSigned(ILogger logger, long treeSize, string root, string keyId);

    [LoggerMessage(EventId = 7002, Level = LogLevel.Critical, Message = "Transparency log: the stored leaves of size {TreeSize} give root {Recomputed}, but the head signed for that size has root {Signed}: the log was rewritten")]
    private static partial void LogRootChanged(ILogger logger, long treeSize, string signed, string recomputed);
}
