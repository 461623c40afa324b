using System.Diagnostics;
using Metering.Server.Tests.Audit;
using Metering.Server.Tests.Infrastructure;
using Metering.Tests.Shared;

namespace Metering.Server.Tests.Cli;

/// <summary>`metering audit` as an auditor runs it against the bureau's database.</summary>
[Collection(PostgresCollection.Name)]
public sealed class AuditCliTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Verify_exits_3_and_prints_the_evidence_when_a_chain_is_broken()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync("cluster-a", 1, 30);
        await scene.TamperAsync($"UPDATE usage_records SET site = 'elsewhere' WHERE provider_id = '{TestRecords.Provider}' AND stream_id = 'cluster-a' AND sequence = 12");

        var (exit, output) = await CliProcess.RunAsync("audit", "verify", "--provider", TestRecords.Provider, "--connection", scene.Server.ConnectionString);

        Assert.Equal(3, exit);
        Assert.Contains("BROKEN at 12 (HashMismatch)", output, StringComparison.Ordinal);
        Assert.Contains("canonical", output, StringComparison.Ordinal);
        Assert.Contains(Convert.ToHexStringLower("elsewhere"u8), output, StringComparison.Ordinal);
        // Records 1 to 11 verified before the break, and the two of the seeded proof stream; the summary says so.
        Assert.Contains("2 stream(s), 13 records,", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_printed_proof_checks_out_in_bash_with_sha256sum()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync("cluster-a", 1, 7);
        await scene.StreamAsync("cluster-b", 1, 4);

        var (rootExit, rootOutput) = await CliProcess.RunAsync("audit", "merkle-root", "--provider", TestRecords.Provider, "--day", "2026-11-20", "--connection", scene.Server.ConnectionString);
        var (proofExit, proof) = await CliProcess.RunAsync("audit", "proof", "--provider", TestRecords.Provider, "--stream", "cluster-a", "--sequence", "6", "--connection", scene.Server.ConnectionString);

        Assert.Equal((0, 0), (rootExit, proofExit));
        string root = rootOutput.Split('\n').Single(l => l.StartsWith("root", StringComparison.Ordinal))[4..].Trim();
        Assert.Contains("leaves    11", rootOutput, StringComparison.Ordinal);
        var bash = new ProcessStartInfo("bash") { RedirectStandardInput = true, RedirectStandardOutput = true, UseShellExecute = false };
        using Process process = Process.Start(bash)!;
        await process.StandardInput.WriteAsync(proof);
        process.StandardInput.Close();
        string printed = await process.StandardOutput.ReadToEndAsync();
        await process.WaitForExitAsync();
        Assert.Equal(root, printed.Trim());
    }

    [Fact]
    public async Task Usage_prints_exact_totals_and_every_command_is_in_the_query_log()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync("cluster-a", 1, 10);

        var (exit, output) = await CliProcess.RunAsync("audit", "usage", "--provider", TestRecords.Provider, "--from", "2026-11-20", "--to", "2026-11-20", "--by", "model",
            "--as", "auditor-zhang", "--connection", scene.Server.ConnectionString);
        var (logExit, log) = await CliProcess.RunAsync("audit", "log", "--actor", "auditor-zhang", "--as", "auditor-zhang", "--connection", scene.Server.ConnectionString);

        Assert.Equal((0, 0), (exit, logExit));
        // Ten records of 8 H100 for five minutes: 6,596,000,000 nPFh, 6.666 device-hours.
        Assert.Contains("H100-SXM", output, StringComparison.Ordinal);
        Assert.Matches(@"total\s+10\s+6\.666\s+6\.596000000", output);
        Assert.Contains("usage", log, StringComparison.Ordinal);
        Assert.Contains("\"by\": \"model\"", log, StringComparison.Ordinal);
        Assert.Equal(2L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM audit_query_log WHERE actor = 'auditor-zhang' AND via = 'cli'"));
    }
}
