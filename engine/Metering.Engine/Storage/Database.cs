using Npgsql;

namespace Metering.Engine.Storage;

/// <summary>Builds the one data source the process uses for a connection string.</summary>
public static class Database
{
    public static NpgsqlDataSource CreateDataSource(string connectionString) => new NpgsqlDataSourceBuilder(connectionString).Build();
}
