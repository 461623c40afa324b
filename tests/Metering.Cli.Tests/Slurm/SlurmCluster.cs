using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Runtime.Versioning;
using System.Security.Cryptography;
using Metering.Server.Fixtures;

namespace Metering.Cli.Tests.Slurm;

/// <summary>
/// A real single-node Slurm 22.05 (Debian's slurm-wlm, slurmdbd, mariadb-server and munge, which
/// .ci/ensure-slurm installs) run as this test run's own processes in a temporary folder: munged
/// with its own key and socket, MariaDB with its own data folder, slurmdbd, slurmctld and one
/// slurmd, all on loopback ports found free. The node has a fake typed GPU GRES (four `a100` and
/// two `h100`, each naming a character device Slurm never opens, since task/none constrains
/// nothing), and no cgroups: proctrack/linuxproc and task/none work without systemd as PID 1.
/// Clients run with SLURM_CONF pointing at the generated slurm.conf and TZ at Asia/Shanghai, so
/// sacct prints the local times the mapping's +480 offset reads.
/// </summary>
[SupportedOSPlatform("linux")]
internal sealed class SlurmCluster : IAsyncDisposable
{
    public const string Account = "lab-vision";
    public const string OtherAccount = "lab-speech";
    public const string Partition = "gpu";
    public const string Zone = "Asia/Shanghai";

    private const string NodeName = "node1";
    private static readonly TimeSpan ReadyMax = TimeSpan.FromSeconds(60);

    private readonly string _folder;
    private readonly List<Process> _daemons = [];

    private SlurmCluster(string folder) => _folder = folder;

    /// <summary>The generated slurm.conf, for SLURM_CONF.</summary>
    public string ConfigPath => Path.Combine(_folder, "slurm.conf");

    public string Folder => _folder;

    /// <summary>The environment every Slurm client of this cluster runs with.</summary>
    public IReadOnlyDictionary<string, string> Environment => new Dictionary<string, string>
    {
        ["SLURM_CONF"] = ConfigPath,
        ["TZ"] = Zone,
    };

    /// <summary>Starts the daemons and waits until sinfo shows the node idle and sacctmgr knows the accounts.</summary>
    public static async Task<SlurmCluster> StartAsync()
    {
        string? missing = FindMissing();
        if (missing is not null)
        {
            throw new InvalidOperationException($"{missing}: run .ci/ensure-slurm (Debian's slurm-wlm, slurmdbd, mariadb-server and munge)");
        }

        string folder = Directory.CreateTempSubdirectory("metering-slurm-").FullName;
        var cluster = new SlurmCluster(folder);
        try
        {
            await cluster.StartDaemonsAsync();
            return cluster;
        }
        catch (Exception e)
        {
            string logs = cluster.LogTails();
            await cluster.DisposeAsync();
            throw new InvalidOperationException($"the Slurm cluster did not start: {e.Message}\n{logs}", e);
        }
    }

    private static string? FindMissing()
    {
        foreach (string tool in (string[])["/usr/sbin/munged", "/usr/sbin/slurmdbd", "/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/sacct", "/usr/bin/sbatch", "/usr/bin/mariadb-install-db", "/usr/sbin/mariadbd"])
        {
            if (!File.Exists(tool))
            {
                return $"{tool} is missing";
            }
        }

        return null;
    }

    private async Task StartDaemonsAsync()
    {
        bool root = System.Environment.UserName == "root";
        string user = System.Environment.UserName;
        string munge = Sub("munge");
        string database = Sub("db");
        string logs = Sub("log");
        Sub("state");
        Sub("spool");
        int[] ports = FreePorts(4);
        (int databasePort, int dbdPort, int controllerPort, int nodePort) = (ports[0], ports[1], ports[2], ports[3]);
        string socket = Path.Combine(munge, "munge.sock");

        // munged refuses a key readable by others and a socket folder writable by them.
        File.SetUnixFileMode(munge, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute);
        string key = Path.Combine(munge, "munge.key");
        await File.WriteAllBytesAsync(key, RandomNumberGenerator.GetBytes(1024));
        File.SetUnixFileMode(key, UnixFileMode.UserRead);
        Spawn("/usr/sbin/munged", "--foreground", "--force", $"--socket={socket}", $"--key-file={key}",
            $"--pid-file={Path.Combine(munge, "munged.pid")}", $"--log-file={Path.Combine(logs, "munged.log")}", $"--seed-file={Path.Combine(munge, "seed")}");

        string[] install = ["--no-defaults", $"--datadir={database}", "--skip-test-db", "--auth-root-authentication-method=socket", .. root ? (string[])["--user=root"] : []];
        await RunToEndAsync("/usr/bin/mariadb-install-db", install);
        string init = Path.Combine(_folder, "init.sql");
        await File.WriteAllTextAsync(init, """
            CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm-test';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
            """);
        Spawn("/usr/sbin/mariadbd", ["--no-defaults", $"--datadir={database}", $"--socket={Path.Combine(_folder, "mysql.sock")}",
            $"--port={databasePort}", "--bind-address=127.0.0.1", "--skip-name-resolve", $"--init-file={init}", "--skip-log-bin",
            "--innodb-buffer-pool-size=16M", $"--log-error={Path.Combine(logs, "mariadb.log")}", $"--pid-file={Path.Combine(_folder, "mariadb.pid")}",
            .. root ? (string[])["--user=root"] : []]);
        await WaitForPortAsync(databasePort, "MariaDB");

        string dbdConfig = Path.Combine(_folder, "slurmdbd.conf");
        await File.WriteAllTextAsync(dbdConfig, $"""
            AuthType=auth/munge
            AuthInfo=socket={socket}
            DbdHost=localhost
            DbdAddr=127.0.0.1
            DbdPort={dbdPort}
            SlurmUser={user}
            LogFile={Path.Combine(logs, "slurmdbd.log")}
            PidFile={Path.Combine(_folder, "slurmdbd.pid")}
            StorageType=accounting_storage/mysql
            StorageHost=127.0.0.1
            StoragePort={databasePort}
            StorageUser=slurm
            StoragePass=slurm-test
            StorageLoc=slurm_acct_db

            """);
        File.SetUnixFileMode(dbdConfig, UnixFileMode.UserRead | UnixFileMode.UserWrite);

        // AccountingStoragePass names the munge socket for the connection to slurmdbd: AuthInfo
        // covers only the controller and node. MinJobAge and the short timeouts keep a test's
        // wait for a finished job near a second.
        await File.WriteAllTextAsync(ConfigPath, $"""
            ClusterName=metering
            SlurmctldHost=localhost(127.0.0.1)
            SlurmctldPort={controllerPort}
            SlurmdPort={nodePort}
            SlurmUser={user}
            SlurmdUser={user}
            AuthType=auth/munge
            AuthInfo=socket={socket}
            CredType=cred/munge
            StateSaveLocation={Path.Combine(_folder, "state")}
            SlurmdSpoolDir={Path.Combine(_folder, "spool")}
            SlurmctldPidFile={Path.Combine(_folder, "slurmctld.pid")}
            SlurmdPidFile={Path.Combine(_folder, "slurmd.pid")}
            SlurmctldLogFile={Path.Combine(logs, "slurmctld.log")}
            SlurmdLogFile={Path.Combine(logs, "slurmd.log")}
            ProctrackType=proctrack/linuxproc
            TaskPlugin=task/none
            JobAcctGatherType=jobacct_gather/none
            AccountingStorageType=accounting_storage/slurmdbd
            AccountingStorageHost=127.0.0.1
            AccountingStoragePort={dbdPort}
            AccountingStoragePass={socket}
            AccountingStorageTRES=gres/gpu,gres/gpu:a100,gres/gpu:h100
            JobCompType=jobcomp/none
            MailProg=/bin/true
            MpiDefault=none
            SelectType=select/cons_tres
            SelectTypeParameters=CR_Core
            SlurmdParameters=config_overrides
            GresTypes=gpu
            ReturnToService=2
            SchedulerType=sched/backfill
            SchedulerParameters=sched_interval=1
            MinJobAge=2
            KillWait=1
            InactiveLimit=0
            Waittime=0
            MessageTimeout=5
            SlurmctldTimeout=10
            SlurmdTimeout=10
            NodeName={NodeName} NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=16 RealMemory=1000 Gres=gpu:a100:4,gpu:h100:2 State=UNKNOWN
            PartitionName={Partition} Nodes={NodeName} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO

            """);
        await File.WriteAllTextAsync(Path.Combine(_folder, "gres.conf"), $"""
            AutoDetect=off
            NodeName={NodeName} Name=gpu Type=a100 File=/dev/null,/dev/zero,/dev/full,/dev/random
            NodeName={NodeName} Name=gpu Type=h100 File=/dev/urandom,/dev/tty

            """);

        Spawn("/usr/sbin/slurmdbd", "-D");
        await WaitForPortAsync(dbdPort, "slurmdbd");
        Spawn("/usr/sbin/slurmctld", "-D", "-i");
        await WaitForPortAsync(controllerPort, "slurmctld");
        Spawn("/usr/sbin/slurmd", "-D", "-N", NodeName);
        await WaitUntilAsync("sinfo shows the node idle", async () => (await RunAsync("sinfo", "-h", "-o", "%T")).Output.Trim() == "idle");

        await WaitUntilAsync("sacctmgr knows the cluster", async () => (await RunAsync("sacctmgr", "-n", "-P", "list", "cluster", "format=cluster")).Output.Contains("metering", StringComparison.Ordinal));
        foreach (string account in (string[])[Account, OtherAccount])
        {
            await RunCheckedAsync("sacctmgr", "-i", "add", "account", account, "cluster=metering");
            await RunCheckedAsync("sacctmgr", "-i", "add", "user", user, $"account={account}");
        }
    }

    /// <summary>Submits a batch job (sbatch --parsable with these options) and returns its id.</summary>
    public async Task<string> SubmitAsync(params string[] options)
    {
        string output = await RunCheckedAsync("sbatch", ["--parsable", "-o", "/dev/null", "-e", "/dev/null", .. options]);
        return output.Trim().Split(';')[0];
    }

    /// <summary>Waits until the job's allocation has one of <paramref name="states"/> (at most 90 s).</summary>
    public async Task WaitForStateAsync(string jobId, params string[] states)
    {
        try
        {
            await WaitUntilAsync($"job {jobId} reaches {string.Join('/', states)}", async () =>
            {
                // The controller knows a job's state at once; the accounting database learns it
                // from slurmdbd's queue, which has lagged by seconds here. Either one will do.
                string controller = (await RunAsync("squeue", "-h", "-j", jobId, "-o", "%T")).Output.Trim();
                if (controller.Length > 0 && states.Contains(controller, StringComparer.Ordinal))
                {
                    return true;
                }

                string output = (await RunAsync("sacct", "-n", "-P", "-X", "-j", jobId, "--format=State")).Output;
                string[] lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
                return lines.Length > 0 && lines.All(line => states.Any(state => line.StartsWith(state, StringComparison.Ordinal)));
            }, TimeSpan.FromSeconds(90));
        }
        catch (TimeoutException e)
        {
            // Say why: a job left pending names its reason, and the node's state shows a drain.
            string queue = (await RunAsync("squeue", "-a", "-o", "%i %T %r %b")).Output;
            string node = (await RunAsync("sinfo", "-N", "-o", "%N %T %E %G")).Output;
            string accounted = (await RunAsync("sacct", "-n", "-P", "-X", "-j", jobId, "--format=JobID,State,Start,End")).Output;
            // The daemons' logs say why a run ended as it did (a launch refused, a node drained).
            throw new TimeoutException($"{e.Message}\nsqueue:\n{queue}\nsinfo:\n{node}\nsacct:\n{accounted}\n{LogTails()}", e);
        }
    }

    /// <summary>Waits until every allocation of these jobs (array tasks included) has ended in the accounting database.</summary>
    public Task WaitForEndAsync(params string[] jobIds) =>
        WaitUntilAsync($"jobs {string.Join(',', jobIds)} end", async () =>
        {
            string output = (await RunAsync("sacct", "-n", "-P", "-X", "-j", string.Join(',', jobIds), "--format=State,End")).Output;
            string[] lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            return lines.Length >= jobIds.Length && lines.All(line => !line.EndsWith("|Unknown", StringComparison.Ordinal)
                && !line.StartsWith("RUNNING", StringComparison.Ordinal) && !line.StartsWith("PENDING", StringComparison.Ordinal)
                && !line.StartsWith("SUSPENDED", StringComparison.Ordinal) && !line.StartsWith("REQUEUED", StringComparison.Ordinal));
        }, TimeSpan.FromSeconds(120));

    /// <summary>
    /// Requeues a running batch job (<c>scontrol requeue</c>) and lets its next run start at once
    /// instead of minutes later (<see cref="ReleasePendingAsync"/>).
    /// </summary>
    public async Task RequeueAsync(string jobId)
    {
        await RunCheckedAsync("scontrol", "requeue", jobId);
        // The requeue revokes the old run's job credential as of its second, and slurmctld counts
        // a credential issued within that same second as revoked too: a run released that soon is
        // killed at launch ("Killing non-startable batch JobId=…: Job credential revoked" in
        // slurmctld.log) and ends FAILED. Slurm's own hold of a requeued job (a BeginTime minutes
        // away) never meets this; a release must first let the clock pass into a later second.
        await Task.Delay(TimeSpan.FromSeconds(2));
        await ReleasePendingAsync(jobId);
    }

    /// <summary>
    /// Sets a requeued job's start time to now until its new run has started (at most 60 s):
    /// Slurm refuses the change while the previous run is still completing, and only then does
    /// the job pend with a BeginTime minutes away. The controller's state is read, since sacct
    /// shows the old run as REQUEUED before the job has really left it; its restart count tells
    /// the new run from the old one, even where a poll never saw the job between the two, and a
    /// job the controller no longer knows has ended its last run.
    /// </summary>
    private async Task ReleasePendingAsync(string jobId)
    {
        string show = "";
        try
        {
            await WaitUntilAsync($"requeued job {jobId} starts again", async () =>
            {
                show = (await RunAsync("scontrol", "show", "job", jobId)).Output;
                if (show.Contains("Invalid job id", StringComparison.Ordinal))
                {
                    // The controller forgets an ended job within MinJobAge (2 s here): its new run
                    // came and went between two polls. What sacct recorded is checked by the caller.
                    return true;
                }

                string state = Field(show, "JobState");
                if (state.Length == 0)
                {
                    return false;
                }

                bool restarted = int.TryParse(Field(show, "Restarts"), out int restarts) && restarts > 0;
                if (state is "RUNNING" or "COMPLETED")
                {
                    // RUNNING with no restart yet is the old run, not yet requeued.
                    return restarted;
                }

                await RunAsync("scontrol", "update", $"JobId={jobId}", "StartTime=now");
                return false;
            }, TimeSpan.FromSeconds(60));
        }
        catch (TimeoutException e)
        {
            throw new TimeoutException($"{e.Message}\nscontrol show job {jobId}:\n{show}", e);
        }

        static string Field(string show, string name)
        {
            int at = show.IndexOf(name + "=", StringComparison.Ordinal);
            return at < 0 ? "" : show[(at + name.Length + 1)..].Split(' ', '\n')[0];
        }
    }

    /// <summary>The sacct lines (header first) of these jobs, with every column rawlog-formats.md requires and Suspended, duplicates (-D) included.</summary>
    public async Task<string> SacctAsync(params string[] jobIds) =>
        await RunCheckedAsync("sacct", "--allusers", "--parsable2", "-D", "-j", string.Join(',', jobIds),
            "--format=JobID,Account,Partition,AllocTRES,Start,End,Elapsed,Suspended,State");

    /// <summary>Runs a Slurm client of this cluster and fails with its output unless it exits 0.</summary>
    public async Task<string> RunCheckedAsync(string program, params string[] arguments)
    {
        var (exit, output) = await RunAsync(program, arguments);
        if (exit != 0)
        {
            throw new InvalidOperationException($"{program} {string.Join(' ', arguments)} exited {exit}: {output}");
        }

        return output;
    }

    /// <summary>Runs a Slurm client of this cluster: its exit code and output.</summary>
    public async Task<(int ExitCode, string Output)> RunAsync(string program, params string[] arguments)
    {
        var start = new ProcessStartInfo(program);
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        foreach (var (name, value) in Environment)
        {
            start.Environment[name] = value;
        }

        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;
        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
        return (process.ExitCode, await output + await error);
    }

    /// <summary>The last lines of each daemon's log, for a failure message.</summary>
    public string LogTails()
    {
        string logs = Path.Combine(_folder, "log");
        if (!Directory.Exists(logs))
        {
            return "";
        }

        return string.Join('\n', Directory.GetFiles(logs).Order(StringComparer.Ordinal).Select(file =>
            $"--- {Path.GetFileName(file)}\n{string.Join('\n', File.ReadLines(file).TakeLast(8))}"));
    }

    public async ValueTask DisposeAsync()
    {
        // The node first, then the controller, the accounting daemon, the database and munged:
        // each stops while what it reports to is still up.
        for (int i = _daemons.Count - 1; i >= 0; i--)
        {
            Process daemon = _daemons[i];
            try
            {
                if (!daemon.HasExited)
                {
                    Process.Start("kill", ["-TERM", daemon.Id.ToString(CultureInfo.InvariantCulture)])?.WaitForExit();
                    using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(15));
                    try
                    {
                        await daemon.WaitForExitAsync(wait.Token);
                    }
                    catch (OperationCanceledException)
                    {
                        daemon.Kill(entireProcessTree: true);
                    }
                }
            }
            catch (InvalidOperationException)
            {
                // It was never started or has already been reaped.
            }

            daemon.Dispose();
        }

        try
        {
            Directory.Delete(_folder, recursive: true);
        }
        catch (IOException)
        {
            // A daemon that was killed may still hold a file for a moment; the folder is temporary.
        }
    }

    private string Sub(string name) => Directory.CreateDirectory(Path.Combine(_folder, name)).FullName;

    private void Spawn(string program, params string[] arguments)
    {
        var start = new ProcessStartInfo(program) { WorkingDirectory = _folder };
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        foreach (var (name, value) in Environment)
        {
            start.Environment[name] = value;
        }

        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;
        Process process = Process.Start(start) ?? throw new InvalidOperationException($"{program} did not start");
        process.OutputDataReceived += (_, _) => { };
        process.ErrorDataReceived += (_, _) => { };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        _daemons.Add(process);
    }

    private async Task RunToEndAsync(string program, params string[] arguments)
    {
        var (exit, output) = await RunAsync(program, arguments);
        if (exit != 0)
        {
            throw new InvalidOperationException($"{program} exited {exit}: {output}");
        }
    }

    private async Task WaitForPortAsync(int port, string what) =>
        await WaitUntilAsync($"{what} listens on port {port}", async () =>
        {
            if (_daemons[^1].HasExited)
            {
                throw new InvalidOperationException($"{what} exited with {_daemons[^1].ExitCode}");
            }

            using var client = new TcpClient();
            try
            {
                await client.ConnectAsync(IPAddress.Loopback, port);
                return true;
            }
            catch (SocketException)
            {
                return false;
            }
        });

    private static async Task WaitUntilAsync(string what, Func<Task<bool>> condition, TimeSpan? max = null)
    {
        var clock = Stopwatch.StartNew();
        while (!await condition())
        {
            if (clock.Elapsed > (max ?? ReadyMax))
            {
                throw new TimeoutException($"waited {clock.Elapsed.TotalSeconds:0} s until {what}");
            }

            await Task.Delay(250);
        }
    }

    private static int[] FreePorts(int count)
    {
        var listeners = Enumerable.Range(0, count).Select(_ => new TcpListener(IPAddress.Loopback, 0)).ToList();
        listeners.ForEach(listener => listener.Start());
        int[] ports = listeners.Select(listener => ((IPEndPoint)listener.LocalEndpoint).Port).ToArray();
        listeners.ForEach(listener => listener.Stop());
        return ports;
    }
}
