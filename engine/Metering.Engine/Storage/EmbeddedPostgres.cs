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

    /// <summary>The unprivileged OS user that runs PostgreSQL when this process is root.</summary>
    public string? OsUser { get; set; }

    /// <summary>How long to wait for the server to start or stop.</summary>
    public TimeSpan StartTimeout { get; set; } = TimeSpan.FromSeconds(60);
}

/// <summary>
/// A private PostgreSQL cluster run from the machine's installed server binaries: initialised in
/// a data folder, listening only on a Unix socket in a fresh private directory, run as an
/// unprivileged OS user when this process is root (PostgreSQL refuses root), and stopped on
/// dispose. A lock file keeps two engines off one data folder.
/// </summary>
public sealed partial class EmbeddedPostgres : IAsyncDisposable
{
    private const int Port = 5432;
    private const string Superuser = "metering";

    private readonly EmbeddedPostgresOptions _options;
    private readonly ILogger _logger;
    private readonly string _binDirectory;
    private readonly string _dataDirectory;
    private readonly string _socketDirectory;
    private readonly string? _runAs;
    private FileStream? _lock;
    private bool _started;

    private EmbeddedPostgres(EmbeddedPostgresOptions options, ILogger logger, string binDirectory, string dataDirectory, string socketDirectory, string? runAs)
    {
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

        string dataDirectory = Path.GetFullPath(options.DataDirectory);
        string? runAs = null;
        if (IsRoot())
        {
            runAs = options.OsUser ?? (UserExists("postgres") ? "postgres" : "nobody");
            if (!await CanReachAsync(runAs, Path.GetDirectoryName(dataDirectory)!, cancellationToken))
            {
                string fallback = Path.Combine("/var/tmp", "metering-pg-" + ShortHash(dataDirectory), "pg");
                LogDataDirectoryMoved(logger, dataDirectory, runAs, fallback);
                dataDirectory = fallback;
            }
        }

        string socketDirectory = Directory.CreateTempSubdirectory("metering-pg-").FullName;
        var server = new EmbeddedPostgres(options, logger, binDirectory, dataDirectory, socketDirectory, runAs);
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
        try
        {
            _lock = new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException)
        {
            throw new EmbeddedPostgresException($"The data folder {_dataDirectory} is in use by another metering process (lock file {lockPath}).");
        }

        Chown(Path.GetDirectoryName(_dataDirectory)!, recursive: false);
        Chown(_socketDirectory, recursive: false);

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
            "-c TimeZone=UTC");
        string logFile = _dataDirectory + ".log";
        if (_runAs is not null && !File.Exists(logFile))
        {
            await File.WriteAllTextAsync(logFile, "", cancellationToken);
            Chown(logFile, recursive: false);
        }

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

    private void Chown(string path, bool recursive)
    {
        if (_runAs is null)
        {
            return;
        }

        var start = new ProcessStartInfo("chown") { UseShellExecute = false };
        if (recursive)
        {
            start.ArgumentList.Add("-R");
        }

        start.ArgumentList.Add(_runAs + ":");
        start.ArgumentList.Add(path);
        using Process process = Process.Start(start)!;
        process.WaitForExit();
        if (process.ExitCode != 0)
        {
            throw new EmbeddedPostgresException($"chown {_runAs} {path} failed; PostgreSQL needs to own its folders.");
        }
    }

    internal static string? FindBinaries()
    {
        static bool Complete(string directory) =>
            File.Exists(Path.Combine(directory, "initdb"))
            && File.Exists(Path.Combine(directory, "pg_ctl"))
            && File.Exists(Path.Combine(directory, "postgres"));

        foreach (string directory in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            if (Complete(directory))
            {
                return directory;
            }
        }

        const string debianRoot = "/usr/lib/postgresql";
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

    private static string ShortHash(string text) =>
        Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(text)))[..12];

    [LoggerMessage(EventId = 1101, Level = LogLevel.Information, Message = "Initialising a PostgreSQL cluster in {DataDirectory} with {BinDirectory}")]
    private static partial void LogInitialising(ILogger logger, string dataDirectory, string binDirectory);

    [LoggerMessage(EventId = 1102, Level = LogLevel.Information, Message = "Starting PostgreSQL on {DataDirectory}, socket in {SocketDirectory}")]
    private static partial void LogStarting(ILogger logger, string dataDirectory, string socketDirectory);

    [LoggerMessage(EventId = 1103, Level = LogLevel.Information, Message = "Stopping PostgreSQL on {DataDirectory}")]
    private static partial void LogStopping(ILogger logger, string dataDirectory);

    [LoggerMessage(EventId = 1104, Level = LogLevel.Warning, Message = "Stopping a PostgreSQL left running on {DataDirectory} by an earlier process")]
    private static partial void LogStoppingOrphan(ILogger logger, string dataDirectory);

    [LoggerMessage(EventId = 1105, Level = LogLevel.Warning, Message = "User {User} cannot reach {DataDirectory}; using {Fallback} instead")]
    private static partial void LogDataDirectoryMoved(ILogger logger, string dataDirectory, string user, string fallback);
}

/// <summary>The embedded PostgreSQL could not be found, initialised or started.</summary>
public sealed class EmbeddedPostgresException(string message) : Exception(message);
