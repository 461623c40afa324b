using System.Data;
using Dapper;
using Npgsql;

namespace Metering.Engine.Storage;

/// <summary>
/// The one way the engine's workflows run a unit of work: a connection from the data source, one
/// READ COMMITTED transaction, committed only when the work returns. A rule a workflow enforces with
/// a unique constraint is translated by the caller, around this call.
/// </summary>
internal static class Transactions
{
    public static async Task<T> InTransactionAsync<T>(this NpgsqlDataSource dataSource, Func<NpgsqlConnection, NpgsqlTransaction, Task<T>> work,
        CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(IsolationLevel.ReadCommitted, cancellationToken);
        await SequentialOnCitusAsync(connection, transaction, cancellationToken);
        T result = await work(connection, transaction);
        await transaction.CommitAsync(cancellationToken);
        return result;
    }

    /// <summary>
    /// On Citus, one connection per worker for the rest of the transaction: a workflow reads a row
    /// by its id alone over every shard before it locks it on one, and then writes reference and
    /// coordinator tables (organisations, the ledger, the history), which Citus refuses after a
    /// parallel read of a distributed table that references them. Plain PostgreSQL keeps the
    /// setting as an unused placeholder.
    /// </summary>
    public static Task SequentialOnCitusAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, CancellationToken cancellationToken) =>
        connection.ExecuteAsync(new CommandDefinition("SET LOCAL citus.multi_shard_modify_mode = 'sequential'", transaction: transaction, cancellationToken: cancellationToken));
}
