using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.RegularExpressions;
using Dapper;
using Google.Protobuf;
using Metering.Engine.Access;
using Metering.Engine.Identity;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;
using Npgsql;

namespace Metering.Cli.Tests;

/// <summary>
/// `metering registry` as an operator runs it: the real process, a client of a real server over
/// TLS, calling as the key it is given. The CLI uses the system clock, and so does the server
/// here, so batches are open around the real current time.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class RegistryCliTests(PostgresFixture postgres)
{
    /// <summary>A valid Shenzhen credit code that no other test or sample uses.</summary>
    private static readonly string NewProvider = CreditCode.Complete("91440300MA5G00002");

    /// <summary>The subjects of TestServer.OperatorKey and SecondOperatorKey.</summary>
    private const string Operator = "operator-one";
    private const string SecondOperator = "operator-two";

    [Fact]
    public async Task A_new_organisation_is_taken_from_registration_to_admission_by_two_operators_and_the_history_names_their_keys()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(server.ConnectionString);
        DateTimeOffset now = DateTimeOffset.UtcNow;

        await SucceedsAsync(server, TestServer.OperatorKey, "batch", "put", "--rules", await BatchRulesCliTests.RulesFileAsync(rules =>
        {
            rules["batchId"] = "cli-now";
            rules["windowOpens"] = Local(now.AddDays(-1));
            rules["windowCloses"] = Local(now.AddDays(1));
            rules["validityEnds"] = Local(now.AddDays(365));
            rules["publicNoticeDays"] = 0;
        }));
        string registered = await SucceedsAsync(server, TestServer.OperatorKey, "org", "add", "--code", NewProvider, "--name", "深圳测试智算有限公司",
            "--legal-form", "enterprise", "--district", "南山区", "--established", "2016-04-01");
        Assert.Contains($"Registered {NewProvider}", registered, StringComparison.Ordinal);
        await SucceedsAsync(server, TestServer.OperatorKey, "licence", "add", "--code", NewProvider, "--number", "B1-20200077", "--issuer", "工业和信息化部",
            "--from", "2020-01-01", "--until", "2035-12-31");
        await Admissions.WriteProofAsync(dataSource, new ManualClock(now), NewProvider);
        string application = await ApplicationFileAsync("cli-now", NewProvider);

        // Applicants file for themselves: an operator's key cannot file in the applicant's name.
        var (entered, enteredOutput) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "registry", "apply", "--file", application);
        Assert.Equal(4, entered);
        Assert.Contains("refused: PermissionDenied ROLE_NOT_ALLOWED", enteredOutput, StringComparison.Ordinal);
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM applications WHERE provider_id = @NewProvider", new { NewProvider }));

        string filed = await SucceedsAsync(server, await ProviderKeyAsync(dataSource, NewProvider), "apply", "--file", application);
        AssertField("state", "AWAITING_MATERIAL_REVIEW", filed);
        AssertField("declared", "316.608 PFLOPS FP16", filed);
        long applicationId = await server.ScalarAsync<long>("SELECT application_id FROM applications WHERE provider_id = @NewProvider", new { NewProvider });
        string id = applicationId.ToString(CultureInfo.InvariantCulture);

        AssertField("state", "AWAITING_VERIFICATION", await SucceedsAsync(server, TestServer.OperatorKey, "review", id, "--pass"));

        // Four-eyes: the typed figure is proposed under the key's subject, and its proposer cannot approve it.
        string proposed = await SucceedsAsync(server, TestServer.OperatorKey, "verify", id, "--verified-pflops", "316.608", "--pass");
        AssertField("state", "AWAITING_VERIFICATION", proposed);
        Assert.Contains($"proposal 1: verification pass at 316.608 PFLOPS FP16 by {Operator}", proposed, StringComparison.Ordinal);
        var (alone, aloneOutput) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "registry", "approve", id, "--proposal", "1");
        Assert.Equal(4, alone);
        Assert.Contains("refused: PermissionDenied SAME_OPERATOR", aloneOutput, StringComparison.Ordinal);
        Assert.Equal(("awaiting_verification", 0L), await ApplicationAsync(server, applicationId));
        string verified = await SucceedsAsync(server, TestServer.SecondOperatorKey, "approve", id, "--proposal", "1");
        AssertField("state", "AWAITING_PUBLIC_NOTICE", verified);
        AssertField("verified", "316.608 PFLOPS FP16", verified);

        AssertField("state", "IN_PUBLIC_NOTICE", await SucceedsAsync(server, TestServer.OperatorKey, "notice", "open", id));
        string objected = await SucceedsAsync(server, TestServer.OperatorKey, "objection", "add", id, "--objector", "某竞争企业", "--content", "dc2 capacity is double-counted");
        Assert.Contains("某竞争企业: dc2 capacity is double-counted", objected, StringComparison.Ordinal);

        // The decision too waits for the second operator.
        string decided = await SucceedsAsync(server, TestServer.OperatorKey, "decide", id, "--admit", "--reasons", "site visit found dc2 dedicated");
        AssertField("state", "IN_PUBLIC_NOTICE", decided);
        Assert.Contains($"proposal 2: decision pass by {Operator}", decided, StringComparison.Ordinal);
        var (decidedAlone, decidedAloneOutput) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "registry", "approve", id, "--proposal", "2");
        Assert.Equal(4, decidedAlone);
        Assert.Contains("refused: PermissionDenied SAME_OPERATOR", decidedAloneOutput, StringComparison.Ordinal);
        Assert.Equal("in_public_notice", (await ApplicationAsync(server, applicationId)).State);
        AssertField("state", "AWAITING_ADMISSION_NOTICE", await SucceedsAsync(server, TestServer.SecondOperatorKey, "approve", id, "--proposal", "2"));

        string admitted = await SucceedsAsync(server, TestServer.OperatorKey, "notice", "issue", id, "--number", "深科创训力入库〔cli〕1号");
        AssertField("state", "ADMITTED", admitted);
        AssertField("admission notice", "深科创训力入库〔cli〕1号", admitted);

        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync();
        Assert.Equal(("admitted", 316_608_000L), await ApplicationAsync(server, applicationId));
        Assert.Equal(
            new[] { "filing", "material_review", "verification", "public_notice", "objection", "decision", "admission_notice" },
            await connection.QueryAsync<string>("SELECT stage FROM application_stages WHERE application_id = @applicationId ORDER BY stage_no", new { applicationId }));
        Assert.Equal(1L, await connection.ExecuteScalarAsync<long>(
            "SELECT count(*) FROM service_items WHERE provider_id = @NewProvider AND service_item = 'gpu-training' AND ended_at IS NULL", new { NewProvider }));

        // The history records each key's subject: the filing under the applicant's, an approved
        // stage under both operators', and no name the command line asserted. (The applicant's
        // key was issued by the test's setup, outside the CLI.)
        var actors = (await connection.QueryAsync<string>(
            "SELECT DISTINCT actor FROM registry_history WHERE provider_id = @NewProvider AND entity <> 'credential'", new { NewProvider })).Order(StringComparer.Ordinal);
        Assert.Equal(new[] { NewProvider, Operator, $"{Operator}, approved by {SecondOperator}" }.Order(StringComparer.Ordinal), actors);
        Assert.Equal("file", await connection.ExecuteScalarAsync<string>(
            "SELECT string_agg(DISTINCT action, ',') FROM registry_history WHERE provider_id = @NewProvider AND actor = @NewProvider", new { NewProvider }));

        // Auditors read the history; it names the keys' subjects, not the local user.
        string history = await SucceedsAsync(server, TestServer.AuditorKey, "history", "--code", NewProvider);
        foreach (string expected in new[] { "register", "file", "material_review", "state: awaiting_material_review → awaiting_verification", "admit", Operator, SecondOperator, NewProvider })
        {
            Assert.Contains(expected, history, StringComparison.Ordinal);
        }

        Assert.DoesNotContain("@cli", history, StringComparison.Ordinal);
        Assert.DoesNotContain(Environment.UserName + " ", history, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_provider_or_an_auditor_key_trying_a_registry_write_or_another_providers_entries_is_refused_and_changes_nothing()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        long changes = await server.ScalarAsync<long>("SELECT count(*) FROM registry_history");

        // A provider suspending its competitor, and reinstating itself, as if it were the bureau.
        var (suspend, suspendOutput) = await CliProcess.RunAsAsync(server, TestServer.ProviderKey, "registry", "item", "suspend",
            "--code", TestRecords.OtherProvider, "--item", Admissions.ServiceItem, "--reasons", "a rival's wish");
        Assert.Equal(4, suspend);
        Assert.Contains("refused: PermissionDenied ROLE_NOT_ALLOWED", suspendOutput, StringComparison.Ordinal);

        // An auditor reads everything and writes nothing: not even an organisation.
        var (register, registerOutput) = await CliProcess.RunAsAsync(server, TestServer.AuditorKey, "registry", "org", "add", "--code", NewProvider,
            "--name", "审计员自建企业", "--legal-form", "enterprise", "--district", "nanshan", "--established", "2016-04-01");
        Assert.Equal(4, register);
        Assert.Contains("refused: PermissionDenied ROLE_NOT_ALLOWED", registerOutput, StringComparison.Ordinal);

        // A provider files only for itself, not in a competitor's name.
        var (impostor, impostorOutput) = await CliProcess.RunAsAsync(server, TestServer.ProviderKey, "registry", "apply",
            "--file", await ApplicationFileAsync(Admissions.Batch, TestRecords.OtherProvider, "gpu-inference"));
        Assert.Equal(4, impostor);
        Assert.Contains("refused: PermissionDenied OTHER_PROVIDER", impostorOutput, StringComparison.Ordinal);

        // A provider reads only its own entries.
        var (peek, peekOutput) = await CliProcess.RunAsAsync(server, TestServer.ProviderKey, "registry", "org", "show", TestRecords.OtherProvider);
        Assert.Equal(4, peek);
        Assert.Contains("refused: PermissionDenied OTHER_PROVIDER", peekOutput, StringComparison.Ordinal);

        Assert.Equal(changes, await server.ScalarAsync<long>("SELECT count(*) FROM registry_history"));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM organisations WHERE provider_id = @NewProvider", new { NewProvider }));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM service_item_suspensions"));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM applications WHERE service_item = 'gpu-inference'"));
    }

    [Fact]
    public async Task Bad_input_is_a_usage_error_found_before_any_call_and_files_nothing()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        long applications = await server.ScalarAsync<long>("SELECT count(*) FROM applications");
        string file = Path.Combine(Directory.CreateTempSubdirectory("metering-apply-").FullName, "application.json");
        await File.WriteAllTextAsync(file, $$"""{"batchId": "test-2024", "creditCode": "{{TestRecords.Provider}}", "materials": [{"kind": "BUSINESS_LICENSE"}]}""");

        // Pointed at a port where nothing listens, a call would exit with 5 ("no Metering server
        // answers"): exit 2 and the input's fault show that none was tried.
        string nowhere = $"https://127.0.0.1:{UnusedPort()}";
        var (malformed, malformedOutput) = await CliProcess.RunAsync("registry", "apply", "--file", file,
            "--server", nowhere, "--ca", TestCertificates.CaPemPath, "--api-key", TestServer.ProviderKey);
        Assert.Equal(2, malformed);
        Assert.Contains("application.json is not a valid application", malformedOutput, StringComparison.Ordinal);
        Assert.Contains("BUSINESS_LICENSE", malformedOutput, StringComparison.Ordinal);

        var (both, bothOutput) = await CliProcess.RunAsync("registry", "review", "1", "--pass", "--reject",
            "--server", nowhere, "--ca", TestCertificates.CaPemPath, "--api-key", TestServer.OperatorKey);
        Assert.Equal(2, both);
        Assert.Contains("give either --pass or --reject, not both", bothOutput, StringComparison.Ordinal);

        // The same against the real server changes nothing.
        var (again, againOutput) = await CliProcess.RunAsAsync(server, TestServer.ProviderKey, "registry", "apply", "--file", file);
        Assert.Equal(2, again);
        Assert.Contains("application.json is not a valid application", againOutput, StringComparison.Ordinal);
        Assert.Equal(applications, await server.ScalarAsync<long>("SELECT count(*) FROM applications"));
    }

    [Fact]
    public async Task A_filing_outside_the_batch_window_is_refused_with_its_reason_and_files_nothing()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        long applications = await server.ScalarAsync<long>("SELECT count(*) FROM applications");
        long changes = await server.ScalarAsync<long>("SELECT count(*) FROM registry_history");

        // The test batch took applications in 2024 only.
        var (exit, output) = await CliProcess.RunAsAsync(server, TestServer.ProviderKey, "registry", "apply",
            "--file", await ApplicationFileAsync(Admissions.Batch, TestRecords.Provider, "gpu-inference"));

        Assert.Equal(4, exit);
        Assert.Contains("refused: FailedPrecondition OUTSIDE_BATCH_WINDOW", output, StringComparison.Ordinal);
        Assert.Equal(applications, await server.ScalarAsync<long>("SELECT count(*) FROM applications"));
        Assert.Equal(changes, await server.ScalarAsync<long>("SELECT count(*) FROM registry_history"));
    }

    [Fact]
    public async Task Org_show_lists_the_admitted_service_item_as_active_and_application_shows_its_capacity()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);

        string shown = await SucceedsAsync(server, TestServer.OperatorKey, "org", "show", TestRecords.Provider);

        string item = shown.Split('\n').Single(line => line.StartsWith(Admissions.ServiceItem + " ", StringComparison.Ordinal));
        Assert.Contains("ACTIVE", item, StringComparison.Ordinal);
        Assert.Contains("2028-01-01 00:00", item, StringComparison.Ordinal);
        Assert.Contains("B1-038216", shown, StringComparison.Ordinal);
        Assert.Contains("ADMITTED", shown, StringComparison.Ordinal);

        // A provider reads its own application in full, the catalog's capacity per site included.
        long applicationId = await server.ScalarAsync<long>("SELECT min(application_id) FROM applications WHERE provider_id = @code", new { code = TestRecords.Provider });
        string detail = await SucceedsAsync(server, TestServer.ProviderKey, "application", applicationId.ToString(CultureInfo.InvariantCulture));
        AssertField("state", "ADMITTED", detail);
        Assert.Contains("Declared capacity:", detail, StringComparison.Ordinal);
        Assert.Matches(new Regex(@"^\S+ +\S+ +\d+ +\d+(\.\d+)? +(probe|commissioned verifier) *$", RegexOptions.Multiline), detail.Split("Declared capacity:")[1].Split("Fee schedule")[0]);
    }

    /// <summary>A provider key for <paramref name="creditCode"/>, issued as `key issue` would.</summary>
    internal static async Task<string> ProviderKeyAsync(NpgsqlDataSource dataSource, string creditCode) =>
        (await new CredentialStore(dataSource, TimeProvider.System).IssueAsync(Admissions.Operator, Role.Provider, creditCode, "registry-cli-test", CancellationToken.None)).Key;

    /// <summary>The sample application, made out for the given batch, applicant and item, in a file of its own.</summary>
    internal static async Task<string> ApplicationFileAsync(string batchId, string creditCode, string serviceItem = Admissions.ServiceItem)
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

    private static async Task<string> SucceedsAsync(TestServer server, string key, params string[] arguments)
    {
        var (exit, output) = await CliProcess.RunAsAsync(server, key, ["registry", .. arguments]);
        Assert.True(exit == 0, $"registry {string.Join(' ', arguments)} exited with {exit}:\n{output}");
        return output;
    }

    /// <summary>The printed application summary has the line `label   value`.</summary>
    private static void AssertField(string label, string value, string output) =>
        Assert.Matches(new Regex($"^{Regex.Escape(label)} +{Regex.Escape(value)}$", RegexOptions.Multiline), output);

    private static async Task<(string State, long Verified)> ApplicationAsync(TestServer server, long applicationId)
    {
        await using var connection = new NpgsqlConnection(server.ConnectionString);
        return await connection.QuerySingleAsync<(string, long)>(
            "SELECT state, coalesce(verified_fp16_gflops, 0) FROM applications WHERE application_id = @applicationId", new { applicationId });
    }

    /// <summary>A loopback port nobody listens on: bound for a moment by the system, then released.</summary>
    private static int UnusedPort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    private static string Local(DateTimeOffset instant) => instant.ToOffset(TimeSpan.FromHours(8)).ToString("yyyy-MM-dd HH:mm", CultureInfo.InvariantCulture);
}
