using System.Runtime.CompilerServices;
using Npgsql;

namespace Metering.Engine.Storage;

/// <summary>Builds the one data source the process uses for a connection string.</summary>
public static class Database
{
    // The connection string each data source was built from: NpgsqlDataSource.ConnectionString
    // leaves the password out, and the wire COPY reader needs it to log in on its own.
    private static readonly ConditionalWeakTable<NpgsqlDataSource, string> ConnectionStrings = new();

    /// <summary>
    /// Most wire COPY readers open at once against one data source. They are connections the
    /// Npgsql pool does not count, so without a limit a few concurrent audits could take the
    /// server's max_connections from ingest.
    /// </summary>
    public const int WireReadersMax = 16;

    private static readonly ConditionalWeakTable<NpgsqlDataSource, SemaphoreSlim> WireReaders = new();

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

    /// <summary>The slots of <see cref="WireReadersMax"/> for a data source; a wire reader holds one while it is open.</summary>
    public static SemaphoreSlim WireReaderSlotsOf(NpgsqlDataSource dataSource) => WireReaders.GetValue(dataSource, _ => new SemaphoreSlim(WireReadersMax, WireReadersMax));
}
