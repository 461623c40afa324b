using System.Diagnostics;
using Metering.Engine.Storage;
using Metering.Engine.Fixtures;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;

namespace Metering.Engine.IntegrationTests.Storage;

[Collection(PostgresCollection.Name)]
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class EmbeddedPostgresTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Embedded_server_listens_only_on_a_private_unix_socket()
    {
        await using var connection = new NpgsqlConnection(postgres.Server.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand("SELECT current_setting('listen_addresses'), current_setting('unix_socket_permissions')", connection);
        await using var reader = await command.ExecuteReaderAsync();
        Assert.True(await reader.ReadAsync());
        Assert.Equal("", reader.GetString(0));
        Assert.Equal("0700", reader.GetString(1));
        Assert.StartsWith(Path.GetTempPath().TrimEnd('/'), postgres.Server.SocketDirectory, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_second_engine_on_the_same_data_folder_is_refused()
    {
        var options = new EmbeddedPostgresOptions { DataDirectory = postgres.Server.DataDirectory, Durable = false };

        var error = await Assert.ThrowsAsync<EmbeddedPostgresException>(() => EmbeddedPostgres.StartAsync(options, NullLogger.Instance));

        Assert.Contains("in use by another metering process", error.Message, StringComparison.Ordinal);
        // The running cluster is untouched.
        await using var connection = new NpgsqlConnection(postgres.Server.ConnectionString);
        await connection.OpenAsync();
    }

    [Fact]
    public void Server_log_is_readable_by_its_owner_only()
    {
        UnixFileMode mode = File.GetUnixFileMode(postgres.Server.DataDirectory + ".log");

        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, mode);
    }

    [Fact]
    public async Task Cluster_runs_as_its_own_os_user_never_root_or_nobody()
    {
        string owner = await StatAsync("%U", postgres.Server.DataDirectory);
        Assert.Equal(Environment.IsPrivilegedProcess ? EmbeddedPostgres.DefaultOsUser : Environment.UserName, owner);

        var error = await Assert.ThrowsAsync<EmbeddedPostgresException>(() => EmbeddedPostgres.StartAsync(
            new EmbeddedPostgresOptions { DataDirectory = Path.Combine(Path.GetTempPath(), "unused-" + Guid.NewGuid().ToString("N"), "pg"), OsUser = "nobody" }, NullLogger.Instance));
        Assert.Contains("will not run as nobody", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_symlink_planted_where_the_data_folder_goes_is_refused_and_its_target_keeps_its_owner()
    {
        string root = PrivateRoot();
        string target = Directory.CreateTempSubdirectory("metering-victim-").FullName;
        string targetOwner = await StatAsync("%u:%g:%a", target);
        File.CreateSymbolicLink(Path.Combine(root, "pg"), target);

        var error = await Assert.ThrowsAsync<EmbeddedPostgresException>(() => EmbeddedPostgres.StartAsync(
            new EmbeddedPostgresOptions { DataDirectory = Path.Combine(root, "pg"), Durable = false }, NullLogger.Instance));

        Assert.Contains("symbolic link", error.Message, StringComparison.Ordinal);
        Assert.Equal(targetOwner, await StatAsync("%u:%g:%a", target));
        Assert.Empty(Directory.EnumerateFileSystemEntries(target));
    }

    [Fact]
    public async Task A_symlink_planted_where_the_log_goes_is_refused_and_its_target_keeps_its_owner_and_mode()
    {
        string root = PrivateRoot();
        string target = Path.Combine(Directory.CreateTempSubdirectory("metering-victim-").FullName, "passwd-copy");
        await File.WriteAllTextAsync(target, "secret\n");
        File.SetUnixFileMode(target, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
        string before = await StatAsync("%u:%g:%a", target);
        File.CreateSymbolicLink(Path.Combine(root, "pg.log"), target);

        var error = await Assert.ThrowsAsync<EmbeddedPostgresException>(() => EmbeddedPostgres.StartAsync(
            new EmbeddedPostgresOptions { DataDirectory = Path.Combine(root, "pg"), Durable = false }, NullLogger.Instance));

        Assert.Contains("symbolic link", error.Message, StringComparison.Ordinal);
        Assert.Equal(before, await StatAsync("%u:%g:%a", target));
        Assert.Equal("secret\n", await File.ReadAllTextAsync(target));
        Assert.False(Directory.Exists(Path.Combine(root, "pg")));
    }

    [Fact]
    public async Task Handing_a_path_to_the_server_user_refuses_a_link_and_leaves_its_target_alone()
    {
        string target = Directory.CreateTempSubdirectory("metering-victim-").FullName;
        string before = await StatAsync("%u:%g", target);
        string link = Path.Combine(PrivateRoot(), "socket");
        File.CreateSymbolicLink(link, target);

        var error = Assert.Throws<EmbeddedPostgresException>(() => EmbeddedPostgres.ChownNoFollow(link, "daemon", recursive: true));

        Assert.Contains("symbolic link", error.Message, StringComparison.Ordinal);
        Assert.Equal(before, await StatAsync("%u:%g", target));
    }

    [Fact]
    public void Server_binaries_are_found_in_the_first_folder_on_the_path_that_holds_all_three()
    {
        string root = Directory.CreateTempSubdirectory("metering-bin-").FullName;
        string partial = Binaries(Path.Combine(root, "partial"), "initdb", "pg_ctl");
        string complete = Binaries(Path.Combine(root, "complete"), "initdb", "pg_ctl", "postgres");
        string later = Binaries(Path.Combine(root, "later"), "initdb", "pg_ctl", "postgres");
        string noDebian = Path.Combine(root, "no-debian");

        Assert.Equal(complete, EmbeddedPostgres.FindBinaries(string.Join(':', partial, complete, later), noDebian));
        Assert.Equal(later, EmbeddedPostgres.FindBinaries(string.Join(':', partial, later), noDebian));
    }

    [Fact]
    public void Without_them_on_the_path_the_newest_complete_debian_version_is_taken()
    {
        string root = Directory.CreateTempSubdirectory("metering-bin-").FullName;
        string debian = Path.Combine(root, "postgresql");
        Binaries(Path.Combine(debian, "9", "bin"), "initdb", "pg_ctl", "postgres");
        string fifteen = Binaries(Path.Combine(debian, "15", "bin"), "initdb", "pg_ctl", "postgres");
        // Newer but without its server binary, as when only the client package is installed.
        Binaries(Path.Combine(debian, "16", "bin"), "initdb", "pg_ctl");

        Assert.Equal(fifteen, EmbeddedPostgres.FindBinaries(Path.Combine(root, "empty"), debian));
    }

    [Fact]
    public void A_folder_that_lacks_one_of_the_binaries_is_not_taken()
    {
        string root = Directory.CreateTempSubdirectory("metering-bin-").FullName;
        string noPostgres = Binaries(Path.Combine(root, "no-postgres"), "initdb", "pg_ctl");
        string noInitdb = Binaries(Path.Combine(root, "no-initdb"), "pg_ctl", "postgres");
        string debian = Path.Combine(root, "postgresql");
        Binaries(Path.Combine(debian, "15", "bin"), "initdb", "postgres");

        Assert.Null(EmbeddedPostgres.FindBinaries(string.Join(':', noPostgres, noInitdb), debian));
        Assert.Null(EmbeddedPostgres.FindBinaries(null, Path.Combine(root, "missing")));
    }

    /// <summary>A folder holding empty files of the given names; the lookup checks names only.</summary>
    private static string Binaries(string directory, params string[] names)
    {
        Directory.CreateDirectory(directory);
        foreach (string name in names)
        {
            File.WriteAllBytes(Path.Combine(directory, name), []);
        }

        return directory;
    }

    /// <summary>A fresh folder the server's user can walk into, as a data folder's parent.</summary>
    private static string PrivateRoot()
    {
        string root = Directory.CreateTempSubdirectory("metering-link-").FullName;
        File.SetUnixFileMode(root, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.OtherExecute);
        return root;
    }

    private static async Task<string> StatAsync(string format, string path)
    {
        var start = new ProcessStartInfo("stat") { RedirectStandardOutput = true, UseShellExecute = false, ArgumentList = { "-c", format, "--", path } };
        using Process process = Process.Start(start)!;
        string output = await process.StandardOutput.ReadToEndAsync();
        await process.WaitForExitAsync();
        Assert.Equal(0, process.ExitCode);
        return output.Trim();
    }
}
