using Npgsql;

namespace Metering.Engine.Storage;

/// <summary>Whether an acknowledged commit survives the loss of the primary, and if not, why.</summary>
public enum ReplicationCondition
{
    /// <summary>synchronous_commit is on or remote_apply and at least one synchronous standby is attached.</summary>
    Durable = 0,

    /// <summary>synchronous_commit is off, local or remote_write: a commit returns before a standby holds it durably.</summary>
    SynchronousCommitOff = 1,

    /// <summary>No standby is attached as sync or quorum: a commit is on the primary alone.</summary>
    NoSynchronousStandby = 2,

    /// <summary>The connection reached a standby (in recovery), which cannot commit at all.</summary>
    NotPrimary = 3,

    /// <summary>No check has succeeded yet, or the database did not answer the last one.</summary>
    NotChecked = 4,
}

/// <summary>One look at the database's replication: the condition and the values it was judged on.</summary>
public sealed record ReplicationFinding(ReplicationCondition Condition, string SynchronousCommit, int SynchronousStandbys, string Detail);

/// <summary>
/// Asks the primary whether a commit it acknowledges is held by a synchronous standby too. It reads
/// synchronous_commit in a session of the same data source the server commits through, so that it
/// judges the setting those commits get, and counts sync or quorum standbys through the migration's
/// SECURITY DEFINER function, since the runtime role may not read pg_stat_replication's sync_state.
/// </summary>
public static class ReplicationDurability
{
    public static async Task<ReplicationFinding> CheckAsync(NpgsqlDataSource dataSource, CancellationToken cancellationToken)
    {
        await using NpgsqlCommand command = dataSource.CreateCommand(
            "SELECT pg_is_in_recovery(), current_setting('synchronous_commit'), synchronous_standbys_attached()");
        await using NpgsqlDataReader reader = await command.ExecuteReaderAsync(cancellationToken);
        await reader.ReadAsync(cancellationToken);
        bool inRecovery = reader.GetBoolean(0);
        string synchronousCommit = reader.GetString(1);
        int standbys = reader.GetInt32(2);
        return Judge(inRecovery, synchronousCommit, standbys);
    }

    /// <summary>The rule, apart from the query: a standby is not a primary, and a primary needs both the setting and a standby.</summary>
    public static ReplicationFinding Judge(bool inRecovery, string synchronousCommit, int synchronousStandbys)
    {
        if (inRecovery)
        {
            return new(ReplicationCondition.NotPrimary, synchronousCommit, synchronousStandbys, "the connection reached a standby, not the primary");
        }

        if (synchronousCommit is not ("on" or "remote_apply"))
        {
            return new(ReplicationCondition.SynchronousCommitOff, synchronousCommit, synchronousStandbys,
                $"synchronous_commit is '{synchronousCommit}'; it must be 'on' or 'remote_apply'");
        }

        if (synchronousStandbys < 1)
        {
            return new(ReplicationCondition.NoSynchronousStandby, synchronousCommit, synchronousStandbys,
                "no synchronous standby is attached (pg_stat_replication has no sync or quorum standby)");
        }

        return new(ReplicationCondition.Durable, synchronousCommit, synchronousStandbys,
            $"synchronous_commit is '{synchronousCommit}' and {synchronousStandbys} synchronous standby(s) are attached");
    }

    /// <summary>
    /// Whether an exception means the database went away or stopped being a writable primary, as
    /// in a failover: the broken connection itself, a server shutting down, a standby refusing a
    /// write. Such a call is worth retrying once a primary answers again; anything else is not.
    /// </summary>
    public static bool IsDatabaseLost(Exception e) => e switch
    {
        PostgresException postgres => postgres.SqlState.StartsWith("08", StringComparison.Ordinal)
            || postgres.SqlState is PostgresErrorCodes.AdminShutdown or PostgresErrorCodes.CrashShutdown or PostgresErrorCodes.CannotConnectNow
                or PostgresErrorCodes.ReadOnlySqlTransaction or PostgresErrorCodes.TransactionResolutionUnknown
            || postgres.IsTransient,
        // Any other NpgsqlException is the client side's: a broken or timed-out connection, or no
        // host of a multi-host connection string answering as primary.
        NpgsqlException => true,
        _ => false,
    };

    /// <summary>Whether the exception, or one it wraps, is the database going away (<see cref="IsDatabaseLost"/>).</summary>
    public static bool IsDatabaseLostWithin(Exception e)
    {
        for (Exception? current = e; current is not null; current = current.InnerException)
        {
            if (IsDatabaseLost(current))
            {
                return true;
            }
        }

        return false;
    }
}
