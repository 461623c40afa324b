using System.Runtime.CompilerServices;
using Npgsql;

namespace Metering.Engine.Storage;

/// <summary>Builds the one data source the process uses for a connection string.</summary>
public static class Database
{
    // The connection string each data source was built from: NpgsqlDataSource.ConnectionString
    // leaves the password out, and the wire COPY reader needs it to log in on its own.
    private static readonly ConditionalWeakTable<NpgsqlDataSource, string> ConnectionStrings = new();

    public static NpgsqlDataSource CreateDataSource(string connectionString)
    {
        var builder = new NpgsqlDataSourceBuilder(connectionString);
        NpgsqlDataSource dataSource = builder.Build();
        ConnectionStrings.AddOrUpdate(dataSource, connectionString);
        return dataSource;
    }

    /// <summary>
    /// Where a <see cref="WireCopyOut"/> reads what <paramref name="dataSource"/> reads, or null
    /// with the reason it cannot (then read through Npgsql).
    /// </summary>
    public static WireEndpoint? WireEndpointOf(NpgsqlDataSource dataSource, out string? whyNot) =>
        WireEndpoint.TryFrom(ConnectionStrings.TryGetValue(dataSource, out string? connectionString) ? connectionString : dataSource.ConnectionString, out whyNot);
}
