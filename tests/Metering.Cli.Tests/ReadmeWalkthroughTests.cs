using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Metering.Fixtures;
using Metering.Server.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>
/// The sandbox walk-through (samples/Walkthrough/README.md, linked from the README's sandbox
/// section) run as a newcomer runs it: its marked bash blocks, in order, in one bash session on a
/// fresh folder, with `metering` and `provider-agent` the builds next to the tests. The block
/// marked as the server runs in the background, as the other terminal the text asks for. Before
/// this test the walk-through could not produce usage that settles, and nothing noticed.
/// </summary>
public sealed partial class ReadmeWalkthroughTests
{
    private const string Marker = "<!-- walkthrough -->";
    private const string ServeMarker = "<!-- walkthrough: serve -->";
    private const string WrittenServer = "127.0.0.1:7391";
    private const int IntervalsPerDay = 288;

    private static string WalkthroughPath => Path.Combine(TestRecords.RepositoryRoot(), "samples", "Walkthrough", "README.md");

    private static string SampleApplicant()
    {
        using JsonDocument application = JsonDocument.Parse(File.ReadAllText(Path.Combine(TestRecords.RepositoryRoot(), "samples", "Registry", "application.json")));
        return application.RootElement.GetProperty("creditCode").GetString()!;
    }

    [Fact]
    public async Task The_walkthrough_takes_the_sample_applicant_from_filing_to_a_settled_and_audited_day_as_written()
    {
        IReadOnlyList<Block> blocks = Blocks(await File.ReadAllTextAsync(WalkthroughPath));
        string provider = SampleApplicant();

        var run = await RunAsync(blocks);

        Assert.True(run.ExitCode == 0, $"the walk-through stopped with exit {run.ExitCode}:\n{run.Output}");
        Assert.Equal(blocks.Count, run.Steps.Count);
        ulong expectedRecords = (ulong)IntervalsPerDay * JobsPerInterval(blocks.Single(b => b.Text.Contains("--stream nanshan", StringComparison.Ordinal)));
        string records = expectedRecords.ToString("N0", CultureInfo.InvariantCulture);
        string last = run.Steps[^1];

        // The claim covered the day the settlement closed, and the settlement posted its subsidy.
        string claimedDay = ClaimedDay().Match(run.Steps[^2]).Groups["day"].Value;
        Assert.Matches($@"(?m)^{Regex.Escape(claimedDay)} closed\.$", last);
        Assert.Matches($@"(?m)^{provider} +{Regex.Escape(records)} +[0-9a-f]{{64}}$", last);
        // The statement's labels and the names beside the codes are in Chinese; the columns are read by position.
        Assert.Matches($@"(?m)^ +\S+ +1 +1 +\S*{provider}\S* +\S*91440300MA5G2XK3P1\S* +1 +\S*91440300MA5G2XK3P1\S* +[1-9][0-9,]*\.\d\d ", last);
        Assert.Matches($@"(?m)^ +{Regex.Escape(claimedDay)} +\S*{provider}\S* +\S*91440300MA5G2XK3P1\S* +1 +H100-SXM +\S+ +(?:{Regex.Escape(records)}|{expectedRecords}) ", last);
        // The auditor finds the provider's chains intact, and every record of the day under the holder.
        Assert.Matches($@"(?m)^nanshan +1 +{Regex.Escape(records)} +{Regex.Escape(records)} +intact ", last);
        Assert.Matches(@"(?m)^proof:onboarding +1 +[0-9,]+ +[0-9,]+ +intact ", last);
        Assert.DoesNotMatch(@"(?m)\bbroken\b", last);
        Assert.Matches($@"(?m)^91440300MA5G2XK3P1 +{Regex.Escape(records)} ", last);
        Assert.Matches($@"(?m)^total +{Regex.Escape(records)} ", last);
        string statements = Path.Combine(run.Folder, "statements", claimedDay);
        Assert.True(File.Exists(Path.Combine(statements, $"provider-{provider}.txt")), $"no provider statement in {statements}");
        Assert.True(File.Exists(Path.Combine(statements, "holder-91440300MA5G2XK3P1.txt")), $"no holder statement in {statements}");
    }

    [Fact]
    public async Task A_walkthrough_step_that_fails_stops_the_run_with_its_exit_code()
    {
        // The walk-through up to the admission decision, without the clock advance that ends the
        // notice period: `registry decide` is refused, as the issue's newcomer found, and the run says so.
        IReadOnlyList<Block> blocks = Blocks(await File.ReadAllTextAsync(WalkthroughPath));
        int stages = blocks.ToList().FindIndex(b => b.Text.Contains("registry decide", StringComparison.Ordinal));
        Assert.True(stages > 0, "the walk-through has no `registry decide` step");
        Block withoutAdvance = blocks[stages] with
        {
            Text = string.Join('\n', blocks[stages].Text.Split('\n').Where(line => !line.StartsWith("metering clock advance", StringComparison.Ordinal))),
        };

        var run = await RunAsync([.. blocks.Take(stages), withoutAdvance]);

        Assert.Equal(4, run.ExitCode);
        Assert.Equal(stages + 1, run.Steps.Count);
        Assert.Contains("refused: FailedPrecondition NOTICE_PERIOD_RUNNING", run.Steps[^1], StringComparison.Ordinal);
        Assert.DoesNotContain("AWAITING_ADMISSION_NOTICE", run.Steps[^1], StringComparison.Ordinal);
    }

    [Fact]
    public void The_walkthrough_names_the_sample_applicant_as_its_one_provider_and_never_as_a_holder()
    {
        string text = File.ReadAllText(WalkthroughPath);
        string commands = string.Join('\n', Blocks(text).Select(b => b.Text));
        string provider = SampleApplicant();

        string[] providers =
        [
            .. ProviderOption().Matches(commands).Select(m => m.Groups["code"].Value),
            .. OrganisationCode().Matches(commands).Select(m => m.Groups["code"].Value),
            .. ProviderSubject().Matches(commands).Select(m => m.Groups["code"].Value),
            .. ProviderParty().Matches(commands).Select(m => m.Groups["code"].Value),
        ];
        string[] holders = [.. HolderCode().Matches(commands).Select(m => m.Groups["code"].Value)];

        Assert.True(providers.Length >= 6, $"expected the provider in registration, key, contract, statement and audit; found {providers.Length}");
        Assert.All(providers, code => Assert.Equal(provider, code));
        Assert.NotEmpty(holders);
        Assert.DoesNotContain(provider, holders);
        Assert.Equal(1, Blocks(text).Count(b => b.Serve));
    }

    [Fact]
    public void The_raw_log_sample_bills_no_code_that_the_readme_uses_as_a_provider()
    {
        string root = TestRecords.RepositoryRoot();
        string readme = File.ReadAllText(Path.Combine(root, "README.md")) + File.ReadAllText(WalkthroughPath);
        using JsonDocument mapping = JsonDocument.Parse(File.ReadAllText(Path.Combine(root, "samples", "RawLogs", "mapping.json")));
        string[] billed = [.. mapping.RootElement.GetProperty("accountHolders").EnumerateObject().Select(account => account.Value.GetString()!)];
        string[] providers = [.. ProviderOption().Matches(readme).Select(m => m.Groups["code"].Value).Distinct()];

        Assert.NotEmpty(providers);
        Assert.Empty(billed.Intersect(providers));
    }

    [Fact]
    public void The_readme_sandbox_section_links_the_walkthrough()
    {
        string readme = File.ReadAllText(Path.Combine(TestRecords.RepositoryRoot(), "README.md"));
        int section = readme.IndexOf("### A sandbox", StringComparison.Ordinal);
        int next = readme.IndexOf("\n## ", section, StringComparison.Ordinal);

        Assert.True(section >= 0, "README.md has no sandbox section");
        Assert.Contains("(samples/Walkthrough/README.md)", readme[section..next], StringComparison.Ordinal);
    }

    /// <summary>A marked bash block of the walk-through; <see cref="Serve"/> for the server's.</summary>
    private sealed record Block(string Text, bool Serve);

    private sealed record Run(int ExitCode, string Output, IReadOnlyList<string> Steps, string Folder);

    private static IReadOnlyList<Block> Blocks(string markdown)
    {
        var blocks = new List<Block>();
        foreach (Match match in MarkedBlock().Matches(markdown))
        {
            blocks.Add(new Block(match.Groups["body"].Value.TrimEnd(), match.Groups["marker"].Value == ServeMarker));
        }

        Assert.True(blocks.Count >= 5, $"the walk-through has only {blocks.Count} blocks marked {Marker}");
        return blocks;
    }

    private static ulong JobsPerInterval(Block block) =>
        ulong.Parse(Regex.Match(block.Text, @"--jobs-per-interval (\d+)").Groups[1].Value, CultureInfo.InvariantCulture);

    /// <summary>
    /// One bash script: the blocks in order under `set -euo pipefail`, each announced by a line
    /// the output is split at; the server's block in the background, awaited until it serves and
    /// stopped (SIGTERM, so that it stops its PostgreSQL) when the script ends. The only change to
    /// the text is the port, a free one in place of 7391, so that a sandbox the developer runs
    /// does not collide with the test's.
    /// </summary>
    private static async Task<Run> RunAsync(IReadOnlyList<Block> blocks)
    {
        string folder = Directory.CreateTempSubdirectory("metering-walkthrough-").FullName;
        // When the tests run as root, the embedded PostgreSQL's own user must be able to walk in.
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(folder, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute);
        }

        Directory.CreateSymbolicLink(Path.Combine(folder, "samples"), Path.Combine(TestRecords.RepositoryRoot(), "samples"));
        string server = $"127.0.0.1:{Metering.Server.Fixtures.ServerProcess.FreePort()}";
        string cli = Path.Combine(AppContext.BaseDirectory, "metering.dll");
        string agent = Metering.Server.Fixtures.ProgramBuilds.PathOf("provider-agent.dll");

        var script = new StringBuilder();
        script.AppendLine("set -euo pipefail");
        // One stream keeps every command's messages beside its step's announcement.
        script.AppendLine("exec 2>&1");
        // `metering serve` replaces its background shell, so that the trap's signal reaches the server itself.
        script.AppendLine(CultureInfo.InvariantCulture, $"metering() {{ if [ \"$1\" = serve ]; then exec dotnet '{cli}' \"$@\"; fi; dotnet '{cli}' \"$@\"; }}");
        script.AppendLine(CultureInfo.InvariantCulture, $"provider-agent() {{ dotnet '{agent}' \"$@\"; }}");
        for (int i = 0; i < blocks.Count; i++)
        {
            script.AppendLine(CultureInfo.InvariantCulture, $"echo '{StepLine(i)}'");
            string text = blocks[i].Text.Replace(WrittenServer, server, StringComparison.Ordinal);
            if (blocks[i].Serve)
            {
                script.AppendLine(CultureInfo.InvariantCulture, $"( {text} ) > serve.log 2>&1 &");
                script.AppendLine("SERVE_PID=$!");
                script.AppendLine("trap 'kill -TERM $SERVE_PID; wait $SERVE_PID || true' EXIT");
                script.AppendLine("for _ in $(seq 240); do grep -q 'Serving gRPC on' serve.log && break; kill -0 $SERVE_PID; sleep 0.25; done");
                script.AppendLine("grep -q 'Serving gRPC on' serve.log || { cat serve.log; exit 1; }");
            }
            else
            {
                script.AppendLine(text);
            }
        }

        string scriptPath = Path.Combine(folder, "walkthrough.sh");
        await File.WriteAllTextAsync(scriptPath, script.ToString());
        var start = new ProcessStartInfo("bash") { WorkingDirectory = folder, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.ArgumentList.Add(scriptPath);
        foreach (string name in new[] { "METERING_SERVER", "METERING_API_KEY", "METERING_CA", "METERING_CONNECTION", "METERING_CLOCK", "LANG", "LC_ALL" })
        {
            start.Environment.Remove(name);
        }

        using Process bash = Process.Start(start)!;
        var output = new StringBuilder();
        DataReceivedEventHandler collect = (_, e) =>
        {
            if (e.Data is not null)
            {
                lock (output)
                {
                    output.AppendLine(e.Data);
                }
            }
        };
        bash.OutputDataReceived += collect;
        bash.ErrorDataReceived += collect;
        bash.BeginOutputReadLine();
        bash.BeginErrorReadLine();
        try
        {
            await bash.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(240));
        }
        catch (TimeoutException)
        {
            bash.Kill(entireProcessTree: true);
            throw new TimeoutException("the walk-through ran past 240 s:\n" + output);
        }

        bash.WaitForExit();
        string all;
        lock (output)
        {
            all = output.ToString();
        }

        IReadOnlyList<string> steps = [.. StepAnnouncement().Split(all).Skip(1)];
        return new Run(bash.ExitCode, all, steps, folder);
    }

    private static string StepLine(int index) => $"### walkthrough block {index + 1}";

    [GeneratedRegex(@"(?m)^### walkthrough block \d+\r?$")]
    private static partial Regex StepAnnouncement();

    [GeneratedRegex(@"(?<marker><!-- walkthrough(?:: serve)? -->)\r?\n```bash\r?\n(?<body>.*?)```", RegexOptions.Singleline)]
    private static partial Regex MarkedBlock();

    [GeneratedRegex(@"(?m)^Claim \d+ on contract \d+.*\n  usage days (?<day>\d{4}-\d{2}-\d{2});")]
    private static partial Regex ClaimedDay();

    [GeneratedRegex(@"--provider (?<code>\S+)")]
    private static partial Regex ProviderOption();

    [GeneratedRegex(@"registry (?:org add|licence add) --code (?<code>\S+)")]
    private static partial Regex OrganisationCode();

    [GeneratedRegex(@"--role provider --subject (?<code>\S+)")]
    private static partial Regex ProviderSubject();

    [GeneratedRegex(@"--party-kind provider --party (?<code>\S+)")]
    private static partial Regex ProviderParty();

    [GeneratedRegex(@"(?:voucher holder register --code|--holders|--holder) (?<code>[^\s,]+)")]
    private static partial Regex HolderCode();
}
