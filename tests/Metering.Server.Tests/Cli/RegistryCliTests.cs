using System.Globalization;
using System.Text.RegularExpressions;
using Dapper;
using Google.Protobuf;
using Metering.Engine.Identity;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Metering.Server.Tests.Infrastructure;
using Metering.Tests.Shared;
using Npgsql;

namespace Metering.Server.Tests.Cli;

/// <summary>
/// `metering registry` as an operator runs it: the real process against a database of its own.
/// The CLI uses the system clock, so batches here are open around the real current time.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class RegistryCliTests(PostgresFixture postgres)
{
    /// <summary>A valid Shenzhen credit code that no other test or sample uses.</summary>
    private static readonly string NewProvider = CreditCode.Complete("91440300MA5G00002");

    private const string Operator = "ops-test";
    private const string SecondOperator = "ops-reviewer";

    [Fact]
    public async Task A_new_organisation_is_taken_from_registration_to_admission_and_the_history_shows_every_step()
    {
        string database = await postgres.CreateDatabaseAsync();
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(database);
        DateTimeOffset now = DateTimeOffset.UtcNow;

        await SucceedsAsync(database, "batch", "put", "--id", "cli-now", "--opens", Local(now.AddDays(-1)), "--closes", Local(now.AddDays(1)),
            "--validity-ends", Local(now.AddDays(365)), "--notice-days", "0", "--audit-year", "2025", "--as", Operator);
        string registered = await SucceedsAsync(database, "org", "add", "--code", NewProvider, "--name", "深圳测试智算有限公司", "--legal-form", "enterprise",
            "--district", "南山区", "--established", "2016-04-01", "--as", Operator);
        Assert.Contains($"Registered {NewProvider}", registered, StringComparison.Ordinal);
        await SucceedsAsync(database, "licence", "add", "--code", NewProvider, "--number", "B1-20200077", "--issuer", "工业和信息化部",
            "--from", "2020-01-01", "--until", "2035-12-31", "--as", Operator);
        await Admissions.WriteProofAsync(dataSource, new ManualClock(now), NewProvider);

        string filed = await SucceedsAsync(database, "apply", "--file", await ApplicationFileAsync("cli-now", NewProvider));
        AssertField("state", "AWAITING_MATERIAL_REVIEW", filed);
        AssertField("declared", "316.608 PFLOPS FP16", filed);
        string id = (await CountAsync(dataSource, $"SELECT application_id FROM applications WHERE provider_id = '{NewProvider}'")).ToString(CultureInfo.InvariantCulture);

        // Exclusive flags given together are a usage error and decide nothing.
        var (conflict, conflictOutput) = await RegistryAsync(database, "review", id, "--pass", "--reject", "--as", Operator);
        Assert.Equal(2, conflict);
        Assert.Contains("give either --pass or --reject, not both", conflictOutput, StringComparison.Ordinal);
        Assert.Equal("awaiting_material_review", await StateAsync(dataSource, id));

        AssertField("state", "AWAITING_VERIFICATION", await SucceedsAsync(database, "review", id, "--pass", "--as", Operator));
        // Four-eyes: the typed figure is proposed, then approved by a second operator.
        string proposed = await SucceedsAsync(database, "verify", id, "--verified-pflops", "316.608", "--pass", "--as", Operator);
        AssertField("state", "AWAITING_VERIFICATION", proposed);
        Assert.Contains($"proposal 1: verification pass at 316.608 PFLOPS FP16 by {Operator}", proposed, StringComparison.Ordinal);
        var (alone, aloneOutput) = await RegistryAsync(database, "approve", id, "--proposal", "1", "--as", Operator);
        Assert.Equal(1, alone);
        Assert.Contains("refused: SAME_OPERATOR", aloneOutput, StringComparison.Ordinal);
        string verified = await SucceedsAsync(database, "approve", id, "--proposal", "1", "--as", SecondOperator);
        AssertField("state", "AWAITING_PUBLIC_NOTICE", verified);
        AssertField("verified", "316.608 PFLOPS FP16", verified);
        AssertField("state", "IN_PUBLIC_NOTICE", await SucceedsAsync(database, "notice", "open", id, "--as", Operator));
        string objected = await SucceedsAsync(database, "objection", "add", id, "--objector", "某竞争企业", "--content", "dc2 capacity is double-counted", "--as", Operator);
        Assert.Contains("某竞争企业: dc2 capacity is double-counted", objected, StringComparison.Ordinal);
        AssertField("state", "IN_PUBLIC_NOTICE", await SucceedsAsync(database, "decide", id, "--admit", "--reasons", "site visit found dc2 dedicated", "--as", Operator));
        AssertField("state", "AWAITING_ADMISSION_NOTICE", await SucceedsAsync(database, "approve", id, "--proposal", "2", "--as", SecondOperator));
        string admitted = await SucceedsAsync(database, "notice", "issue", id, "--number", "深科创训力入库〔cli〕1号", "--as", Operator);
        AssertField("state", "ADMITTED", admitted);
        AssertField("admission notice", "深科创训力入库〔cli〕1号", admitted);

        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync();
        var application = await connection.QuerySingleAsync<(string State, long Verified, string Notice)>(
            "SELECT state, verified_fp16_gflops, notice_number FROM applications WHERE application_id = @id", new { id = long.Parse(id, CultureInfo.InvariantCulture) });
        Assert.Equal(("admitted", 316_608_000L, "深科创训力入库〔cli〕1号"), application);
        Assert.Equal(
            new[] { "filing", "material_review", "verification", "public_notice", "objection", "decision", "admission_notice" },
            await connection.QueryAsync<string>("SELECT stage FROM application_stages WHERE application_id = @id ORDER BY stage_no", new { id = long.Parse(id, CultureInfo.InvariantCulture) }));
        Assert.Equal(1L, await connection.ExecuteScalarAsync<long>(
            "SELECT count(*) FROM service_items WHERE provider_id = @NewProvider AND service_item = 'gpu-training' AND ended_at IS NULL", new { NewProvider }));
        // The filing itself is the applicant's own act, recorded under its credit code.
        Assert.Equal(
            new[] { "register", "add", "material_review", "propose", "public_notice", "record", "propose", "file", "admission_notice", "admit" },
            await connection.QueryAsync<string>("SELECT action FROM registry_history WHERE provider_id = @NewProvider AND actor = @Operator ORDER BY change_id",
                new { NewProvider, Operator }));

        string history = await SucceedsAsync(database, "history", "--code", NewProvider);
        foreach (string expected in new[] { "register", "file", "material_review", "state: awaiting_material_review → awaiting_verification", "admit", Operator, NewProvider })
        {
            Assert.Contains(expected, history, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task A_malformed_application_file_is_a_usage_error_that_names_the_fault_and_files_nothing()
    {
        string database = await postgres.CreateDatabaseAsync();
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(database);
        long before = await CountAsync(dataSource, "SELECT count(*) FROM applications");
        string file = Path.Combine(Directory.CreateTempSubdirectory("metering-apply-").FullName, "application.json");
        await File.WriteAllTextAsync(file, $$"""{"batchId": "test-2024", "creditCode": "{{TestRecords.Provider}}", "materials": [{"kind": "BUSINESS_LICENSE"}]}""");

        var (exit, output) = await RegistryAsync(database, "apply", "--file", file);

        Assert.Equal(2, exit);
        Assert.Contains("application.json is not a valid application", output, StringComparison.Ordinal);
        Assert.Contains("BUSINESS_LICENSE", output, StringComparison.Ordinal);
        Assert.Equal(before, await CountAsync(dataSource, "SELECT count(*) FROM applications"));
    }

    [Fact]
    public async Task A_filing_outside_the_batch_window_is_refused_with_its_reason_and_files_nothing()
    {
        string database = await postgres.CreateDatabaseAsync();
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(database);
        long applications = await CountAsync(dataSource, "SELECT count(*) FROM applications");
        long changes = await CountAsync(dataSource, "SELECT count(*) FROM registry_history");

        // The test batch took applications in 2024 only.
        var (exit, output) = await RegistryAsync(database, "apply", "--file", await ApplicationFileAsync(Admissions.Batch, TestRecords.Provider, "gpu-inference"));

        Assert.Equal(1, exit);
        Assert.Contains("refused: OUTSIDE_BATCH_WINDOW", output, StringComparison.Ordinal);
        Assert.Equal(applications, await CountAsync(dataSource, "SELECT count(*) FROM applications"));
        Assert.Equal(changes, await CountAsync(dataSource, "SELECT count(*) FROM registry_history"));
    }

    [Fact]
    public async Task Org_show_lists_the_admitted_service_item_as_active()
    {
        string database = await postgres.CreateDatabaseAsync();

        string shown = await SucceedsAsync(database, "org", "show", TestRecords.Provider);

        string item = shown.Split('\n').Single(line => line.StartsWith(Admissions.ServiceItem + " ", StringComparison.Ordinal));
        Assert.Contains("ACTIVE", item, StringComparison.Ordinal);
        Assert.Contains("2028-01-01 00:00", item, StringComparison.Ordinal);
        Assert.Contains("B1-038216", shown, StringComparison.Ordinal);
        Assert.Contains("ADMITTED", shown, StringComparison.Ordinal);
    }

    /// <summary>The sample application, made out for the given batch, applicant and item, in a file of its own.</summary>
    private static async Task<string> ApplicationFileAsync(string batchId, string creditCode, string serviceItem = Admissions.ServiceItem)
    {
        string sample = Path.Combine(TestRecords.RepositoryRoot(), "samples", "Registry", "application.json");
        FileApplicationRequest request = JsonParser.Default.Parse<FileApplicationRequest>(await File.ReadAllTextAsync(sample));
        request.BatchId = batchId;
        request.CreditCode = creditCode;
        request.ServiceItem = serviceItem;
        string file = Path.Combine(Directory.CreateTempSubdirectory("metering-apply-").FullName, "application.json");
        await File.WriteAllTextAsync(file, JsonFormatter.Default.Format(request));
        return file;
    }

    private static Task<(int ExitCode, string Output)> RegistryAsync(string database, params string[] arguments) =>
        CliProcess.RunAsync(["registry", .. arguments, "--connection", database]);

    private static async Task<string> SucceedsAsync(string database, params string[] arguments)
    {
        var (exit, output) = await RegistryAsync(database, arguments);
        Assert.True(exit == 0, $"registry {string.Join(' ', arguments)} exited with {exit}:\n{output}");
        return output;
    }

    /// <summary>The printed application summary has the line `label   value`.</summary>
    private static void AssertField(string label, string value, string output) =>
        Assert.Matches(new Regex($"^{Regex.Escape(label)} +{Regex.Escape(value)}$", RegexOptions.Multiline), output);

    private static async Task<string> StateAsync(NpgsqlDataSource dataSource, string id)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync();
        return await connection.ExecuteScalarAsync<string>("SELECT state FROM applications WHERE application_id = @id", new { id = long.Parse(id, CultureInfo.InvariantCulture) }) ?? "";
    }

    /// <summary>A single number the query returns: a count or an id.</summary>
    private static async Task<long> CountAsync(NpgsqlDataSource dataSource, string sql)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync();
        return await connection.ExecuteScalarAsync<long>(sql);
    }

    private static string Local(DateTimeOffset instant) => instant.ToOffset(TimeSpan.FromHours(8)).ToString("yyyy-MM-dd HH:mm", CultureInfo.InvariantCulture);
}
