using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using Google.Protobuf;
using Grpc.Core;
using Metering.Protocol.V1;

namespace Metering.Cli.Commands;

/// <summary>
/// `metering agent follow-sacct`: polls `sacct --parsable2` on a provider's Slurm for jobs that
/// finished since its cursor and uploads them through RawLogService, like `ingest-file` with a
/// file it writes itself. Each poll asks from the cursor less an overlap window (slurmdbd records
/// a job's end a little late, and a job can end in the window of the previous poll after it was
/// asked), leaves out lines it has already sent, and saves the new cursor only after the upload
/// is complete; the server's de-duplication by job and start is the second line of defence.
/// </summary>
internal static class FollowSacctCommand
{
    /// <summary>
    /// The sacct columns rawlog-formats.md requires, in the order the follower asks for them, and
    /// `Suspended`: without it the server cannot tell a suspended job's short Elapsed from an End
    /// moved by hand and refuses the line.
    /// </summary>
    private const string Columns = "JobID,Account,Partition,AllocTRES,Start,End,Elapsed,Suspended,State";
    private const string LocalTimeFormat = "yyyy-MM-dd'T'HH:mm:ss";
    private static readonly TimeSpan EveryMin = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan SacctTimeoutMax = TimeSpan.FromMinutes(5);

    public static Command Create()
    {
        var stream = new Option<string>("--stream") { Description = "The usage stream the records go to (one per cluster).", Required = true };
        var mapping = new Option<FileInfo>("--mapping") { Description = "The JSON mapping of `ingest-file` (accounts, GRES types, site, UTC offset).", Required = true };
        var every = new Option<string>("--every") { Description = "Time between polls: 30s, 5m, 1h.", DefaultValueFactory = _ => "5m" };
        var overlap = new Option<string>("--overlap") { Description = "How far before the cursor each poll asks again, for jobs whose end reached the accounting database late.", DefaultValueFactory = _ => "10m" };
        var stateFile = new Option<FileInfo>("--state-file") { Description = "Where the cursor and the recently sent jobs are kept (written atomically).", DefaultValueFactory = _ => new FileInfo("follow-sacct.state.json") };
        var sacct = new Option<string>("--sacct") { Description = "The sacct program.", DefaultValueFactory = _ => "sacct" };
        var since = new Option<string?>("--since") { Description = "With no state file yet: the cluster-local time (yyyy-MM-ddTHH:mm:ss) to start from; default 24 hours ago." };
        var once = new Option<bool>("--once") { Description = "Poll once and exit (for cron and tests): 0, or 7 when lines were refused." };
        return ClientCommand.Create("follow-sacct",
            "Follow a Slurm cluster: every --every, upload the jobs sacct lists as finished since the last poll (sacct --allusers --parsable2 -D). Never sends a job twice across restarts; stops cleanly on SIGTERM or Ctrl+C.",
            [stream, mapping, every, overlap, stateFile, sacct, since, once],
            async (parse, call, cancellationToken) =>
            {
                TimeSpan interval = ParseSpan(parse.GetValue(every)!, "--every");
                TimeSpan window = ParseSpan(parse.GetValue(overlap)!, "--overlap");
                if (interval < EveryMin)
                {
                    throw new UsageException($"--every must be at least {EveryMin.TotalSeconds:0} s");
                }

                LogMapping logMapping;
                try
                {
                    logMapping = JsonParser.Default.Parse<LogMapping>(await File.ReadAllTextAsync(parse.GetValue(mapping)!.FullName, cancellationToken));
                }
                catch (Exception e) when (e is InvalidProtocolBufferException or InvalidJsonException or IOException)
                {
                    throw new UsageException($"mapping file: {e.Message}");
                }

                string statePath = parse.GetValue(stateFile)!.FullName;
                FollowerState state = FollowerState.Load(statePath) ?? new FollowerState { Cursor = Start(parse.GetValue(since)) };
                var follower = new Follower(new RawLogService.RawLogServiceClient(call.Channel), call.Headers, parse.GetValue(stream)!, logMapping,
                    parse.GetValue(sacct)!, window, statePath, state);

                using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                using PosixSignalRegistration term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, signal =>
                {
                    signal.Cancel = true;
                    Console.Error.WriteLine("follow-sacct: SIGTERM, stopping after the current poll");
                    stop.Cancel();
                });
                if (parse.GetValue(once))
                {
                    return await follower.PollAsync(CancellationToken.None) ? ExitCodes.Success : ExitCodes.LinesRefused;
                }

                Console.Error.WriteLine($"follow-sacct: polling every {interval} from {state.Cursor.ToString(LocalTimeFormat, CultureInfo.InvariantCulture)} (state in {statePath})");
                while (!stop.IsCancellationRequested)
                {
                    try
                    {
                        // A poll is never cut short by the signal: it either saves its cursor or leaves the old one.
                        await follower.PollAsync(CancellationToken.None);
                    }
                    catch (RpcException e) when (e.StatusCode is StatusCode.Unavailable or StatusCode.DeadlineExceeded)
                    {
                        Console.Error.WriteLine($"follow-sacct: the server did not answer ({e.Status.Detail}); trying again at the next poll");
                    }
                    catch (SacctException e)
                    {
                        Console.Error.WriteLine($"follow-sacct: {e.Message}; trying again at the next poll");
                    }

                    try
                    {
                        await Task.Delay(interval, stop.Token);
                    }
                    catch (OperationCanceledException)
                    {
                        break;
                    }
                }

                Console.Error.WriteLine("follow-sacct: stopped");
                return ExitCodes.Success;
            });
    }

    private static DateTime Start(string? since)
    {
        if (since is null)
        {
            return DateTime.Now.AddDays(-1);
        }

        return DateTime.TryParseExact(since, LocalTimeFormat, CultureInfo.InvariantCulture, DateTimeStyles.None, out DateTime start)
            ? start
            : throw new UsageException($"--since '{since}' is not yyyy-MM-ddTHH:mm:ss");
    }

    /// <summary>30s, 5m, 1h or 1d.</summary>
    internal static TimeSpan ParseSpan(string text, string option)
    {
        if (text.Length >= 2 && long.TryParse(text.AsSpan(0, text.Length - 1), NumberStyles.None, CultureInfo.InvariantCulture, out long amount) && amount <= 100_000)
        {
            switch (text[^1])
            {
                case 's': return TimeSpan.FromSeconds(amount);
                case 'm': return TimeSpan.FromMinutes(amount);
                case 'h': return TimeSpan.FromHours(amount);
                case 'd': return TimeSpan.FromDays(amount);
            }
        }

        throw new UsageException($"{option} '{text}' is not a duration such as 30s, 5m, 1h or 1d");
    }

    private sealed class SacctException(string message) : Exception(message);

    private sealed class Follower(RawLogService.RawLogServiceClient client, Metadata headers, string stream, LogMapping mapping,
        string sacct, TimeSpan overlap, string statePath, FollowerState state)
    {
        /// <summary>One poll: ask sacct, upload the finished lines not sent before, save the cursor. False when the server refused lines.</summary>
        public async Task<bool> PollAsync(CancellationToken cancellationToken)
        {
            // The cursor is the cluster's local time, as sacct reads and prints it.
            DateTime now = DateTime.Now;
            now = now.AddTicks(-(now.Ticks % TimeSpan.TicksPerSecond));
            DateTime from = state.Cursor - overlap;
            string output = await RunSacctAsync(from, now, cancellationToken);
            string[] lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            if (lines.Length == 0)
            {
                throw new SacctException("sacct printed nothing, not even its header");
            }

            string[] header = lines[0].TrimEnd('\r').Split('|');
            int jobColumn = Array.IndexOf(header, "JobID");
            int startColumn = Array.IndexOf(header, "Start");
            int endColumn = Array.IndexOf(header, "End");
            var fresh = new List<string>();
            var freshKeys = new Dictionary<string, DateTime>(StringComparer.Ordinal);
            int unfinished = 0;
            int sentBefore = 0;

            // A step is sent only with the rest of its job, once the job's allocation has ended:
            // with meter_steps the server meters a .batch line when no numbered step of its job
            // follows in the same upload, so a step sent in an earlier poll would let the .batch
            // be metered beside it.
            var runningJobs = new HashSet<string>(StringComparer.Ordinal);
            foreach (string raw in lines.Skip(1))
            {
                string[] fields = raw.TrimEnd('\r').Split('|');
                if (fields.Length == header.Length && !fields[jobColumn].Contains('.', StringComparison.Ordinal)
                    && !DateTime.TryParseExact(fields[endColumn], LocalTimeFormat, CultureInfo.InvariantCulture, DateTimeStyles.None, out _))
                {
                    runningJobs.Add(fields[jobColumn]);
                }
            }

            foreach (string raw in lines.Skip(1))
            {
                string line = raw.TrimEnd('\r');
                string[] fields = line.Split('|');
                if (fields.Length != header.Length)
                {
                    // The server refuses it with its line number and reason; the follower does not judge lines.
                    fresh.Add(line);
                    continue;
                }

                int stepDot = fields[jobColumn].IndexOf('.', StringComparison.Ordinal);
                if (stepDot > 0 && runningJobs.Contains(fields[jobColumn][..stepDot]))
                {
                    continue;
                }

                if (!DateTime.TryParseExact(fields[endColumn], LocalTimeFormat, CultureInfo.InvariantCulture, DateTimeStyles.None, out DateTime end))
                {
                    // End is Unknown while a job runs: it is sent once it has ended.
                    unfinished += fields[jobColumn].Contains('.', StringComparison.Ordinal) ? 0 : 1;
                    continue;
                }

                string key = fields[jobColumn] + "|" + fields[startColumn];
                if (state.Sent.ContainsKey(key) || freshKeys.ContainsKey(key))
                {
                    sentBefore++;
                    continue;
                }

                fresh.Add(line);
                freshKeys[key] = end;
            }

            string window = $"{from.ToString(LocalTimeFormat, CultureInfo.InvariantCulture)}..{now.ToString(LocalTimeFormat, CultureInfo.InvariantCulture)}";
            bool clean = true;
            if (fresh.Count > 0)
            {
                string file = Path.Combine(Path.GetDirectoryName(statePath)!, $".follow-sacct-{Environment.ProcessId}.txt");
                string text = string.Join('\n', [lines[0].TrimEnd('\r'), .. fresh]) + "\n";
                await File.WriteAllTextAsync(file, text, cancellationToken);
                try
                {
                    var upload = new UploadHeader
                    {
                        UploadId = "sacct-" + Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text)))[..32],
                        StreamId = stream,
                        Format = LogFormat.SacctParsable2,
                        Mapping = mapping,
                        TotalBytes = (ulong)new FileInfo(file).Length,
                    };
                    UploadReport report = await IngestFileCommand.UploadAsync(client, headers, new FileInfo(file), upload, cancellationToken);
                    if (!report.Complete)
                    {
                        throw new SacctException($"upload {report.UploadId} is incomplete; the cursor stays at {state.Cursor.ToString(LocalTimeFormat, CultureInfo.InvariantCulture)}");
                    }

                    Console.WriteLine($"{window}: {fresh.Count} lines sent, {report.Records} records committed, {report.LinesDuplicate} duplicate, {report.LinesSkipped} skipped, {report.LinesRefused} refused; {unfinished} still running, {sentBefore} sent before; stream {report.StreamId} at #{report.CommittedSequence}");
                    foreach (LineError error in report.Errors)
                    {
                        Console.WriteLine($"  refused line {error.Line}: {error.Reason}: {error.Message}");
                    }

                    clean = report.LinesRefused == 0;
                }
                finally
                {
                    File.Delete(file);
                }
            }
            else
            {
                Console.WriteLine($"{window}: nothing new; {unfinished} still running, {sentBefore} sent before");
            }

            foreach (var (key, end) in freshKeys)
            {
                state.Sent[key] = end;
            }

            state.Cursor = now;
            state.Prune(now - overlap - overlap);
            state.Save(statePath);
            return clean;
        }

        private async Task<string> RunSacctAsync(DateTime from, DateTime to, CancellationToken cancellationToken)
        {
            var start = new ProcessStartInfo(sacct)
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            };
            foreach (string argument in (string[])["--allusers", "--parsable2", "--duplicates", $"--format={Columns}",
                         $"--starttime={from.ToString(LocalTimeFormat, CultureInfo.InvariantCulture)}", $"--endtime={to.ToString(LocalTimeFormat, CultureInfo.InvariantCulture)}"])
            {
                start.ArgumentList.Add(argument);
            }

            Process process;
            try
            {
                process = Process.Start(start) ?? throw new SacctException($"{sacct} did not start");
            }
            catch (System.ComponentModel.Win32Exception e)
            {
                throw new UsageException($"cannot run {sacct}: {e.Message} (give its path with --sacct)");
            }

            using (process)
            {
                Task<string> output = process.StandardOutput.ReadToEndAsync(cancellationToken);
                Task<string> error = process.StandardError.ReadToEndAsync(cancellationToken);
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                timeout.CancelAfter(SacctTimeoutMax);
                try
                {
                    await process.WaitForExitAsync(timeout.Token);
                }
                catch (OperationCanceledException)
                {
                    process.Kill();
                    throw new SacctException($"{sacct} did not finish within {SacctTimeoutMax.TotalMinutes:0} minutes");
                }

                if (process.ExitCode != 0)
                {
                    throw new SacctException($"{sacct} exited {process.ExitCode}: {(await error).Trim()}");
                }

                return await output;
            }
        }
    }
}
