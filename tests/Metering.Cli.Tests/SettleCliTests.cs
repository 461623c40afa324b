using System.Diagnostics;
using System.Text.RegularExpressions;
using Dapper;
using Metering.Engine.Settlement;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;
using Npgsql;

namespace Metering.Cli.Tests;

/// <summary>
/// `metering voucher` and `metering settle` as clients of a running server over TLS: the key's
/// caller is who acts and who is recorded, the role policy refuses the rest, and bad input stops
/// before any call.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed partial class SettleCliTests(PostgresFixture postgres)
{
    private const string Day = "2026-11-20";

    /// <summary>A server and the engine over its database, disposed together.</summary>
    private sealed record Running(TestServer Server, VoucherScene Scene) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            await Scene.DisposeAsync();
            await Server.DisposeAsync();
        }
    }

    /// <summary>A server on a clock past <see cref="Day"/>, and the engine over its database for what the CLI does not do (ingest).</summary>
    private async Task<Running> StartAsync()
    {
        var clock = new ManualClock(VoucherScene.Now);
        TestServer server = await TestServer.StartAsync(postgres, time: clock);
        return new Running(server, VoucherScene.Over(server.ConnectionString, clock));
    }

    /// <summary>A holder with a contract, a voucher, a day of usage and a claim, written by the engine: ready to settle.</summary>
    private static async Task<long> SeedAsync(VoucherScene scene)
    {
        string holder = await scene.HolderAsync();
        var contract = await scene.ContractAsync(holder);
        await scene.VoucherAsync(contract.ContractId, 100_000_000);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, VoucherScene.Day, 12));
        await scene.ClaimJobsAsync(contract.ContractId, "job-1120-000", "job-1120-001");
        return contract.ContractId;
    }

    private static Task<(int ExitCode, string Output)> AsOperator(TestServer server, params string[] arguments) =>
        CliProcess.RunAsAsync(server, TestServer.OperatorKey, arguments);

    [Fact]
    public async Task An_operator_records_a_holder_contract_voucher_and_claim_and_the_settlement_key_closes_the_day_all_through_the_server()
    {
        await using Running running = await StartAsync();
        var (server, scene) = running;
        string folder = Directory.CreateTempSubdirectory("settle-cli-").FullName;

        var register = await AsOperator(server, "voucher", "holder", "register", "--code", TestRecords.Holder, "--name", "Tencent", "--type", "enterprise",
            "--district", "nanshan", "--established", "1999-11-11");
        var approve = await AsOperator(server, "voucher", "holder", "approve", TestRecords.Holder);
        var contract = await AsOperator(server, "voucher", "contract", "add", "--holder", TestRecords.Holder, "--provider", TestRecords.Provider,
            "--service-item", Admissions.ServiceItem, "--number", "HT-CLI-001", "--signed", "2026-01-01", "--starts", "2026-01-01", "--ends", "2026-12-31",
            "--amount-fen", "200000000", "--unit", "per_card_hour", "--non-related-declaration", "declarations/HT-CLI-001.pdf");
        long contractId = await scene.ScalarAsync<long>("SELECT contract_id FROM contracts WHERE contract_number = 'HT-CLI-001'");
        var issue = await AsOperator(server, "voucher", "issue", "--contract", $"{contractId}", "--year", "2026", "--face-fen", "100000000");
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(TestRecords.Holder, VoucherScene.Day, 12));
        var claim = await AsOperator(server, "voucher", "claim", "file", "--contract", $"{contractId}", "--job", "job-1120-000", "--job", "job-1120-001", "--year", "2026");
        var claims = await CliProcess.RunAsAsync(server, TestServer.AuditorKey, "voucher", "claim", "list", "--contract", $"{contractId}");
        var holder = await CliProcess.RunAsAsync(server, TestServer.AuditorKey, "voucher", "holder", "show", TestRecords.Holder);

        var settle = await CliProcess.RunAsAsync(server, TestServer.SettlementKey, "settle", "--day", Day, "--out", folder);
        var rerun = await CliProcess.RunAsAsync(server, TestServer.SettlementKey, "settle", "--day", Day);
        var shown = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "settle", "show", "--day", Day, "--party-kind", "provider", "--party", TestRecords.Provider);
        var listed = await CliProcess.RunAsAsync(server, TestServer.AuditorKey, "settle", "list");

        foreach (var (exit, output) in new[] { register, approve, contract, issue, claim, claims, holder, settle, rerun, shown, listed })
        {
            Assert.True(exit == 0, output);
        }

        Assert.Contains("Approved 9144030071526726XG", approve.Output, StringComparison.Ordinal);
        Assert.Contains("HT-CLI-001", contract.Output, StringComparison.Ordinal);
        Assert.Contains("1,000,000.00", issue.Output, StringComparison.Ordinal);
        // Two records of 40 card-minutes at 18 CNY per card-hour: 24 CNY eligible, half of it held.
        Assert.Matches(@"24\.00 +12\.00 .* 12\.00 +ratio", claim.Output);
        Assert.Matches($@"{contractId} +\d+ +{TestRecords.Holder} +2 +24\.00 +12\.00 +ratio +reserved", claims.Output);
        Assert.Contains("HT-CLI-001", holder.Output, StringComparison.Ordinal);
        // The server recorded the keys' callers, not a name the command line asserted.
        Assert.Equal("operator-one", await scene.ScalarAsync<string>("SELECT registered_by FROM voucher_holders WHERE holder_code = @code", new { code = TestRecords.Holder }));
        Assert.Equal("operator-one", await scene.ScalarAsync<string>("SELECT filed_by FROM claims"));
        Assert.Equal("settlement-batch", await scene.ScalarAsync<string>("SELECT settled_by FROM settlement_runs"));

        // Progress comes from the server, step by step, on standard error.
        Assert.Contains("aggregate: 12 records of the day", settle.Output, StringComparison.Ordinal);
        Assert.Contains("reconcile: balanced", settle.Output, StringComparison.Ordinal);
        string hash = await scene.ScalarAsync<string>("SELECT encode(settlement_sha256, 'hex') FROM settlement_runs");
        Assert.Contains($"settlement sha256 {hash}", settle.Output, StringComparison.Ordinal);
        string day = Path.Combine(folder, Day);
        Assert.Equal(hash + "\n", await File.ReadAllTextAsync(Path.Combine(day, "settlement.sha256")));
        foreach (string file in new[] { "programme", $"provider-{TestRecords.Provider}", $"holder-{TestRecords.Holder}" })
        {
            Assert.True(new[] { ".csv", ".json", ".txt", ".html" }.All(extension => File.Exists(Path.Combine(day, file + extension))), file);
        }

        // The files are the stored statements: concatenated in order they hash to the settlement hash.
        byte[] concatenated = [.. new[] { "programme", $"provider-{TestRecords.Provider}", $"holder-{TestRecords.Holder}" }
            .SelectMany(name => File.ReadAllBytes(Path.Combine(day, name + ".csv")))];
        Assert.Equal(hash, Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(concatenated)));
        string published = (await File.ReadAllLinesAsync(Path.Combine(day, $"provider-{TestRecords.Provider}.csv"))).Single(l => l.Contains(",merkle_root,", StringComparison.Ordinal)).Split(',')[^1];
        Assert.Matches($"{TestRecords.Provider} +12 +{published}", settle.Output);

        Assert.Contains("already closed; nothing was written", rerun.Output, StringComparison.Ordinal);
        Assert.Contains($"settlement sha256 {hash}", rerun.Output, StringComparison.Ordinal);
        Assert.Equal(1, await scene.ScalarAsync<long>("SELECT count(*) FROM settlement_runs"));
        // The readable statement is Chinese, with the holder's name beside its credit code.
        Assert.Matches(@"\n  合同内费用（元）\s+144\.00\n", shown.Output);
        Assert.Contains($"Tencent（{TestRecords.Holder}）", shown.Output, StringComparison.Ordinal);
        Assert.Contains("<html lang=\"zh-CN\">", await File.ReadAllTextAsync(Path.Combine(day, $"holder-{TestRecords.Holder}.html")), StringComparison.Ordinal);
        Assert.Contains(hash, listed.Output, StringComparison.Ordinal);
        Assert.Contains("settlement-batch", listed.Output, StringComparison.Ordinal);
        Directory.Delete(folder, recursive: true);
    }

    [Fact]
    public async Task A_settle_killed_before_the_run_commits_cancels_the_run_on_the_server_and_its_rerun_matches_an_uninterrupted_run()
    {
        await using Running running = await StartAsync();
        var (server, scene) = running;
        await SeedAsync(scene);
        await using VoucherScene twin = await VoucherScene.StartAsync(postgres);
        await SeedAsync(twin);

        // The run's first write waits on this lock, all its reading and pricing done, until the test lets go.
        await using var blocker = new NpgsqlConnection(server.ConnectionString);
        await blocker.OpenAsync();
        NpgsqlTransaction holding = await blocker.BeginTransactionAsync();
        await blocker.ExecuteAsync("LOCK TABLE settlement_runs IN EXCLUSIVE MODE", transaction: holding);
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string argument in new[] { Path.Combine(AppContext.BaseDirectory, "metering.dll"), "settle", "--day", Day,
            "--server", server.Address.ToString().TrimEnd('/'), "--ca", TestCertificates.CaPemPath, "--api-key", TestServer.SettlementKey })
        {
            start.ArgumentList.Add(argument);
        }

        using (Process process = Process.Start(start)!)
        {
            _ = process.StandardOutput.ReadToEndAsync();
            string? line;
            while ((line = await process.StandardError.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(60))) is not null && !line.Contains("statements:", StringComparison.Ordinal))
            {
            }

            Assert.NotNull(line);
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
        }

        // The server cancels the run with its call: the write stops waiting although the lock is still held.
        long waiting = -1;
        for (int i = 0; i < 100 && waiting != 0; i++)
        {
            waiting = await server.ScalarAsync<long>("SELECT count(*) FROM pg_locks WHERE relation = 'settlement_runs'::regclass AND NOT granted");
            await Task.Delay(100);
        }

        Assert.Equal(0, waiting);
        await holding.RollbackAsync();
        await Task.Delay(500);
        Assert.Equal(0, await scene.ScalarAsync<long>("SELECT count(*) FROM settlement_runs"));
        Assert.Equal(0, await scene.ScalarAsync<long>("SELECT count(*) FROM ledger_entries WHERE run_id IS NOT NULL"));

        var (exit, output) = await CliProcess.RunAsAsync(server, TestServer.SettlementKey, "settle", "--day", Day);
        SettlementOutcome uninterrupted = await twin.SettleAsync(VoucherScene.Day);

        Assert.True(exit == 0, output);
        Assert.Contains($"settlement sha256 {uninterrupted.SettlementHex}", output, StringComparison.Ordinal);
        Assert.Equal(uninterrupted.SettlementHex, await scene.ScalarAsync<string>("SELECT encode(settlement_sha256, 'hex') FROM settlement_runs"));
    }

    [Fact]
    public async Task A_provider_key_can_neither_settle_nor_write_vouchers_through_the_cli_and_nothing_changes()
    {
        await using Running running = await StartAsync();
        var (server, scene) = running;
        long contractId = await SeedAsync(scene);
        string holdsBefore = await HoldsAsync(scene);
        long holders = await scene.ScalarAsync<long>("SELECT count(*) FROM voucher_holders");

        var settle = await CliProcess.RunAsAsync(server, TestServer.ProviderKey, "settle", "--day", Day);
        var register = await CliProcess.RunAsAsync(server, TestServer.ProviderKey, "voucher", "holder", "register", "--code", VoucherScene.NewCode(), "--name", "Shell Co",
            "--type", "enterprise", "--district", "nanshan", "--established", "2020-01-01");
        var claim = await CliProcess.RunAsAsync(server, TestServer.ProviderKey, "voucher", "claim", "file", "--contract", $"{contractId}", "--job", "job-1120-005", "--year", "2026");
        var @void = await CliProcess.RunAsAsync(server, TestServer.ProviderKey, "voucher", "claim", "void", "1", "--reason", "the provider would like its usage back");

        foreach (var (exit, output) in new[] { settle, register, claim, @void })
        {
            Assert.Equal(4, exit);
            Assert.Contains("refused: PermissionDenied ROLE_NOT_ALLOWED", output, StringComparison.Ordinal);
        }

        Assert.Equal(0, await scene.ScalarAsync<long>("SELECT count(*) FROM settlement_runs"));
        Assert.Equal(holders, await scene.ScalarAsync<long>("SELECT count(*) FROM voucher_holders"));
        Assert.Equal(holdsBefore, await HoldsAsync(scene));
    }

    [Fact]
    public async Task An_auditor_or_operator_key_cannot_settle_but_the_auditor_reads_the_claims()
    {
        await using Running running = await StartAsync();
        var (server, scene) = running;
        long contractId = await SeedAsync(scene);

        var auditor = await CliProcess.RunAsAsync(server, TestServer.AuditorKey, "settle", "--day", Day);
        var @operator = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "settle", "--day", Day);
        var auditorWrites = await CliProcess.RunAsAsync(server, TestServer.AuditorKey, "voucher", "contract", "support", "--contract", $"{contractId}",
            "--source", "district fund", "--amount-fen", "100");
        var reads = await CliProcess.RunAsAsync(server, TestServer.AuditorKey, "voucher", "claim", "show", "1");

        foreach (var (exit, output) in new[] { auditor, @operator, auditorWrites })
        {
            Assert.Equal(4, exit);
            Assert.Contains("refused: PermissionDenied ROLE_NOT_ALLOWED", output, StringComparison.Ordinal);
        }

        Assert.Equal(0, await scene.ScalarAsync<long>("SELECT count(*) FROM settlement_runs"));
        Assert.Equal(0, await scene.ScalarAsync<long>("SELECT count(*) FROM contract_other_support"));
        Assert.True(reads.ExitCode == 0, reads.Output);
        Assert.Contains($"Claim 1 on contract {contractId}", reads.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_refused_claim_prints_the_status_and_reason_and_exits_with_four()
    {
        await using Running running = await StartAsync();
        var (server, scene) = running;
        long contractId = await SeedAsync(scene);

        var (exit, output) = await AsOperator(server, "voucher", "claim", "file", "--contract", $"{contractId}", "--job", "job-1120-000", "--year", "2026");

        Assert.Equal(4, exit);
        Assert.Contains("refused: AlreadyExists USAGE_ALREADY_REDEEMED", output, StringComparison.Ordinal);
        Assert.Equal(1, await scene.ScalarAsync<long>("SELECT count(*) FROM claims"));
    }

    [Fact]
    public async Task Bad_input_exits_with_two_before_any_call_and_changes_nothing()
    {
        await using Running running = await StartAsync();
        var (server, scene) = running;
        long contractId = await SeedAsync(scene);
        string holdsBefore = await HoldsAsync(scene);
        long holders = await scene.ScalarAsync<long>("SELECT count(*) FROM voucher_holders");
        string contract = $"{contractId}";

        // Each is a mistake the server would refuse with exit 4 if it were asked; the CLI catches it first.
        (string[] Arguments, string Says)[] mistakes =
        [
            (["settle", "--day", "2026-11-31"], "--day must be a date as yyyy-MM-dd, not '2026-11-31'"),
            (["settle", "show", "--day", Day, "--party-kind", "holder"], "--party-kind holder needs --party"),
            (["voucher", "holder", "register", "--code", VoucherScene.NewCode(), "--name", "X", "--type", "enterprise", "--district", "nanshan", "--established", "11/11/1999"],
                "--established must be a date as yyyy-MM-dd"),
            (["voucher", "issue", "--contract", contract, "--year", "2026", "--face-fen", "0"], "--face-fen must be 1 or more, not 0"),
            (["voucher", "claim", "file", "--contract", contract, "--job", "job-1120-003", "--from", Day], "not both and not neither"),
            (["voucher", "claim", "file", "--contract", contract, "--from", "2026-11-21", "--until", Day], "--until 2026-11-20 is before --from 2026-11-21"),
        ];
        foreach (var (arguments, says) in mistakes)
        {
            var (exit, output) = await CliProcess.RunAsAsync(server, TestServer.SettlementKey, arguments);
            Assert.True(exit == 2, output);
            Assert.Contains(says, output, StringComparison.Ordinal);
            Assert.DoesNotContain("refused:", output, StringComparison.Ordinal);
        }

        // Without a key nothing is sent at all: the server is not even named.
        var (keyless, keylessOutput) = await CliProcess.RunAsync("settle", "--day", Day);
        Assert.Equal(2, keyless);
        Assert.Contains("give --api-key or set METERING_API_KEY", keylessOutput, StringComparison.Ordinal);

        Assert.Equal(0, await scene.ScalarAsync<long>("SELECT count(*) FROM settlement_runs"));
        Assert.Equal(holders, await scene.ScalarAsync<long>("SELECT count(*) FROM voucher_holders"));
        Assert.Equal(holdsBefore, await HoldsAsync(scene));
    }

    [Fact]
    public async Task Voucher_and_settle_help_explain_the_commands_and_offer_no_database_options()
    {
        var (exit, output) = await CliProcess.RunAsync("voucher", "--help");
        var (settleExit, settle) = await CliProcess.RunAsync("settle", "--help");
        var (fileExit, file) = await CliProcess.RunAsync("voucher", "claim", "file", "--help");

        Assert.Equal((0, 0, 0), (exit, settleExit, fileExit));
        Assert.Superset(new HashSet<string>(["holder", "params", "contract", "issue", "claim"]), new HashSet<string>(CliHelp.Commands(output)));

        Assert.Contains("reconciliation", settle, StringComparison.Ordinal);
        Assert.Superset(new HashSet<string>(["--day", "--allow-empty", "--out"]), new HashSet<string>(CliHelp.Options(settle)));
        Assert.Superset(new HashSet<string>(["--contract", "--job", "--from", "--until"]), new HashSet<string>(CliHelp.Options(file)));
        foreach (string help in new[] { settle, file })
        {
            IReadOnlySet<string> options = CliHelp.Options(help);
            Assert.Superset(new HashSet<string>(["--server", "--api-key", "--ca", "--client-cert", "--client-key"]), new HashSet<string>(options));
            Assert.DoesNotContain(options, option => DatabaseOption().IsMatch(option));
            Assert.DoesNotMatch(DatabaseOption(), help);
        }
    }

    /// <summary>Every claim's hold, every voucher's balances and the ledger's size, as one string to compare before and after.</summary>
    private static async Task<string> HoldsAsync(VoucherScene scene)
    {
        List<string> holds = await scene.QueryAsync<string>("SELECT concat_ws(',', claim_id, state, amount_fen) FROM voucher_holds ORDER BY claim_id");
        List<string> vouchers = await scene.QueryAsync<string>("SELECT concat_ws(',', voucher_id, held_fen, posted_fen) FROM vouchers ORDER BY voucher_id");
        long entries = await scene.ScalarAsync<long>("SELECT count(*) FROM ledger_entries");
        return $"{string.Join(';', holds)} | {string.Join(';', vouchers)} | {entries} ledger entries";
    }

    [GeneratedRegex(@"--connection|--data-dir|--as\b")]
    private static partial Regex DatabaseOption();
}
