using Dapper;
using Metering.Engine.Storage;
using Metering.Fixtures;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;

namespace Metering.Engine.Fixtures;

/// <summary>
/// A Citus cluster of its own on loopback: a coordinator and two workers, each an embedded
/// PostgreSQL that preloads citus, reached over their Unix sockets. The engine's database on the
/// coordinator is migrated with the distributed layout (`metering db migrate --distributed`) and
/// seeded as the single-node template is, so that a test can compare the two. Nothing starts
/// where the citus extension is not installed; the tests that need it are then skipped
/// (<see cref="CitusFactAttribute"/>).
/// </summary>
public sealed class CitusCluster : IAsyncLifetime
{
    private const int WorkerCount = 2;
    private readonly List<EmbeddedPostgres> _nodes = [];
    private string _root = "";

    /// <summary>Why the Citus tests cannot run here, or null when they can.</summary>
    public static string? Unavailable { get; } = FindCitus();

    /// <summary>The owner's connection string of the engine's database on the coordinator.</summary>
    public string ConnectionString { get; private set; } = "";

    /// <summary>The owner's connection strings of the engine's database on each worker, where the shards are.</summary>
    public IReadOnlyList<string> WorkerConnectionStrings => _nodes.Skip(1).Select(n => n.ConnectionString).ToList();

    /// <summary>The keys issued in the cluster's database.</summary>
    internal SeededKeys Keys { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        if (Unavailable is not null)
        {
            return;
        }

        _root = Directory.CreateTempSubdirectory("metering-citus-").FullName;
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(_root, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute);
        }

        for (int i = 0; i <= WorkerCount; i++)
        {
            _nodes.Add(await EmbeddedPostgres.StartAsync(new EmbeddedPostgresOptions
            {
                DataDirectory = Path.Combine(_root, i == 0 ? "coordinator" : $"worker{i}"),
                Durable = false,
                // Citus commits a transaction that wrote on several nodes in two phases.
                ServerSettings = ["shared_preload_libraries=citus", "max_prepared_transactions=100"],
            }, NullLogger.Instance));
        }

        foreach (EmbeddedPostgres node in _nodes)
        {
            await using var connection = new NpgsqlConnection(node.ConnectionString);
            await connection.ExecuteAsync("CREATE EXTENSION IF NOT EXISTS citus");
        }

        await using (var coordinator = new NpgsqlConnection(_nodes[0].ConnectionString))
        {
            // Nodes name each other by socket directory; libpq reads a name that starts with a
            // slash as one. The embedded servers listen on no TCP port at all.
            await coordinator.ExecuteAsync("SELECT citus_set_coordinator_host(@host, 5432)", new { host = _nodes[0].SocketDirectory });
            foreach (EmbeddedPostgres worker in _nodes.Skip(1))
            {
                await coordinator.ExecuteAsync("SELECT citus_add_node(@host, 5432)", new { host = worker.SocketDirectory });
            }
        }

        ConnectionString = _nodes[0].ConnectionString;
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(ConnectionString);
        await new Migrator(dataSource, NullLogger.Instance) { Distributed = true }.MigrateAsync();
        Keys = await Admissions.SeedAsync(dataSource);
    }

    public async Task DisposeAsync()
    {
        NpgsqlConnection.ClearAllPools();
        for (int i = _nodes.Count - 1; i >= 0; i--)
        {
            await _nodes[i].DisposeAsync();
        }

        try
        {
            if (_root.Length > 0)
            {
                Directory.Delete(_root, recursive: true);
            }
        }
        catch (IOException)
        {
            // Files of stopped clusters; the OS cleans its temporary folder.
        }
        catch (UnauthorizedAccessException)
        {
            // When run as root the clusters' files belong to the unprivileged user.
        }
    }

    /// <summary>The citus library beside a PostgreSQL the embedded server can start, or why there is none.</summary>
    private static string? FindCitus()
    {
        const string Root = "/usr/lib/postgresql";
        if (Directory.Exists(Root) && Directory.GetDirectories(Root).Any(version => File.Exists(Path.Combine(version, "lib", "citus.so"))))
        {
            return null;
        }

        return $"Citus is not installed (no citus.so under {Root}/*/lib): install the citus extension for this PostgreSQL to run the tests of the distributed layout.";
    }
}

/// <summary>A test that needs Citus: skipped, with the reason, where the citus extension is not installed.</summary>
public sealed class CitusFactAttribute : FactAttribute
{
    public CitusFactAttribute()
    {
        Skip = CitusCluster.Unavailable;
    }
}
