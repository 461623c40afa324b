using System.Diagnostics;
using Npgsql;

namespace Metering.Cli.Tests;

/// <summary>
/// A pg_auto_failover formation on loopback: a monitor and two PostgreSQL 15 data nodes, run by
/// Debian's pg_autoctl as the unprivileged OS user the embedded PostgreSQL uses (tests run as
/// root, which PostgreSQL refuses). Each keeper runs in a session of its own, so that killing a
/// node SIGKILLs its keeper, its postmaster and every backend at once, as a machine that dies.
/// The monitor's timeouts are tuned down from pg_auto_failover's defaults (see
/// <see cref="MonitorSettings"/>), which took about 52 s from a killed primary to a promotion.
/// </summary>
internal sealed class AutoFailoverCluster : IAsyncDisposable
{
    public const string OsUser = "metering-pg";

    public const string Database = "metering";

    private const string PgBin = "/usr/lib/postgresql/15/bin";

    /// <summary>
    /// The monitor's health checks every second, a node unhealthy after 3 s without answering, and
    /// a primary presumed demoted after 5 s; each keeper gives up its primary role after 3 s
    /// without the monitor (timeout.network_partition_timeout), inside the monitor's 5 s.
    /// </summary>
    public static readonly string[] MonitorSettings =
    [
        "pgautofailover.health_check_period = 1000", "pgautofailover.health_check_timeout = 1000", "pgautofailover.health_check_max_retries = 1",
        "pgautofailover.health_check_retry_delay = 500", "pgautofailover.node_considered_unhealthy_timeout = 3000", "pgautofailover.primary_demote_timeout = 5000",
    ];

    private readonly string _root;
    private readonly int[] _ports;
    private readonly Dictionary<string, int> _sessions = [];

    private AutoFailoverCluster(string root, int[] ports)
    {
        _root = root;
        _ports = ports;
    }

    /// <summary>The data nodes' ports: node1 starts as the primary, node2 as its synchronous standby.</summary>
    public int PortOf(int node) => _ports[node];

    /// <summary>The database on one node, as the cluster's superuser (the OS user's name).</summary>
    public string OwnerConnection(int node) => new NpgsqlConnectionStringBuilder
    {
        Host = "127.0.0.1", Port = _ports[node], Username = OsUser, Database = Database, Pooling = false,
    }.ConnectionString;

    /// <summary>
    /// What `metering serve` is given: both data nodes, the primary wanted, and a host's state
    /// looked at again after a second, so that a standby just promoted is found at once.
    /// </summary>
    public string ServingConnection(string role) =>
        $"Host=127.0.0.1:{_ports[1]},127.0.0.1:{_ports[2]};Username={role};Database={Database};Target Session Attributes=primary;Host Recheck Seconds=1;Timeout=3";

    public static async Task<AutoFailoverCluster> StartAsync()
    {
        if (!File.Exists("/usr/bin/pg_autoctl"))
        {
            throw new InvalidOperationException("pg_autoctl is missing: run .ci/ensure-pg-auto-failover (Debian's postgresql-15-auto-failover and pg-auto-failover-cli)");
        }

        string root = Path.Combine(Path.GetTempPath(), $"metering-failover-{Guid.NewGuid():N}");
        Directory.CreateDirectory(root);
        await RunAsync("bash", "-c", $"id {OsUser} >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin {OsUser}; chown {OsUser} {root}");
        int[] ports = [Metering.Server.Fixtures.ServerProcess.FreePort(), Metering.Server.Fixtures.ServerProcess.FreePort(), Metering.Server.Fixtures.ServerProcess.FreePort()];
        var cluster = new AutoFailoverCluster(root, ports);
        try
        {
            await cluster.AsUserAsync($"""
                initdb -D {root}/monitor --auth=trust --no-sync -E UTF8 --locale=C >/dev/null
                echo "unix_socket_directories = '{root}/run'" >> {root}/monitor/postgresql.conf
                pg_autoctl create monitor --pgdata {root}/monitor --pgport {ports[0]} --hostname 127.0.0.1 --listen 127.0.0.1 --auth trust --no-ssl > {root}/monitor-create.log 2>&1
                """);
            await cluster.RunNodeAsync("monitor");
            await WaitAsync(() => AnswersAsync(ports[0], "pg_auto_failover"), TimeSpan.FromSeconds(60), "the monitor did not start");
            await cluster.AsUserAsync(string.Join('\n', MonitorSettings.Select(s => $"psql -h 127.0.0.1 -p {ports[0]} -d pg_auto_failover -qc \"ALTER SYSTEM SET {s}\"")
                .Append($"psql -h 127.0.0.1 -p {ports[0]} -d pg_auto_failover -qc 'SELECT pg_reload_conf()' >/dev/null")));

            string monitor = $"postgres://autoctl_node@127.0.0.1:{ports[0]}/pg_auto_failover?sslmode=disable";
            await cluster.AsUserAsync($"""
                initdb -D {root}/node1 --auth=trust --no-sync -E UTF8 --locale=C >/dev/null
                echo "unix_socket_directories = '{root}/run'" >> {root}/node1/postgresql.conf
                """);
            for (int node = 1; node <= 2; node++)
            {
                await cluster.AsUserAsync($"""
                    pg_autoctl create postgres --pgdata {root}/node{node} --pgport {ports[node]} --hostname 127.0.0.1 --listen 127.0.0.1 --name node{node} --monitor '{monitor}' --auth trust --no-ssl --dbname {Database} > {root}/node{node}-create.log 2>&1
                    pg_autoctl config set --pgdata {root}/node{node} timeout.network_partition_timeout 3 >/dev/null
                    """);
                await cluster.RunNodeAsync($"node{node}");
            }

            await WaitAsync(async () => await cluster.SynchronousStandbysAsync(1) == 1, TimeSpan.FromSeconds(120), "node2 did not become node1's synchronous standby");
            return cluster;
        }
        catch
        {
            await cluster.DisposeAsync();
            throw;
        }
    }

    /// <summary>SIGKILL to the node's keeper, postmaster and backends together: the machine is gone.</summary>
    public async Task KillAsync(string node)
    {
        await RunAsync("kill", "-KILL", "--", $"-{_sessions[node]}");
        _sessions.Remove(node);
    }

    /// <summary>Starts a node's keeper again, as a machine coming back does; pg_autoctl rejoins it as a standby.</summary>
    public Task RestartAsync(string node) => RunNodeAsync(node);

    /// <summary>Whether the node answers as a primary (not in recovery).</summary>
    public async Task<bool> IsPrimaryAsync(int node)
    {
        try
        {
            await using var connection = new NpgsqlConnection(OwnerConnection(node) + ";Timeout=2");
            await connection.OpenAsync();
            await using var command = new NpgsqlCommand("SELECT NOT pg_is_in_recovery()", connection);
            return (bool)(await command.ExecuteScalarAsync())!;
        }
        catch (NpgsqlException)
        {
            return false;
        }
    }

    public async Task<long> SynchronousStandbysAsync(int node)
    {
        try
        {
            await using var connection = new NpgsqlConnection(OwnerConnection(node) + ";Timeout=2");
            await connection.OpenAsync();
            await using var command = new NpgsqlCommand("SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')", connection);
            return (long)(await command.ExecuteScalarAsync())!;
        }
        catch (NpgsqlException)
        {
            return -1;
        }
    }

    /// <summary>The keepers' and the monitor's logs, for a failure's message.</summary>
    public string Logs() => string.Join('\n', Directory.GetFiles(_root, "*.log").Select(f => $"== {f}\n" + string.Join('\n', File.ReadLines(f).TakeLast(30))));

    private async Task RunNodeAsync(string node)
    {
        string pid = await AsUserAsync($"setsid pg_autoctl run --pgdata {_root}/{node} >> {_root}/{node}.log 2>&1 < /dev/null & echo $!");
        _sessions[node] = int.Parse(pid.Trim(), System.Globalization.CultureInfo.InvariantCulture);
    }

    private static async Task<bool> AnswersAsync(int port, string database)
    {
        try
        {
            await using var connection = new NpgsqlConnection($"Host=127.0.0.1;Port={port};Username={OsUser};Database={database};Pooling=false;Timeout=2");
            await connection.OpenAsync();
            return true;
        }
        catch (NpgsqlException)
        {
            return false;
        }
    }

    public static async Task WaitAsync(Func<Task<bool>> condition, TimeSpan within, string failure)
    {
        var clock = Stopwatch.StartNew();
        while (!await condition())
        {
            if (clock.Elapsed > within)
            {
                throw new TimeoutException($"{failure} within {within.TotalSeconds:0} s");
            }

            await Task.Delay(200);
        }
    }

    /// <summary>Runs a bash script as <see cref="OsUser"/> with PostgreSQL's binaries first on PATH and the keepers' state under the cluster's folder.</summary>
    private Task<string> AsUserAsync(string script) => RunAsync("runuser", "-u", OsUser, "--", "env", "-i",
        $"PATH={PgBin}:/usr/bin:/bin", $"HOME={_root}", $"XDG_CONFIG_HOME={_root}/config", $"XDG_DATA_HOME={_root}/data", $"XDG_RUNTIME_DIR={_root}/run", $"PGHOST={_root}/run",
        "bash", "-c", $"set -e; mkdir -p {_root}/run; cd {_root}\n{script}");

    private static async Task<string> RunAsync(string program, params string[] arguments)
    {
        var start = new ProcessStartInfo(program) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(180));
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"{program} {string.Join(' ', arguments)} exited {process.ExitCode}: {await error}");
        }

        return await output;
    }

    public async ValueTask DisposeAsync()
    {
        foreach (int session in _sessions.Values)
        {
            try
            {
                await RunAsync("kill", "-KILL", "--", $"-{session}");
            }
            catch (InvalidOperationException)
            {
                // The session ended already.
            }
        }

        _sessions.Clear();
        try
        {
            Directory.Delete(_root, recursive: true);
        }
        catch (IOException)
        {
            // A postgres that had not yet exited may still hold a file; the folder is in /tmp.
        }
    }
}
