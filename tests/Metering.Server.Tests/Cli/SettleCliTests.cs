using System.Diagnostics;
using Metering.Engine.Settlement;
using Metering.Protocol.V1;
using Metering.Server.Tests.Infrastructure;
using Metering.Server.Tests.Vouchers;
using Metering.Tests.Shared;

namespace Metering.Server.Tests.Cli;

/// <summary>`metering settle` and `metering voucher` as an operator runs them, including a settle process killed mid-run.</summary>
[Collection(PostgresCollection.Name)]
public sealed class SettleCliTests(PostgresFixture postgres)
{
    private const string Day = "2026-11-20";

    /// <summary>A holder with a contract, a voucher, a day of usage and a claim, ready to settle.</summary>
    private static async Task<VoucherScene> SeedAsync(PostgresFixture postgres)
    {
        VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();
        Contract contract = await scene.ContractAsync(holder);
        await scene.VoucherAsync(contract.ContractId, 100_000_000);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, VoucherScene.Day, 12));
        await scene.ClaimJobsAsync(contract.ContractId, "job-1120-000", "job-1120-001");
        return scene;
    }

    [Fact]
    public async Task Settle_prints_progress_writes_three_formats_and_a_rerun_prints_the_same_hash()
    {
        await using VoucherScene scene = await SeedAsync(postgres);
        string folder = Directory.CreateTempSubdirectory("settle-cli-").FullName;

        var (exit, output) = await CliProcess.RunAsync("settle", "--day", Day, "--out", folder, "--connection", scene.ConnectionString);
        var (rerunExit, rerun) = await CliProcess.RunAsync("settle", "--day", Day, "--connection", scene.ConnectionString);
        var (showExit, shown) = await CliProcess.RunAsync("settle", "show", "--day", Day, "--party-kind", "provider", "--party", TestRecords.Provider, "--connection", scene.ConnectionString);
        var (listExit, listed) = await CliProcess.RunAsync("settle", "list", "--connection", scene.ConnectionString);
        // An auditor recomputes the published root through a server over the same database.
        await using TestServer server = await TestServer.StartAsync(postgres, database: scene.ConnectionString);
        var (rootExit, root) = await CliProcess.RunAsAsync(server, TestServer.AuditorKey, "audit", "merkle-root", "--provider", TestRecords.Provider, "--day", Day, "--settled");

        Assert.True(exit == 0, output);
        Assert.Contains("aggregate: 12 records of the day", output, StringComparison.Ordinal);
        Assert.Contains("reconcile: balanced", output, StringComparison.Ordinal);
        string hash = await scene.ScalarAsync<string>("SELECT encode(settlement_sha256, 'hex') FROM settlement_runs");
        Assert.Contains($"settlement sha256 {hash}", output, StringComparison.Ordinal);
        string day = Path.Combine(folder, Day);
        Assert.Equal(hash + "\n", await File.ReadAllTextAsync(Path.Combine(day, "settlement.sha256")));
        foreach (string file in new[] { "programme", $"provider-{TestRecords.Provider}", $"holder-{TestRecords.Holder}" })
        {
            Assert.True(File.Exists(Path.Combine(day, file + ".csv")) && File.Exists(Path.Combine(day, file + ".json")) && File.Exists(Path.Combine(day, file + ".txt")), file);
        }

        Assert.Equal(0, rerunExit);
        Assert.Contains("already closed; nothing was written", rerun, StringComparison.Ordinal);
        Assert.Contains($"settlement sha256 {hash}", rerun, StringComparison.Ordinal);
        Assert.Equal(0, showExit);
        Assert.Contains("fees under contracts: 144.00 CNY", shown, StringComparison.Ordinal);
        Assert.Equal(0, listExit);
        Assert.Contains(hash, listed, StringComparison.Ordinal);
        // The root the provider's statement file publishes, as the settle summary prints it and as an auditor recomputes it.
        string published = (await File.ReadAllLinesAsync(Path.Combine(day, $"provider-{TestRecords.Provider}.csv"))).Single(l => l.Contains(",merkle_root,", StringComparison.Ordinal)).Split(',')[^1];
        Assert.Matches($"{TestRecords.Provider} +12 +{published}", output);
        Assert.True(rootExit == 0, root);
        Assert.Contains($"root      {published}", root, StringComparison.Ordinal);
        Assert.Contains("leaves    12", root, StringComparison.Ordinal);
        Assert.Contains("cut-off   as settled", root, StringComparison.Ordinal);
        Directory.Delete(folder, recursive: true);
    }

    [Fact]
    public async Task A_settle_process_killed_before_it_commits_leaves_nothing_and_its_rerun_matches_an_uninterrupted_run()
    {
        await using VoucherScene killed = await SeedAsync(postgres);
        await using VoucherScene twin = await SeedAsync(postgres);

        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string argument in new[] { Path.Combine(AppContext.BaseDirectory, "metering.dll"), "settle", "--day", Day, "--connection", killed.ConnectionString, "--drill-pause-before-commit", "60" })
        {
            start.ArgumentList.Add(argument);
        }

        using (Process process = Process.Start(start)!)
        {
            _ = process.StandardOutput.ReadToEndAsync();
            // Everything is written and reconciled when the drill pause begins; kill it there.
            string? line;
            while ((line = await process.StandardError.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(60))) is not null && !line.Contains("drill:", StringComparison.Ordinal))
            {
            }

            Assert.NotNull(line);
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
        }

        // The killed session's transaction is rolled back once PostgreSQL notices the closed socket.
        long runs = -1;
        for (int i = 0; i < 50 && runs != 0; i++)
        {
            runs = await killed.ScalarAsync<long>("SELECT count(*) FROM settlement_runs");
            await Task.Delay(100);
        }

        Assert.Equal(0, runs);
        Assert.Equal(0, await killed.ScalarAsync<long>("SELECT count(*) FROM ledger_entries WHERE run_id IS NOT NULL"));
        var (exit, output) = await CliProcess.RunAsync("settle", "--day", Day, "--connection", killed.ConnectionString);
        Assert.True(exit == 0, output);
        SettlementOutcome uninterrupted = await twin.SettleAsync(VoucherScene.Day);
        SettlementOutcome rerun = (await killed.Settlement().GetAsync(VoucherScene.Day, CancellationToken.None))!;
        Assert.Equal(uninterrupted.SettlementHex, rerun.SettlementHex);
        Assert.Contains($"settlement sha256 {uninterrupted.SettlementHex}", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_refused_claim_prints_its_reason_and_exits_with_one()
    {
        await using VoucherScene scene = await SeedAsync(postgres);

        var (exit, output) = await CliProcess.RunAsync("voucher", "claim", "file", "--contract", "1", "--job", "job-1120-000", "--year", "2026", "--connection", scene.ConnectionString);

        Assert.Equal(1, exit);
        Assert.Contains("refused: USAGE_ALREADY_REDEEMED", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Voucher_and_settle_help_explain_the_commands()
    {
        var (exit, output) = await CliProcess.RunAsync("voucher", "--help");
        var (settleExit, settle) = await CliProcess.RunAsync("settle", "--help");

        Assert.Equal((0, 0), (exit, settleExit));
        foreach (string command in new[] { "holder", "params", "contract", "issue", "claim" })
        {
            Assert.Contains(command, output, StringComparison.Ordinal);
        }

        Assert.Contains("reconciliation", settle, StringComparison.Ordinal);
        Assert.Contains("--day", settle, StringComparison.Ordinal);
    }
}
