using System.Diagnostics;
using Metering.Engine.Identity;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>`metering audit` as an auditor runs it: a client of a running server over TLS, as the caller its key names.</summary>
[Collection(PostgresCollection.Name)]
public sealed class AuditCliTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Verify_exits_3_and_prints_the_evidence_when_a_chain_is_broken()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync("cluster-a", 1, 30);
        await scene.TamperAsync($"UPDATE usage_records SET site = 'elsewhere' WHERE provider_id = '{TestRecords.Provider}' AND stream_id = 'cluster-a' AND sequence = 12");

        var (exit, output) = await CliProcess.RunAsAsync(scene.Server, TestServer.AuditorKey, "audit", "verify", "--provider", TestRecords.Provider);

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

        var (rootExit, rootOutput) = await CliProcess.RunAsAsync(scene.Server, TestServer.AuditorKey, "audit", "merkle-root", "--provider", TestRecords.Provider, "--day", "2026-11-20");
        var (proofExit, proof) = await CliProcess.RunAsAsync(scene.Server, TestServer.AuditorKey, "audit", "proof", "--provider", TestRecords.Provider, "--stream", "cluster-a", "--sequence", "6");

        Assert.True((rootExit, proofExit) == (0, 0), rootOutput + proof);
        string root = rootOutput.Split('\n').Single(l => l.StartsWith("root", StringComparison.Ordinal))[4..].Trim();
        Assert.Contains("leaves    11", rootOutput, StringComparison.Ordinal);
        Assert.Contains("cut-off   everything committed", rootOutput, StringComparison.Ordinal);
        var bash = new ProcessStartInfo("bash") { RedirectStandardInput = true, RedirectStandardOutput = true, UseShellExecute = false };
        using Process process = Process.Start(bash)!;
        await process.StandardInput.WriteAsync(proof);
        process.StandardInput.Close();
        string printed = await process.StandardOutput.ReadToEndAsync();
        await process.WaitForExitAsync();
        Assert.Equal(root, printed.Trim());
    }

    [Fact]
    public async Task The_query_log_records_the_keys_subject_and_a_claimed_name_is_not_an_option()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync("cluster-a", 1, 10);

        var (exit, output) = await CliProcess.RunAsAsync(scene.Server, TestServer.AuditorKey, "audit", "usage", "--provider", TestRecords.Provider, "--from", "2026-11-20", "--to", "2026-11-20", "--by", "model");
        var (claimExit, claim) = await CliProcess.RunAsAsync(scene.Server, TestServer.AuditorKey, "audit", "usage", "--provider", TestRecords.Provider, "--from", "2026-11-20", "--to", "2026-11-20",
            "--as", "auditor-zhang");
        var (logExit, log) = await CliProcess.RunAsAsync(scene.Server, TestServer.AuditorKey, "audit", "log", "--actor", "auditor-one");

        Assert.True((exit, logExit) == (0, 0), output + log);
        // Ten records of 8 H100 for five minutes: 6,596,000,000 nPFh, 6.666 device-hours.
        Assert.Contains("H100-SXM", output, StringComparison.Ordinal);
        Assert.Matches(@"total\s+10\s+6\.666\s+6\.596000000", output);
        // Who asked is the key's business, not the caller's: --as is gone, so the claim is bad usage and never reaches the server.
        Assert.Equal(2, claimExit);
        Assert.Contains("--as", claim, StringComparison.Ordinal);
        Assert.Matches(@"auditor-one\s+auditor\s+grpc\s+QueryUsage\s+" + TestRecords.Provider, log);
        Assert.Contains("GROUP_BY_DEVICE_MODEL", log, StringComparison.Ordinal);
        List<(string Actor, string Role, string Via, string Query, string? Provider)> rows = await scene.Server.QueryAsync<(string, string, string, string, string?)>(
            "SELECT actor, role, via, query, provider_id FROM audit_query_log ORDER BY query_id");
        Assert.Equal([("auditor-one", "auditor", "grpc", "QueryUsage", TestRecords.Provider), ("auditor-one", "auditor", "grpc", "ListAuditQueries", null)], rows);
    }

    [Fact]
    public async Task Export_writes_the_streamed_csv_to_a_file_or_to_standard_output()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync("cluster-a", 1, 25);
        string folder = Directory.CreateTempSubdirectory("audit-export-").FullName;
        string path = Path.Combine(folder, "nov.csv");

        var (fileExit, fileOutput) = await CliProcess.RunAsAsync(scene.Server, TestServer.AuditorKey, "audit", "export", "--provider", TestRecords.Provider,
            "--from", "2026-11-20", "--to", "2026-11-20", "--format", "csv", "--out", path);
        var (stdoutExit, stdout) = await CliProcess.RunAsAsync(scene.Server, TestServer.AuditorKey, "audit", "export", "--provider", TestRecords.Provider,
            "--from", "2026-11-20", "--to", "2026-11-20", "--stream", "cluster-a", "--format", "csv", "--out", "-");

        Assert.True((fileExit, stdoutExit) == (0, 0), fileOutput + stdout);
        Assert.Contains($"Exported 25 records to {path}.", fileOutput, StringComparison.Ordinal);
        string[] lines = await File.ReadAllLinesAsync(path);
        Assert.Equal(26, lines.Length);
        Assert.StartsWith("provider_id,", lines[0], StringComparison.Ordinal);
        Assert.Equal(25, lines.Count(l => l.StartsWith(TestRecords.Provider + ",cluster-a,", StringComparison.Ordinal)));
        // Only the finished file is left: the partial one it was streamed into was moved there.
        Assert.Equal([path], Directory.GetFiles(folder));
        // On standard output the CSV is the same bytes, and the summary goes to standard error.
        Assert.Contains(string.Join('\n', lines), stdout.ReplaceLineEndings("\n"), StringComparison.Ordinal);
        Assert.Contains("Exported 25 records to standard output.", stdout, StringComparison.Ordinal);
        Directory.Delete(folder, recursive: true);
    }

    [Fact]
    public async Task A_provider_key_asking_for_another_providers_chains_usage_or_export_is_refused_and_gets_nothing()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync("cluster-a", 1, 5);
        string path = Path.Combine(Path.GetTempPath(), $"stolen-{Guid.NewGuid():N}.csv");

        // The other provider's key, after the first provider's chains, usage and records.
        var (verifyExit, verify) = await CliProcess.RunAsAsync(scene.Server, TestServer.OtherProviderKey, "audit", "verify", "--provider", TestRecords.Provider);
        var (usageExit, usage) = await CliProcess.RunAsAsync(scene.Server, TestServer.OtherProviderKey, "audit", "usage", "--provider", TestRecords.Provider,
            "--from", "2026-11-20", "--to", "2026-11-20");
        var (exportExit, export) = await CliProcess.RunAsAsync(scene.Server, TestServer.OtherProviderKey, "audit", "export", "--provider", TestRecords.Provider,
            "--from", "2026-11-20", "--to", "2026-11-20", "--format", "csv", "--out", path);

        Assert.Equal((4, 4, 4), (verifyExit, usageExit, exportExit));
        Assert.Contains("refused: PermissionDenied OTHER_PROVIDER", verify, StringComparison.Ordinal);
        Assert.Contains("refused: PermissionDenied OTHER_PROVIDER", usage, StringComparison.Ordinal);
        Assert.Contains("refused: PermissionDenied OTHER_PROVIDER", export, StringComparison.Ordinal);
        // Nothing came back: no chain table, no totals, no file (not even an empty or partial one).
        Assert.DoesNotContain("intact", verify, StringComparison.Ordinal);
        Assert.DoesNotContain("total", usage, StringComparison.Ordinal);
        Assert.False(File.Exists(path) || File.Exists(path + ".partial"));
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM audit_query_log"));
    }

    [Fact]
    public async Task An_unknown_provider_an_empty_period_or_a_malformed_code_is_said_and_exits_non_zero()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync("cluster-a", 1, 5);
        string unknown = CreditCode.Complete("91440300MA5K00002");
        // A provider the registry knows that never streamed: registered, nothing more.
        string registered = CreditCode.Complete("91440300MA5K00003");
        await scene.Server.RegistryClient().RegisterOrganisationAsync(new RegisterOrganisationRequest
        {
            Organisation = new Organisation { CreditCode = registered, Name = "Registered only", LegalForm = LegalForm.Enterprise, District = "福田区", EstablishedOn = "2015-06-01" },
        }, TestServer.Bearer(TestServer.OperatorKey));

        var (unknownExit, unknownOutput) = await CliProcess.RunAsAsync(scene.Server, TestServer.AuditorKey, "audit", "verify", "--provider", unknown);
        var (emptyExit, emptyOutput) = await CliProcess.RunAsAsync(scene.Server, TestServer.AuditorKey, "audit", "verify", "--provider", registered);
        var (usageExit, usageOutput) = await CliProcess.RunAsAsync(scene.Server, TestServer.AuditorKey, "audit", "usage", "--provider", TestRecords.Provider,
            "--from", "2026-10-01", "--to", "2026-10-31");
        var (anomaliesExit, anomaliesOutput) = await CliProcess.RunAsAsync(scene.Server, TestServer.AuditorKey, "audit", "anomalies", "--provider", TestRecords.Provider,
            "--from", "2026-10-01", "--to", "2026-10-31");
        var (malformedExit, malformedOutput) = await CliProcess.RunAsAsync(scene.Server, TestServer.AuditorKey, "audit", "anomalies", "--provider", TestRecords.Provider[..17] + "X",
            "--from", "2026-11-20", "--to", "2026-11-20");

        Assert.Equal(4, unknownExit);
        Assert.Contains($"refused: NotFound AUDIT_NOT_FOUND: no provider {unknown} is registered", unknownOutput, StringComparison.Ordinal);
        Assert.Equal(6, emptyExit);
        Assert.Contains($"{registered} has no streams: nothing was verified.", emptyOutput, StringComparison.Ordinal);
        Assert.Equal(6, usageExit);
        Assert.Contains($"No usage records of {TestRecords.Provider} match from 2026-10-01 to 2026-10-31", usageOutput, StringComparison.Ordinal);
        Assert.Equal(6, anomaliesExit);
        Assert.Contains("there was nothing to judge, which is not a clean period", anomaliesOutput, StringComparison.Ordinal);
        Assert.Equal(2, malformedExit);
        Assert.Contains("is not a unified social credit code", malformedOutput, StringComparison.Ordinal);
        // The malformed code never left the machine; the four well-formed questions are on record.
        Assert.Equal(4L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM audit_query_log WHERE actor = 'auditor-one'"));
    }
}
