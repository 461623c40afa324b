using Dapper;
using Metering.Engine.Access;
using Npgsql;

namespace Metering.Engine.Sandbox;

/// <summary>Why a sandbox-clock operation was refused.</summary>
public enum SandboxProblem
{
    /// <summary>The database is not a sandbox, or the server does not run on a simulated clock.</summary>
    NotSandbox,

    /// <summary>A move that is not forward or is longer than one move may be.</summary>
    AdvanceInvalid,

    /// <summary>Marking a database that already holds programme data as a sandbox.</summary>
    NotEmpty,
}

public sealed class SandboxException(SandboxProblem problem, string message) : Exception(message)
{
    public SandboxProblem Problem { get; } = problem;
}

/// <summary>
/// The sandbox mark and the simulated clock's offset in the database (migration 0013): only
/// `metering db migrate --sandbox` marks a database, only while it holds no programme data, and
/// the offset moves only forward, each move recorded with the operator who made it.
/// </summary>
public sealed class SandboxClockStore(NpgsqlDataSource dataSource)
{
    /// <summary>The longest one move may be: 400 days, a programme year and its margins.</summary>
    public const long AdvanceMaxMs = 400L * 24 * 60 * 60 * 1000;

    /// <summary>The stored offset of a sandbox database, or null for any other database.</summary>
    public async Task<long?> ReadOffsetAsync(CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await connection.ExecuteScalarAsync<long?>(new CommandDefinition("SELECT offset_ms FROM sandbox_clock", cancellationToken: cancellationToken));
    }

    /// <summary>
    /// Marks the database a sandbox (as its owner); true when it was marked now, false when it
    /// already was. Refused once the database holds organisations, usage or settlements: a
    /// database with real data is not turned into a playground whose time can be moved.
    /// </summary>
    public async Task<bool> MarkAsync(CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(cancellationToken);
        if (await connection.ExecuteScalarAsync<bool>(new CommandDefinition("SELECT EXISTS (SELECT FROM sandbox_clock)", transaction: transaction, cancellationToken: cancellationToken)))
        {
            return false;
        }

        if (await connection.ExecuteScalarAsync<bool>(new CommandDefinition(
            "SELECT EXISTS (SELECT 1 FROM organisations) OR EXISTS (SELECT 1 FROM usage_records) OR EXISTS (SELECT 1 FROM settlement_runs)",
            transaction: transaction, cancellationToken: cancellationToken)))
        {
            throw new SandboxException(SandboxProblem.NotEmpty,
                "this database already holds organisations, usage or settlements; only a new, empty database can be made a sandbox");
        }

        await connection.ExecuteAsync(new CommandDefinition("INSERT INTO sandbox_clock DEFAULT VALUES ON CONFLICT DO NOTHING", transaction: transaction, cancellationToken: cancellationToken));
        await transaction.CommitAsync(cancellationToken);
        return true;
    }

    /// <summary>Moves <paramref name="clock"/> and the stored offset forward by <paramref name="byMs"/>; returns the new offset.</summary>
    public async Task<long> AdvanceAsync(SimulatedClock clock, Actor actor, long byMs, CancellationToken cancellationToken)
    {
        if (byMs <= 0 || byMs > AdvanceMaxMs)
        {
            throw new SandboxException(SandboxProblem.AdvanceInvalid, $"a move is forward, from 1 ms to {AdvanceMaxMs / 86_400_000} days; {byMs} ms is not");
        }

        DateTimeOffset real = TimeProvider.System.GetUtcNow();
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(cancellationToken);
        long? offset = await connection.ExecuteScalarAsync<long?>(new CommandDefinition(
            "UPDATE sandbox_clock SET offset_ms = offset_ms + @byMs, advanced_at = @real RETURNING offset_ms",
            new { byMs, real }, transaction, cancellationToken: cancellationToken));
        if (offset is not long moved)
        {
            throw new SandboxException(SandboxProblem.NotSandbox, "this database is not a sandbox (metering db migrate --sandbox makes one)");
        }

        await connection.ExecuteAsync(new CommandDefinition(
            "INSERT INTO sandbox_clock_moves (by_ms, offset_ms, moved_by, moved_at) VALUES (@byMs, @moved, @by, @real)",
            new { byMs, moved, by = actor.ToString(), real }, transaction, cancellationToken: cancellationToken));
        await transaction.CommitAsync(cancellationToken);
        clock.MoveTo(moved);
        return moved;
    }
}
