using Metering.Engine.Storage;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;

namespace Metering.Fixtures;

/// <summary>
/// A PostgreSQL of a test's own, migrated and seeded with <see cref="Admissions"/>: for the tests
/// that stop the database under a running server, which must not stop the shared one.
/// </summary>
internal static class OwnSeededDatabase
{
    public static async Task<(EmbeddedPostgres Database, SeededKeys Keys)> StartAsync(string folderPrefix)
    {
        string root = Directory.CreateTempSubdirectory(folderPrefix).FullName;
        if (!OperatingSystem.IsWindows())
        {
            // PostgreSQL runs as an unprivileged user when the tests run as root; it must walk in.
            File.SetUnixFileMode(root, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute);
        }

        EmbeddedPostgres database = await EmbeddedPostgres.StartAsync(
            new EmbeddedPostgresOptions { DataDirectory = Path.Combine(root, "pg"), Durable = false, Database = "metering" }, NullLogger.Instance);
        await using NpgsqlDataSource owner = Database.CreateDataSource(database.ConnectionString);
        await new Migrator(owner, NullLogger.Instance).MigrateAsync();
        return (database, await Admissions.SeedAsync(owner));
    }
}
