using Dapper;
using Metering.Engine.Storage;
using Metering.Fixtures;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;

namespace Metering.Engine.Fixtures;

/// <summary>
/// One embedded PostgreSQL for the whole test process, started once. A migrated template
/// database is built once too; each test gets its own database cloned from it, so tests never
/// see each other's rows. Every collection that names this fixture (a test project may split its
/// tests into several collections, which xunit runs side by side) shares the one server: the
/// first to start it starts it, the last to finish stops it, and the keys seeded in the template
/// are the same for all of them.
/// </summary>
public sealed class PostgresFixture : IAsyncLifetime
{
    private const string Template = "metering_template";
    private static readonly SemaphoreSlim SharedGate = new(1, 1);
    private static EmbeddedPostgres? _shared;
    private static string _root = "";
    private static int _users;
    private static int _databases;

    public EmbeddedPostgres Server => _shared ?? throw new InvalidOperationException("the embedded PostgreSQL has not started");

    public async Task InitializeAsync()
    {
        await SharedGate.WaitAsync();
        try
        {
            if (_users == 0)
            {
                await StartSharedAsync();
            }

            _users++;
        }
        finally
        {
            SharedGate.Release();
        }
    }

    private static async Task StartSharedAsync()
    {
        _root = Directory.CreateTempSubdirectory("metering-tests-").FullName;
        // When the tests run as root, PostgreSQL runs as an unprivileged user that must be able
        // to walk into this folder; temporary folders are created private to their owner.
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(_root, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute);
        }

        _shared = await EmbeddedPostgres.StartAsync(
            new EmbeddedPostgresOptions { DataDirectory = Path.Combine(_root, "pg"), Durable = false, Database = Template },
            NullLogger.Instance);
        await using NpgsqlDataSource template = Database.CreateDataSource(_shared.ConnectionString);
        await new Migrator(template, NullLogger.Instance).MigrateAsync();
        // Both test providers are admitted, and each role holds a key, in every test database.
        Keys = await Admissions.SeedAsync(template);
    }

    /// <summary>The keys issued in the template, valid in every test database.</summary>
    internal static SeededKeys Keys { get; private set; } = null!;

    /// <summary>A fresh, migrated database of its own.</summary>
    public async Task<string> CreateDatabaseAsync()
    {
        string name = $"test_{Interlocked.Increment(ref _databases)}_{Environment.ProcessId}";
        var admin = new NpgsqlConnectionStringBuilder(Server.ConnectionString) { Database = "postgres", Pooling = false };
        await using (var connection = new NpgsqlConnection(admin.ConnectionString))
        {
            await connection.OpenAsync();
            // A template must have no other sessions while it is copied.
            NpgsqlConnection.ClearAllPools();
            await connection.ExecuteAsync($"CREATE DATABASE {name} TEMPLATE {Template}");
        }

        return new NpgsqlConnectionStringBuilder(Server.ConnectionString) { Database = name }.ConnectionString;
    }

    /// <summary>
    /// A migrated database that holds nothing yet, not even a key, as `metering db migrate` leaves
    /// a new one: for the first operator key's bootstrap.
    /// </summary>
    public async Task<string> CreateUnseededDatabaseAsync()
    {
        string name = $"fresh_{Interlocked.Increment(ref _databases)}_{Environment.ProcessId}";
        var admin = new NpgsqlConnectionStringBuilder(Server.ConnectionString) { Database = "postgres", Pooling = false };
        await using (var connection = new NpgsqlConnection(admin.ConnectionString))
        {
            await connection.OpenAsync();
            await connection.ExecuteAsync($"CREATE DATABASE {name} TEMPLATE template0");
        }

        string database = new NpgsqlConnectionStringBuilder(Server.ConnectionString) { Database = name }.ConnectionString;
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(database);
        await new Migrator(dataSource, NullLogger.Instance).MigrateAsync();
        return database;
    }

    /// <summary>
    /// The same database, logged in as the runtime role that the migration created: servers under
    /// test run through it, as in production, so that a missing grant fails a test.
    /// </summary>
    public static string AsRuntimeRole(string connectionString) =>
        new NpgsqlConnectionStringBuilder(connectionString) { Username = SchemaGuard.DefaultRuntimeRole }.ConnectionString;

    public async Task DisposeAsync()
    {
        await SharedGate.WaitAsync();
        try
        {
            if (--_users == 0)
            {
                await StopSharedAsync();
            }
        }
        finally
        {
            SharedGate.Release();
        }
    }

    private static async Task StopSharedAsync()
    {
        EmbeddedPostgres server = _shared!;
        _shared = null;
        await server.DisposeAsync();
        try
        {
            Directory.Delete(server.DataDirectory, recursive: true);
            Directory.Delete(_root, recursive: true);
        }
        catch (IOException)
        {
            // Temporary files of a stopped cluster; the OS cleans /tmp.
        }
        catch (UnauthorizedAccessException)
        {
            // When run as root the cluster's files belong to the unprivileged user.
        }
    }
}

/// <summary>
/// The collection whose tests share one <see cref="PostgresFixture"/>. xunit finds a collection's
/// definition only in the assembly of its tests, so each test project declares its own under
/// this name (Infrastructure/PostgresCollectionDefinition.cs).
/// </summary>
public static class PostgresCollection
{
    public const string Name = "postgres";
}
