using System.Globalization;
using System.Text.Json.Nodes;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>
/// `metering registry batch put --rules FILE` as an operator runs it: the real process against a
/// real server over TLS, whose clock is the system's. The sample rules file opens a batch; a
/// change after its window opened needs --reason; a bad file exits with 2 and changes nothing.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class BatchRulesCliTests(PostgresFixture postgres)
{
    [Fact]
    public async Task The_sample_rules_file_opens_a_batch_and_once_it_is_open_only_a_correction_with_a_reason_changes_it()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string opensNow = Local(DateTimeOffset.UtcNow.AddDays(-1));
        string rules = await RulesFileAsync(r => r["windowOpens"] = opensNow);
        string lowered = await RulesFileAsync(r =>
        {
            r["windowOpens"] = opensNow;
            r["capacityMinimumGflops"] = 200_000_000;
        });

        var (opened, openedOutput) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "registry", "batch", "put", "--rules", rules);
        var (again, againOutput) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "registry", "batch", "put", "--rules", rules);
        var (silent, silentOutput) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "registry", "batch", "put", "--rules", lowered);
        var (provider, providerOutput) = await CliProcess.RunAsAsync(server, TestServer.ProviderKey, "registry", "batch", "put", "--rules", lowered,
            "--reason", "a provider would like a lower bar");

        Assert.True(opened == 0, openedOutput);
        Assert.Contains("Saved batch 2027, rules version 1.", openedOutput, StringComparison.Ordinal);
        Assert.Contains("300.000", openedOutput, StringComparison.Ordinal);
        Assert.Equal(0, again);
        Assert.Contains("Saved batch 2027, rules version 1.", againOutput, StringComparison.Ordinal);
        Assert.Equal(4, silent);
        Assert.Contains("refused: FailedPrecondition BATCH_RULES_FROZEN", silentOutput, StringComparison.Ordinal);
        Assert.Equal(4, provider);
        Assert.Contains("refused: PermissionDenied ROLE_NOT_ALLOWED", providerOutput, StringComparison.Ordinal);
        Assert.Equal(300_000_000L, await server.ScalarAsync<long>("SELECT capacity_minimum_gflops FROM admission_batches WHERE batch_id = '2027'"));
        Assert.Equal(["create"], await BatchActionsAsync(server));

        var (corrected, correctedOutput) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "registry", "batch", "put", "--rules", lowered,
            "--reason", "Corrected by the bureau's notice: the bar of this batch is 200 PFLOPS.");
        var (listed, listedOutput) = await CliProcess.RunAsAsync(server, TestServer.AuditorKey, "registry", "batch", "list");

        Assert.True(corrected == 0, correctedOutput);
        Assert.Contains("Saved batch 2027, rules version 2.", correctedOutput, StringComparison.Ordinal);
        Assert.Equal(0, listed);
        Assert.Contains("Batch 2027, rules version 2, recorded by operator-one", listedOutput, StringComparison.Ordinal);
        Assert.Contains("(correction: Corrected by the bureau's notice: the bar of this batch is 200 PFLOPS.)", listedOutput, StringComparison.Ordinal);
        Assert.Contains("200.000", listedOutput, StringComparison.Ordinal);
        Assert.Equal(["create", "correct"], await BatchActionsAsync(server));
    }

    [Fact]
    public async Task A_bad_rules_file_exits_with_2_naming_its_fault_and_changes_nothing()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        long batches = await server.ScalarAsync<long>("SELECT count(*) FROM admission_batches");
        long changes = await server.ScalarAsync<long>("SELECT count(*) FROM registry_history");
        var cases = new (string Fault, string File, string Message)[]
        {
            ("not JSON", await WriteAsync("{ \"batchId\": \"2027\", "), "is not a valid rules file"),
            ("a field the format does not have", await RulesFileAsync(r => r["capacityMinimumPflops"] = 300), "capacityMinimumPflops"),
            ("a rule left out", await RulesFileAsync(r => r.Remove("voucherProgrammeYear")), "voucherProgrammeYear"),
            ("a bar of nothing", await RulesFileAsync(r => r["capacityMinimumGflops"] = 0), "capacity_minimum_gflops is 0"),
            ("a bar in quotes", await RulesFileAsync(r => r["capacityMinimumGflops"] = "300000000"), "is not a valid rules file"),
            ("a bar with a fraction", await RulesFileAsync(r => r["capacityMinimumGflops"] = 300_000_000.5), "is not a valid rules file"),
            ("a material misspelt", await RulesFileAsync(r => r["materialsRequired"] = new JsonArray("BUSINESS_LICENSE", "FINANCIAL_REPORT")), "'BUSINESS_LICENSE'"),
            ("a time without its hour", await RulesFileAsync(r => r["windowOpens"] = "2026-11-01"), "windowOpens must be a time in Asia/Shanghai"),
            ("an audit year of the window's year", await RulesFileAsync(r => r["auditReportYear"] = 2026), "audit_report_year is 2026"),
            ("no file at all", Path.Combine(Directory.CreateTempSubdirectory("metering-rules-").FullName, "missing.json"), "no rules file at"),
        };

        foreach (var (fault, file, message) in cases)
        {
            var (exit, output) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "registry", "batch", "put", "--rules", file);

            Assert.True(exit == 2 && output.Contains(message, StringComparison.Ordinal), $"{fault}: exit {exit}, expected 2 and '{message}':\n{output}");
        }

        Assert.Equal(batches, await server.ScalarAsync<long>("SELECT count(*) FROM admission_batches"));
        Assert.Equal(changes, await server.ScalarAsync<long>("SELECT count(*) FROM registry_history"));
    }

    /// <summary>samples/Registry/batch-2027.json, changed by <paramref name="change"/>, in a file of its own.</summary>
    public static async Task<string> RulesFileAsync(Action<JsonObject> change)
    {
        string sample = Path.Combine(TestRecords.RepositoryRoot(), "samples", "Registry", "batch-2027.json");
        JsonObject rules = JsonNode.Parse(await File.ReadAllTextAsync(sample))!.AsObject();
        change(rules);
        return await WriteAsync(rules.ToJsonString());
    }

    private static async Task<string> WriteAsync(string text)
    {
        string file = Path.Combine(Directory.CreateTempSubdirectory("metering-rules-").FullName, "batch.json");
        await File.WriteAllTextAsync(file, text);
        return file;
    }

    private static async Task<string[]> BatchActionsAsync(TestServer server) =>
        [.. await server.QueryAsync<string>("SELECT action FROM registry_history WHERE entity = 'batch' AND entity_key = '2027' ORDER BY change_id")];

    private static string Local(DateTimeOffset instant) => instant.ToOffset(TimeSpan.FromHours(8)).ToString("yyyy-MM-dd HH:mm", CultureInfo.InvariantCulture);
}
