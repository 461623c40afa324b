using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Metering.Engine.Storage;

/// <summary>Settings of the private PostgreSQL the engine starts when no connection string is given.</summary>
public sealed class EmbeddedPostgresOptions
{
    /// <summary>Where the cluster lives; created and initialised on first use.</summary>
    public string DataDirectory { get; set; } = Path.Combine(".metering", "pg");

    /// <summary>
    /// fsync and synchronous commit. On by default: an acknowledged record must survive a crash.
    /// Tests that start throw-away clusters turn it off.
    /// </summary>
    public bool Durable { get; set; } = true;

    /// <summary>The database the engine uses inside the cluster.</summary>
    public string Database { get; set; } = "metering";

    /// <summary>
    /// The unprivileged OS user that runs PostgreSQL when this process is root. When unset, an
    /// existing cluster keeps the user that owns it, and a new one runs as
    /// <see cref="EmbeddedPostgres.DefaultOsUser"/>, created as a system user if missing. Never
    /// root or nobody: a user that other services share could read or change the cluster.
    /// </summary>
    public string? OsUser { get; set; }

    /// <summary>The role the serving connection (<see cref="EmbeddedPostgres.RuntimeConnectionString"/>) logs in as.</summary>
    public string RuntimeRole { get; set; } = SchemaGuard.DefaultRuntimeRole;

    /// <summary>How long to wait for the server to start or stop.</summary>
    public TimeSpan StartTimeout { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>
    /// More server settings, as name=value, after the engine's own (a later setting wins): for
    /// example <c>shared_preload_libraries=citus</c> for a Citus node started by the tests.
    /// Values must not hold quotes or spaces.
    /// </summary>
    public IReadOnlyList<string> ServerSettings { get; set; } = [];
}

/// <summary>
/// A private PostgreSQL cluster run from the machine's installed server binaries: initialised in
/// a data folder, listening only on a Unix socket in a fresh private directory, run as a
/// dedicated unprivileged OS user when this process is root (PostgreSQL refuses root), and
/// stopped on dispose. A lock file keeps two engines off one data folder. As root it hands only
/// paths it created or checked to that user, never through a symbolic link (lchown), and keeps
/// the server log private (0600).
/// </summary>
public sealed partial class EmbeddedPostgres : IAsyncDisposable
{
    private const int Port = 5432;
    private const string Superuser = "metering";

    /// <summary>The system user a new cluster runs as when this process is root and no user is configured.</summary>
    public const string DefaultOsUser = "metering-pg";

    // Users that are shared with other services, or are root: PostgreSQL never runs as them.
    private static readonly string[] RefusedOsUsers = ["root", "nobody"];

    private const UnixFileMode PrivateFile = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    private readonly EmbeddedPostgresOptions _options;
    private readonly ILogger _logger;
    private readonly string _binDirectory;
    private readonly string _dataDirectory;
    private readonly string _socketDirectory;
    private readonly string? _runAs;
    private readonly string? _temporaryRoot;
    private FileStream? _lock;
    private bool _started;

    private EmbeddedPostgres(EmbeddedPostgresOptions options, ILogger logger, string binDirectory, string dataDirectory, string socketDirectory, string? runAs, string? temporaryRoot)
    {
        _temporaryRoot = temporaryRoot;
        _options = options;
        _logger = logger;
        _binDirectory = binDirectory;
        _dataDirectory = dataDirectory;
        _socketDirectory = socketDirectory;
        _runAs = runAs;
    }

    public string ConnectionString => new NpgsqlConnectionStringBuilder
    {
        Host = _socketDirectory,
        Port = Port,
        Username = Superuser,
        Database = _options.Database,
        MaxPoolSize = 64,
    }.ConnectionString;

    /// <summary>
    /// The same database, logged in as the runtime role that serving uses: it owns nothing and may
    /// not rewrite evidence. The role exists once the database has been migrated.
    /// </summary>
    public string RuntimeConnectionString => new NpgsqlConnectionStringBuilder(ConnectionString) { Username = _options.RuntimeRole }.ConnectionString;

    public string DataDirectory => _dataDirectory;

    public string SocketDirectory => _socketDirectory;

    public string BinDirectory => _binDirectory;

    /// <summary>Arguments for psql that reach this cluster's database.</summary>
    public IReadOnlyList<string> PsqlArguments => ["-h", _socketDirectory, "-p", Port.ToString(System.Globalization.CultureInfo.InvariantCulture), "-U", Superuser, "-d", _options.Database];

    /// <summary>Finds the binaries, initialises the cluster if needed, starts it and creates the database.</summary>
    public static async Task<EmbeddedPostgres> StartAsync(EmbeddedPostgresOptions options, ILogger logger, CancellationToken cancellationToken = default)
    {
        string binDirectory = FindBinaries()
            ?? throw new EmbeddedPostgresException(
                "No PostgreSQL server binaries found (initdb, pg_ctl and postgres on PATH or under /usr/lib/postgresql/*/bin). "
                + "Install them with: sudo apt-get install -y postgresql   (or set a connection string with --connection).");

        if (!SchemaGuard.IsValidRoleName(options.RuntimeRole))
        {
            throw new EmbeddedPostgresException($"Runtime role name '{options.RuntimeRole}' is not a plain SQL identifier.");
        }

        if (options.ServerSettings.FirstOrDefault(setting => !setting.Contains('=', StringComparison.Ordinal) || setting.Any(c => c is ' ' or '\'' or '"' or '\\')) is string badSetting)
        {
            throw new EmbeddedPostgresException($"Server setting '{badSetting}' is not name=value without spaces or quotes.");
        }

        if (options.OsUser is string configured && RefusedOsUsers.Contains(configured, StringComparer.Ordinal))
        {
            throw new EmbeddedPostgresException($"The embedded PostgreSQL will not run as {configured}: it needs an OS user of its own (by default {DefaultOsUser}).");
        }

        string dataDirectory = Path.GetFullPath(options.DataDirectory);
        string? runAs = null;
        string? temporaryRoot = null;
        if (IsRoot())
        {
            runAs = await ChooseOsUserAsync(options.OsUser, dataDirectory, cancellationToken);
            if (!await CanReachAsync(runAs, Path.GetDirectoryName(dataDirectory)!, cancellationToken))
            {
                // A private folder of our own, never a predictable one in a shared directory where
                // another user could plant a link first. It cannot be found again, so the cluster
                // in it lasts as long as this process.
                temporaryRoot = Directory.CreateTempSubdirectory("metering-pg-").FullName;
                File.SetUnixFileMode(temporaryRoot, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.OtherExecute);
                string fallback = Path.Combine(temporaryRoot, "pg");
                LogDataDirectoryMoved(logger, dataDirectory, runAs, fallback);
                dataDirectory = fallback;
            }
        }

        string socketDirectory = Directory.CreateTempSubdirectory("metering-pg-").FullName;
        var server = new EmbeddedPostgres(options, logger, binDirectory, dataDirectory, socketDirectory, runAs, temporaryRoot);
        try
        {
            await server.StartCoreAsync(cancellationToken);
        }
        catch
        {
            await server.DisposeAsync();
            throw;
        }

        return server;
    }

    private async Task StartCoreAsync(CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(_dataDirectory)!);
        string lockPath = _dataDirectory + ".lock";
        RefuseLink(lockPath);
        try
        {
            var lockOptions = new FileStreamOptions { Mode = FileMode.OpenOrCreate, Access = FileAccess.ReadWrite, Share = FileShare.None };
            if (!OperatingSystem.IsWindows())
            {
                lockOptions.UnixCreateMode = PrivateFile;
            }

            _lock = new FileStream(lockPath, lockOptions);
        }
        catch (IOException)
        {
            throw new EmbeddedPostgresException($"The data folder {_dataDirectory} is in use by another metering process (lock file {lockPath}).");
        }

        // Only the socket folder (ours, fresh), the data folder and the log are handed to the
        // server's user; the parent stays with whoever made it.
        Chown(_socketDirectory, recursive: false);

        string logFile = _dataDirectory + ".log";
        CreatePrivateLog(logFile);
        Chown(logFile, recursive: false);

        RefuseLink(_dataDirectory);
        if (!File.Exists(Path.Combine(_dataDirectory, "PG_VERSION")))
        {
            LogInitialising(_logger, _dataDirectory, _binDirectory);
            Directory.CreateDirectory(_dataDirectory);
            Chown(_dataDirectory, recursive: true);
            await RunAsync("initdb", ["-D", _dataDirectory, "-U", Superuser, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-instructions", .. (_options.Durable ? Array.Empty<string>() : ["--no-sync"])], cancellationToken);
        }

        // We hold the lock, so a server still running on this folder was left by a process that
        // died without stopping it. Stop it before starting ours on a fresh socket directory.
        if (File.Exists(Path.Combine(_dataDirectory, "postmaster.pid")))
        {
            int status = await RunAsync("pg_ctl", ["status", "-D", _dataDirectory], cancellationToken, allowFailure: true);
            if (status == 0)
            {
                LogStoppingOrphan(_logger, _dataDirectory);
                await RunAsync("pg_ctl", ["stop", "-D", _dataDirectory, "-m", "fast", "-w"], cancellationToken);
            }
        }

        string durability = _options.Durable ? "on" : "off";
        string serverOptions = string.Join(' ',
            "-c listen_addresses=''",
            $"-c unix_socket_directories='{_socketDirectory}'",
            "-c unix_socket_permissions=0700",
            $"-p {Port}",
            $"-c fsync={durability}",
            $"-c synchronous_commit={durability}",
            $"-c full_page_writes={durability}",
            "-c max_connections=100",
            "-c shared_buffers=256MB",
            "-c max_wal_size=4GB",
            "-c wal_compression=on",
            "-c TimeZone=UTC",
            string.Join(' ', _options.ServerSettings.Select(setting => "-c " + setting)));
        LogStarting(_logger, _dataDirectory, _socketDirectory);
        await RunAsync("pg_ctl", ["start", "-D", _dataDirectory, "-w", "-t", ((int)_options.StartTimeout.TotalSeconds).ToString(System.Globalization.CultureInfo.InvariantCulture), "-l", logFile, "-o", serverOptions], cancellationToken);
        _started = true;

        var admin = new NpgsqlConnectionStringBuilder(ConnectionString) { Database = "postgres", Pooling = false };
        await using var connection = new NpgsqlConnection(admin.ConnectionString);
        await connection.OpenAsync(cancellationToken);
        await using var exists = new NpgsqlCommand("SELECT 1 FROM pg_database WHERE datname = $1", connection) { Parameters = { new() { Value = _options.Database } } };
        if (await exists.ExecuteScalarAsync(cancellationToken) is null)
        {
            await using var create = new NpgsqlCommand($"CREATE DATABASE \"{_options.Database}\"", connection);
            await create.ExecuteNonQueryAsync(cancellationToken);
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_started)
        {
            _started = false;
            NpgsqlConnection.ClearAllPools();
            LogStopping(_logger, _dataDirectory);
            await RunAsync("pg_ctl", ["stop", "-D", _dataDirectory, "-m", "fast", "-w"], CancellationToken.None, allowFailure: true);
        }

        try
        {
            Directory.Delete(_socketDirectory, recursive: true);
        }
        catch (IOException)
        {
            // The socket directory is private and temporary; a leftover one is harmless.
        }

        if (_lock is not null)
        {
            await _lock.DisposeAsync();
            _lock = null;
        }

        if (_temporaryRoot is not null)
        {
            try
            {
                Directory.Delete(_temporaryRoot, recursive: true);
            }
            catch (IOException)
            {
                // The folder is private; a leftover one is found by nobody and harms nothing.
            }
        }
    }

    /// <summary>Restarts the server with its options (fast shutdown: open sessions are cut), as an operator would.</summary>
    public async Task RestartAsync(CancellationToken cancellationToken = default)
    {
        LogStopping(_logger, _dataDirectory);
        await RunAsync("pg_ctl", ["restart", "-D", _dataDirectory, "-m", "fast", "-w", "-t", ((int)_options.StartTimeout.TotalSeconds).ToString(System.Globalization.CultureInfo.InvariantCulture), "-l", _dataDirectory + ".log"], cancellationToken);
    }

    private async Task<int> RunAsync(string tool, string[] arguments, CancellationToken cancellationToken, bool allowFailure = false)
    {
        var start = new ProcessStartInfo
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        string executable = Path.Combine(_binDirectory, tool);
        if (_runAs is null)
        {
            start.FileName = executable;
        }
        else
        {
            start.FileName = "runuser";
            start.ArgumentList.Add("-u");
            start.ArgumentList.Add(_runAs);
            start.ArgumentList.Add("--");
            start.ArgumentList.Add(executable);
        }

        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using Process process = Process.Start(start) ?? throw new EmbeddedPostgresException($"Could not start {tool}.");
        Task<string> output = process.StandardOutput.ReadToEndAsync(cancellationToken);
        Task<string> error = process.StandardError.ReadToEndAsync(cancellationToken);
        await process.WaitForExitAsync(cancellationToken);
        if (process.ExitCode != 0 && !allowFailure)
        {
            string log = File.Exists(_dataDirectory + ".log") ? TailOf(_dataDirectory + ".log") : "";
            throw new EmbeddedPostgresException($"{tool} {string.Join(' ', arguments)} failed with exit code {process.ExitCode}:\n{await output}{await error}{log}");
        }

        return process.ExitCode;
    }

    private static string TailOf(string path)
    {
        try
        {
            string[] lines = File.ReadAllLines(path);
            return "\nServer log:\n" + string.Join('\n', lines.TakeLast(15));
        }
        catch (IOException)
        {
            return "";
        }
    }

    /// <summary>
    /// The server log: created 0600, or made 0600 if an earlier run left it; a link in its place
    /// is refused, so that nobody can make the server write its log somewhere else.
    /// </summary>
    internal static void CreatePrivateLog(string path)
    {
        RefuseLink(path);
        if (OperatingSystem.IsWindows())
        {
            File.AppendAllText(path, "");
            return;
        }

        using (new FileStream(path, new FileStreamOptions { Mode = FileMode.OpenOrCreate, Access = FileAccess.Write, UnixCreateMode = PrivateFile }))
        {
        }

        File.SetUnixFileMode(path, PrivateFile);
    }

    /// <summary>Refuses a path that is a symbolic link: chown, mkdir and open would follow it to wherever it points.</summary>
    internal static void RefuseLink(string path)
    {
        // FileInfo reads the entry itself (lstat), whether it is a file, a folder or a dangling link.
        if (new FileInfo(path).LinkTarget is not null)
        {
            throw new EmbeddedPostgresException($"{path} is a symbolic link; the embedded PostgreSQL refuses to follow links it would create, open or hand to another user. Remove it.");
        }
    }

    private void Chown(string path, bool recursive)
    {
        if (_runAs is null)
        {
            return;
        }

        ChownNoFollow(path, _runAs, recursive);
    }

    /// <summary>
    /// Gives <paramref name="path"/> (and, recursively, what is in it) to <paramref name="user"/>
    /// without following links: each path is refused if it is a link, and changed with lchown,
    /// so that a link swapped in after the check is changed itself, not its target.
    /// </summary>
    internal static void ChownNoFollow(string path, string user, bool recursive)
    {
        var (uid, gid) = IdsOf(user) ?? throw new EmbeddedPostgresException($"OS user {user} does not exist.");
        RefuseLink(path);
        if (NativeMethods.lchown(path, uid, gid) != 0)
        {
            int errno = System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
            throw new EmbeddedPostgresException($"lchown {user} {path} failed (errno {errno}); PostgreSQL needs to own its folders.");
        }

        if (recursive && Directory.Exists(path))
        {
            foreach (string entry in Directory.EnumerateFileSystemEntries(path))
            {
                ChownNoFollow(entry, user, recursive: true);
            }
        }
    }

    private static (uint Uid, uint Gid)? IdsOf(string user)
    {
        foreach (string line in File.ReadLines("/etc/passwd"))
        {
            string[] fields = line.Split(':');
            if (fields.Length >= 4 && fields[0] == user)
            {
                return (uint.Parse(fields[2], System.Globalization.CultureInfo.InvariantCulture), uint.Parse(fields[3], System.Globalization.CultureInfo.InvariantCulture));
            }
        }

        return null;
    }

    /// <summary>
    /// The configured user; else the owner of an existing cluster; else <see cref="DefaultOsUser"/>,
    /// created as a system user without a home or a login shell if it does not exist.
    /// </summary>
    private static async Task<string> ChooseOsUserAsync(string? configured, string dataDirectory, CancellationToken cancellationToken)
    {
        string? user = configured;
        if (user is null && File.Exists(Path.Combine(dataDirectory, "PG_VERSION")))
        {
            user = await OwnerOfAsync(dataDirectory, cancellationToken);
        }

        user ??= DefaultOsUser;
        if (RefusedOsUsers.Contains(user, StringComparer.Ordinal))
        {
            throw new EmbeddedPostgresException($"The embedded PostgreSQL will not run as {user}: it needs an OS user of its own (by default {DefaultOsUser}).");
        }

        if (!UserExists(user))
        {
            if (user != DefaultOsUser)
            {
                throw new EmbeddedPostgresException($"OS user {user} does not exist.");
            }

            var start = new ProcessStartInfo("useradd") { UseShellExecute = false, RedirectStandardError = true, ArgumentList = { "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user } };
            using Process process = Process.Start(start) ?? throw new EmbeddedPostgresException("Could not start useradd.");
            string error = await process.StandardError.ReadToEndAsync(cancellationToken);
            await process.WaitForExitAsync(cancellationToken);
            if (process.ExitCode != 0 && !UserExists(user))
            {
                throw new EmbeddedPostgresException($"useradd --system {user} failed: {error.Trim()}");
            }
        }

        return user;
    }

    private static async Task<string?> OwnerOfAsync(string path, CancellationToken cancellationToken)
    {
        var start = new ProcessStartInfo("stat") { UseShellExecute = false, RedirectStandardOutput = true, ArgumentList = { "-c", "%U", "--", path } };
        using Process process = Process.Start(start) ?? throw new EmbeddedPostgresException("Could not start stat.");
        string owner = (await process.StandardOutput.ReadToEndAsync(cancellationToken)).Trim();
        await process.WaitForExitAsync(cancellationToken);
        return process.ExitCode == 0 && owner.Length > 0 && owner != "UNKNOWN" ? owner : null;
    }

    internal static string? FindBinaries() => FindBinaries(Environment.GetEnvironmentVariable("PATH"), "/usr/lib/postgresql");

    /// <summary>
    /// The first folder of <paramref name="searchPath"/> (a PATH value) that holds initdb, pg_ctl
    /// and postgres; else the bin folder of the newest version under <paramref name="debianRoot"/>
    /// (Debian's /usr/lib/postgresql/VERSION/bin) that holds all three; else null.
    /// </summary>
    internal static string? FindBinaries(string? searchPath, string debianRoot)
    {
        static bool Complete(string directory) =>
            File.Exists(Path.Combine(directory, "initdb"))
            && File.Exists(Path.Combine(directory, "pg_ctl"))
            && File.Exists(Path.Combine(directory, "postgres"));

        foreach (string directory in (searchPath ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            if (Complete(directory))
            {
                return directory;
            }
        }

        if (!Directory.Exists(debianRoot))
        {
            return null;
        }

        return Directory.GetDirectories(debianRoot)
            .Select(version => (Version: int.TryParse(Path.GetFileName(version), out int v) ? v : 0, Bin: Path.Combine(version, "bin")))
            .Where(candidate => Complete(candidate.Bin))
            .OrderByDescending(candidate => candidate.Version)
            .Select(candidate => candidate.Bin)
            .FirstOrDefault();
    }

    [System.Runtime.Versioning.SupportedOSPlatformGuard("linux")]
    private static bool IsRoot() => OperatingSystem.IsLinux() && Environment.IsPrivilegedProcess;

    private static bool UserExists(string name) =>
        File.ReadLines("/etc/passwd").Any(line => line.StartsWith(name + ":", StringComparison.Ordinal));

    private static async Task<bool> CanReachAsync(string user, string directory, CancellationToken cancellationToken)
    {
        // The unprivileged user must be able to walk down to the data folder's parent.
        string? existing = directory;
        while (existing is not null && !Directory.Exists(existing))
        {
            existing = Path.GetDirectoryName(existing);
        }

        if (existing is null)
        {
            return false;
        }

        var start = new ProcessStartInfo("runuser") { UseShellExecute = false, ArgumentList = { "-u", user, "--", "test", "-x", existing } };
        using Process process = Process.Start(start)!;
        await process.WaitForExitAsync(cancellationToken);
        return process.ExitCode == 0;
    }

    [LoggerMessage(EventId = 1101, Level = LogLevel.Information, Message = "Initialising a PostgreSQL cluster in {DataDirectory} with {BinDirectory}")]
    private static partial void LogInitialising(ILogger logger, string dataDirectory, string binDirectory);

    [LoggerMessage(EventId = 1102, Level = LogLevel.Information, Message = "Starting PostgreSQL on {DataDirectory}, socket in {SocketDirectory}")]
    private static partial void LogStarting(ILogger logger, string dataDirectory, string socketDirectory);

    [LoggerMessage(EventId = 1103, Level = LogLevel.Information, Message = "Stopping PostgreSQL on {DataDirectory}")]
    private static partial void LogStopping(ILogger logger, string dataDirectory);

    [LoggerMessage(EventId = 1104, Level = LogLevel.Warning, Message = "Stopping a PostgreSQL left running on {DataDirectory} by an earlier process")]
    private static partial void LogStoppingOrphan(ILogger logger, string dataDirectory);

    [LoggerMessage(EventId = 1105, Level = LogLevel.Warning, Message = "User {User} cannot reach {DataDirectory}; using the private folder {Fallback} instead, whose cluster is deleted when this process ends. Pass a data folder that user can reach to keep it.")]
    private static partial void LogDataDirectoryMoved(ILogger logger, string dataDirectory, string user, string fallback);
}

/// <summary>The embedded PostgreSQL could not be found, initialised or started.</summary>
public sealed class EmbeddedPostgresException(string message) : Exception(message);

internal static class NativeMethods
{
    // .NET has no managed lchown: File.SetUnixFileMode and chown(1) without -h follow links.
    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    internal static extern int lchown([System.Runtime.InteropServices.MarshalAs(System.Runtime.InteropServices.UnmanagedType.LPUTF8Str)] string path, uint owner, uint group);
}
