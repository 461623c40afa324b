using System.Diagnostics;
using System.Globalization;
using System.Runtime.Versioning;
using System.Text.Json;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;

namespace Metering.Cli.Tests.Slurm;

/// <summary>
/// `metering agent follow-sacct` against a real single-node Slurm and a real server: jobs run,
/// the follower polls, more jobs run, the follower restarts from its state file and polls again,
/// and every finished job is committed exactly once.
/// </summary>
[Collection(SlurmCollection.Name)]
[SupportedOSPlatform("linux")]
public sealed class RealSlurmFollowerTests(PostgresFixture postgres, SlurmClusterFixture slurm) : IClassFixture<SlurmClusterFixture>
{
    private SlurmCluster Cluster => slurm.Cluster;

    [Fact]
    public async Task A_restarted_follower_commits_every_finished_job_exactly_once_and_stops_cleanly_on_sigterm()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string folder = Directory.CreateTempSubdirectory("metering-follow-").FullName;
        string stateFile = Path.Combine(folder, "state.json");
        string mapping = RealSlurmIngestTests.WriteMapping();
        string since = TimeZoneInfo.ConvertTime(DateTimeOffset.Now.AddSeconds(-5), TimeZoneInfo.FindSystemTimeZoneById(SlurmCluster.Zone))
            .ToString("yyyy-MM-dd'T'HH:mm:ss", CultureInfo.InvariantCulture);
        string[] follow = ["agent", "follow-sacct", "--stream", RealSlurmIngestTests.Stream, "--mapping", mapping, "--state-file", stateFile,
            "--sacct", "/usr/bin/sacct", "--since", since, "--overlap", "10m"];

        string first = await Cluster.SubmitAsync("-A", SlurmCluster.Account, "--gres=gpu:a100:1", "--wrap", "sleep 1");
        string array = await Cluster.SubmitAsync("-A", SlurmCluster.OtherAccount, "--gres=gpu:h100:1", "--array=0-1", "--wrap", "sleep 1");
        await Cluster.WaitForEndAsync(first, array);

        await WaitListedByWindowAsync(since, first, $"{array}_0", $"{array}_1");
        var (exit, output) = await RunAsync(server, [.. follow, "--once"]);
        Assert.True(exit == 0, output);
        List<string> committed = (await RealSlurmIngestTests.CommittedAsync(server)).Select(row => row.JobId).ToList();
        Assert.True(committed.SequenceEqual([first, $"{array}_0", $"{array}_1"]), $"committed [{string.Join(", ", committed)}]\n{output}");
        Assert.True(File.Exists(stateFile), output);
        Assert.False(File.Exists(stateFile + ".tmp"));

        // A second run of the follower, a new process from the same state file, sends only the new
        // job (its allocation and its .batch step): the three already sent fall in its overlap
        // window and are left out, not merely counted as duplicates by the server.
        string second = await Cluster.SubmitAsync("-A", SlurmCluster.Account, "--gres=gpu:h100:2", "--wrap", "sleep 1");
        string running = await Cluster.SubmitAsync("-A", SlurmCluster.Account, "--gres=gpu:a100:1", "--wrap", "sleep 300");
        try
        {
            await Cluster.WaitForEndAsync(second);
            await Cluster.WaitForStateAsync(running, "RUNNING");
            await WaitListedByWindowAsync(since, second, running);
            (exit, output) = await RunAsync(server, [.. follow, "--once"]);
            Assert.True(exit == 0, output);
            Assert.Contains("2 lines sent, 1 records committed, 0 duplicate", output, StringComparison.Ordinal);
            Assert.Contains("1 still running, ", output, StringComparison.Ordinal);
            Assert.DoesNotContain(await RealSlurmIngestTests.CommittedAsync(server), row => row.JobId == running);
        }
        finally
        {
            await Cluster.RunAsync("scancel", running);
        }

        // Restarted once more, now following every second until SIGTERM: the cancelled job is
        // committed once it has ended, and nothing else is sent again.
        await Cluster.WaitForEndAsync(running);
        using Process follower = StartFollower(server, [.. follow, "--every", "1s"]);
        var log = new System.Collections.Concurrent.ConcurrentQueue<string>();
        follower.OutputDataReceived += (_, line) => log.Enqueue(line.Data ?? "");
        follower.ErrorDataReceived += (_, line) => log.Enqueue(line.Data ?? "");
        follower.BeginOutputReadLine();
        follower.BeginErrorReadLine();
        var clock = Stopwatch.StartNew();
        while (!(await RealSlurmIngestTests.CommittedAsync(server)).Any(row => row.JobId == running))
        {
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(60) && !follower.HasExited, string.Join('\n', log));
            await Task.Delay(500);
        }

        await Task.Delay(TimeSpan.FromSeconds(2.5));
        Process.Start("kill", ["-TERM", follower.Id.ToString(CultureInfo.InvariantCulture)])!.WaitForExit();
        await follower.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.True(follower.ExitCode == 0, string.Join('\n', log));
        Assert.Contains(log, line => line.Contains("follow-sacct: stopped", StringComparison.Ordinal));

        string sacct = await Cluster.SacctAsync(first, array, second, running);
        List<SacctOutput.Line> finished = SacctOutput.Parse(sacct).Where(line => line.IsAllocation).ToList();
        Assert.Equal(5, finished.Count);
        Assert.Equal(finished.Select(RealSlurmIngestTests.Expected).OrderBy(row => row.JobId, StringComparer.Ordinal), await RealSlurmIngestTests.CommittedAsync(server));
        using JsonDocument state = JsonDocument.Parse(await File.ReadAllTextAsync(stateFile));
        Assert.Equal(5, state.RootElement.GetProperty("sent").EnumerateObject().Count(entry => !entry.Name.Contains(".batch", StringComparison.Ordinal)));
    }

    /// <summary>
    /// Waits until sacct's query by time window (the follower's) lists every one of these jobs. On
    /// a cluster started seconds ago slurmdbd has been seen to list a job by its id before such a
    /// query finds it, and one array task before the other; a follower in a loop meters them at its
    /// next poll, but a test asserts on one poll.
    /// </summary>
    private async Task WaitListedByWindowAsync(string since, params string[] jobIds)
    {
        var listed = Stopwatch.StartNew();
        while (!jobIds.All((await Cluster.RunAsync("sacct", "--allusers", "-n", "-P", "-X", "--starttime", since, "--endtime", "now", "--format=JobID")).Output
                   .Split('\n', StringSplitOptions.TrimEntries).Contains))
        {
            Assert.True(listed.Elapsed < TimeSpan.FromSeconds(60), $"sacct by time window never listed jobs {string.Join(", ", jobIds)}");
            await Task.Delay(500);
        }
    }

    [Fact]
    public async Task With_meter_steps_the_follower_holds_a_finished_step_until_its_job_ends_so_the_batch_step_is_not_metered_beside_it()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string stateFile = Path.Combine(Directory.CreateTempSubdirectory("metering-follow-steps-").FullName, "state.json");
        string since = TimeZoneInfo.ConvertTime(DateTimeOffset.Now.AddSeconds(-5), TimeZoneInfo.FindSystemTimeZoneById(SlurmCluster.Zone))
            .ToString("yyyy-MM-dd'T'HH:mm:ss", CultureInfo.InvariantCulture);
        string[] follow = ["agent", "follow-sacct", "--stream", RealSlurmIngestTests.Stream, "--mapping", RealSlurmIngestTests.WriteMapping(meterSteps: true),
            "--state-file", stateFile, "--sacct", "/usr/bin/sacct", "--since", since, "--once"];

        // The step ends long before the job: a poll in between sees a finished step of a running job.
        string job = await Cluster.SubmitAsync("-A", SlurmCluster.Account, "--gres=gpu:a100:1", "--wrap", "srun --gres=gpu:a100:1 sleep 1; sleep 20");
        var clock = Stopwatch.StartNew();
        while (!(await Cluster.RunAsync("sacct", "-n", "-P", "-j", job + ".0", "--format=End")).Output.Trim().StartsWith("20", StringComparison.Ordinal))
        {
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(60), $"step {job}.0 did not end");
            await Task.Delay(500);
        }

        // The overlap window may hold jobs of the class's other test: only this job's records count.
        async Task<List<RealSlurmIngestTests.Row>> CommittedOfJob() =>
            (await RealSlurmIngestTests.CommittedAsync(server)).Where(row => row.JobId.StartsWith(job + ".", StringComparison.Ordinal) || row.JobId == job).ToList();

        await WaitListedByWindowAsync(since, job);
        var (exit, output) = await RunAsync(server, follow);
        Assert.True(exit == 0, output);
        await Cluster.WaitForStateAsync(job, "RUNNING");
        Assert.True(output.Contains("; 1 still running", StringComparison.Ordinal), output);
        Assert.Empty(await CommittedOfJob());

        await Cluster.WaitForEndAsync(job);
        (exit, output) = await RunAsync(server, follow);
        Assert.True(exit == 0, output);
        SacctOutput.Line step = SacctOutput.Parse(await Cluster.SacctAsync(job)).Single(line => line.JobId == job + ".0");
        Assert.Equal([RealSlurmIngestTests.Expected(step)], await CommittedOfJob());
    }

    private Task<(int ExitCode, string Output)> RunAsync(TestServer server, string[] arguments) =>
        CliProcess.RunAsAsync(server, TestServer.ProviderKey, new Dictionary<string, string>(Cluster.Environment), arguments);

    private Process StartFollower(TestServer server, string[] arguments)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var (name, value) in Cluster.Environment)
        {
            start.Environment[name] = value;
        }

        foreach (string argument in (string[])[ProgramBuilds.PathOf("metering.dll"), .. arguments,
                     "--server", server.Address.ToString().TrimEnd('/'), "--ca", TestCertificates.CaPemPath, "--api-key", TestServer.ProviderKey])
        {
            start.ArgumentList.Add(argument);
        }

        return Process.Start(start)!;
    }
}
