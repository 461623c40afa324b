using Metering.Engine.Storage;
using Npgsql;

namespace Metering.Engine.Tests.Storage;

/// <summary>The rule by which a server judges its database's replication, and which errors count as losing the database.</summary>
public sealed class ReplicationDurabilityTests
{
    [Theory]
    [InlineData(false, "on", 1, ReplicationCondition.Durable)]
    [InlineData(false, "remote_apply", 2, ReplicationCondition.Durable)]
    [InlineData(false, "remote_write", 1, ReplicationCondition.SynchronousCommitOff)]
    [InlineData(false, "local", 1, ReplicationCondition.SynchronousCommitOff)]
    [InlineData(false, "off", 1, ReplicationCondition.SynchronousCommitOff)]
    [InlineData(false, "on", 0, ReplicationCondition.NoSynchronousStandby)]
    [InlineData(true, "on", 1, ReplicationCondition.NotPrimary)]
    public void Replication_is_durable_only_on_a_primary_that_commits_synchronously_to_an_attached_standby(
        bool inRecovery, string synchronousCommit, int standbys, ReplicationCondition expected) =>
        Assert.Equal(expected, ReplicationDurability.Judge(inRecovery, synchronousCommit, standbys).Condition);

    [Theory]
    [InlineData(PostgresErrorCodes.AdminShutdown, true)]
    [InlineData(PostgresErrorCodes.CrashShutdown, true)]
    [InlineData(PostgresErrorCodes.CannotConnectNow, true)]
    [InlineData(PostgresErrorCodes.ReadOnlySqlTransaction, true)]
    [InlineData(PostgresErrorCodes.ConnectionFailure, true)]
    [InlineData(PostgresErrorCodes.UniqueViolation, false)]
    [InlineData(PostgresErrorCodes.InsufficientPrivilege, false)]
    [InlineData(PostgresErrorCodes.RaiseException, false)]
    public void A_server_error_counts_as_losing_the_database_only_for_shutdowns_connections_and_standbys(string sqlState, bool lost) =>
        Assert.Equal(lost, ReplicationDurability.IsDatabaseLost(new PostgresException("test", "FATAL", "FATAL", sqlState)));

    [Fact]
    public void A_broken_connection_counts_as_losing_the_database_and_an_unrelated_failure_does_not()
    {
        Assert.True(ReplicationDurability.IsDatabaseLost(new NpgsqlException("Exception while reading from stream", new IOException("reset"))));
        Assert.False(ReplicationDurability.IsDatabaseLost(new InvalidOperationException("a bug")));
    }
}
