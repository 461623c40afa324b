using System.Data;
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
        T result = await work(connection, transaction);
        await transaction.CommitAsync(cancellationToken);
        return result;
    }
}
