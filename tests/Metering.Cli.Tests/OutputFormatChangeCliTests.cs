using System.Globalization;
using System.Text.Json;
using Metering.Engine.Fixtures;
using Metering.Engine.Identity;
using Metering.Engine.Storage;
using Metering.Fixtures;
using Metering.Server.Fixtures;
using Npgsql;

namespace Metering.Cli.Tests;

/// <summary>
/// `--output` on the commands that change something and print what they changed (contracts,
/// vouchers, claims, registry stages and items), and on the transparency-log and signing-key
/// commands: run against a real server, their JSON and CSV carry the values the server recorded,
/// and csv on a command that prints sections is refused before the change is sent.
/// </summary>
public sealed partial class OutputFormatCliTests
{
    [Fact]
    public async Task Contract_support_issue_and_claim_file_and_void_print_what_was_recorded_as_json_and_csv_and_claim_file_csv_files_nothing()
    {
        var clock = new ManualClock(VoucherScene.Now);
        await using TestServer server = await TestServer.StartAsync(postgres, time: clock);
        await using VoucherScene scene = VoucherScene.Over(server.ConnectionString, clock);
        string holder = await scene.HolderAsync();

        using (JsonDocument added = Parse(await RunAsync(server, TestServer.OperatorKey, "voucher", "contract", "add", "--holder", holder, "--provider", TestRecords.Provider,
            "--service-item", Admissions.ServiceItem, "--number", "HT-OUT-001", "--signed", "2026-01-01", "--starts", "2026-01-01", "--ends", "2026-12-31",
            "--amount-fen", "200000000", "--unit", "per_card_hour", "--non-related-declaration", "declarations/HT-OUT-001.pdf", "--output", "json")))
        {
            JsonElement contract = added.RootElement;
            Assert.Equal(await scene.ScalarAsync<long>("SELECT contract_id FROM contracts WHERE contract_number = 'HT-OUT-001'"), contract.GetProperty("contractId").GetInt64());
            Assert.Equal("200000000", contract.GetProperty("amountFen").GetRawText());
            Assert.Equal(holder, contract.GetProperty("holderCode").GetString());
            Assert.Equal("2026-12-31", contract.GetProperty("endsOn").GetString());
            Assert.False(contract.GetProperty("startup").GetBoolean());
        }

        long contractId = await scene.ScalarAsync<long>("SELECT contract_id FROM contracts WHERE contract_number = 'HT-OUT-001'");
        string id = contractId.ToString(CultureInfo.InvariantCulture);
        List<string[]> support = Rfc4180(await RunAsync(server, TestServer.OperatorKey, "voucher", "contract", "support", "--contract", id, "--source", "district fund",
            "--amount-fen", "1000000", "--output", "csv"));
        Assert.Equal(2, support.Count);
        Assert.Equal(id, support[1][System.Array.IndexOf(support[0], "contractId")]);
        Assert.Equal("1000000", support[1][System.Array.IndexOf(support[0], "otherSupportFen")]);

        long voucherId;
        using (JsonDocument issued = Parse(await RunAsync(server, TestServer.OperatorKey, "voucher", "issue", "--contract", id, "--year", "2026", "--face-fen", "100000000",
            "--output", "json")))
        {
            JsonElement voucher = issued.RootElement;
            voucherId = voucher.GetProperty("voucherId").GetInt64();
            Assert.Equal(await scene.ScalarAsync<long>("SELECT voucher_id FROM vouchers WHERE contract_id = @contractId", new { contractId }), voucher.GetProperty("voucherId").GetInt64());
            Assert.Equal("100000000", voucher.GetProperty("faceValueFen").GetRawText());
            Assert.Equal("100000000", voucher.GetProperty("remainingFen").GetRawText());
            Assert.Equal(2026, voucher.GetProperty("programmeYear").GetInt32());
        }

        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, VoucherScene.Day, 12));
        string[] claim = ["voucher", "claim", "file", "--contract", id, "--job", "job-1120-000", "--job", "job-1120-001", "--year", "2026"];

        // A claim prints two sections: csv is a usage error before the call, and no claim is filed.
        var refused = await RunAsync(server, TestServer.OperatorKey, [.. claim, "--output", "csv"]);
        Assert.Equal(2, refused.ExitCode);
        Assert.Contains("--output csv is not available for `voucher claim file`", refused.Stderr, StringComparison.Ordinal);
        Assert.Equal("", refused.Stdout);
        Assert.Equal(0L, await scene.ScalarAsync<long>("SELECT count(*) FROM claims"));

        // Two records of 40 card-minutes at 18 CNY per card-hour: 24 CNY eligible, half of it held.
        long claimId;
        using (JsonDocument filed = Parse(await RunAsync(server, TestServer.OperatorKey, [.. claim, "--output", "json"])))
        {
            JsonElement fields = filed.RootElement.GetProperty("claim");
            claimId = fields.GetProperty("claimId").GetInt64();
            Assert.Equal(await scene.ScalarAsync<long>("SELECT claim_id FROM claims"), claimId);
            Assert.Equal("2400", fields.GetProperty("eligibleFeeFen").GetRawText());
            Assert.Equal("1200", fields.GetProperty("subsidyFen").GetRawText());
            Assert.Equal("reserved", fields.GetProperty("hold").GetString());
            Assert.Equal(2400, filed.RootElement.GetProperty("lines").EnumerateArray().Sum(l => l.GetProperty("feeFen").GetInt64()));
        }

        using (JsonDocument voided = Parse(await RunAsync(server, TestServer.OperatorKey, "voucher", "claim", "void", $"{claimId}", "--reason", "filed twice", "--output", "json")))
        {
            Assert.Equal(claimId, voided.RootElement.GetProperty("claim").GetProperty("claimId").GetInt64());
            Assert.Equal("voided", voided.RootElement.GetProperty("claim").GetProperty("hold").GetString());
        }

        // What the void printed is what the server holds now: nothing held on the voucher.
        List<string[]> voucherCsv = Rfc4180(await RunAsync(server, TestServer.AuditorKey, "voucher", "show", $"{voucherId}", "--output", "csv"));
        Assert.Equal("0", voucherCsv[1][System.Array.IndexOf(voucherCsv[0], "heldFen")]);
    }

    [Fact]
    public async Task Transparency_log_commands_and_signing_key_show_give_json_and_csv_that_check_against_the_signed_log()
    {
        var clock = new ManualClock(VoucherScene.Now);
        await using TestServer server = await TestServer.StartAsync(postgres, time: clock);
        await using VoucherScene scene = VoucherScene.Over(server.ConnectionString, clock);
        string holder = await scene.HolderAsync();
        DateOnly second = VoucherScene.Day.AddDays(1);
        await scene.IngestAsync("cluster-a", [.. VoucherScene.Jobs(holder, VoucherScene.Day, 12), .. VoucherScene.Jobs(holder, second, 5, prefix: "late")]);
        foreach (DateOnly settledDay in (DateOnly[])[VoucherScene.Day, second])
        {
            var settled = await RunAsync(server, TestServer.SettlementKey, "settle", "--day", settledDay.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture));
            Assert.True(settled.ExitCode == 0, settled.Stderr);
        }

        string folder = Directory.CreateTempSubdirectory("metering-log-output-").FullName;
        string publicKey = Path.Combine(folder, "server.pem");
        await File.WriteAllTextAsync(publicKey, TestServer.SigningKey.PublicKey.Pem);
        long leaves = await server.ScalarAsync<long>("SELECT count(*) FROM transparency_log_leaves");
        Assert.Equal(2, leaves);

        // The latest head, its signature checked with the published key.
        string headFile = Path.Combine(folder, "head.json");
        string root;
        using (JsonDocument head = Parse(await RunAsync(server, TestServer.AuditorKey, "audit", "log-head", "--public-key", publicKey, "--out", headFile, "--output", "json")))
        {
            Assert.Equal(leaves, head.RootElement.GetProperty("treeSize").GetInt64());
            Assert.True(head.RootElement.GetProperty("signatureVerifies").GetBoolean());
            Assert.Equal(TestServer.SigningKey.KeyId, head.RootElement.GetProperty("keyId").GetString());
            Assert.EndsWith("+08:00", head.RootElement.GetProperty("timestamp").GetString(), StringComparison.Ordinal);
            root = head.RootElement.GetProperty("root").GetString()!;
            Assert.Matches("^[0-9a-f]{64}$", root);
        }

        List<string[]> check = Rfc4180(await RunAsync(server, TestServer.AuditorKey, "audit", "check-log", "--head", headFile, "--public-key", publicKey, "--output", "csv"));
        Assert.Equal(new[] { "savedSize", "savedRoot", "currentSize", "currentRoot", "keyId", "extends", "problem" }, check[0]);
        Assert.Equal(new[] { $"{leaves}", root, $"{leaves}", root, TestServer.SigningKey.KeyId, "true", "" }, check[1]);

        // The first head is extended by the second; csv cannot hold the proof's three sections.
        using (JsonDocument consistency = Parse(await RunAsync(server, TestServer.AuditorKey, "audit", "consistency", "--from", "1", "--to", "2", "--public-key", publicKey,
            "--output", "json")))
        {
            Assert.True(consistency.RootElement.GetProperty("consistency").GetProperty("verifies").GetBoolean());
            Assert.Equal(JsonValueKind.Null, consistency.RootElement.GetProperty("consistency").GetProperty("problem").ValueKind);
            Assert.Equal(new long[] { 1, 2 }, consistency.RootElement.GetProperty("heads").EnumerateArray().Select(h => h.GetProperty("treeSize").GetInt64()));
            Assert.Equal(root, consistency.RootElement.GetProperty("heads")[1].GetProperty("root").GetString());
            Assert.NotEmpty(consistency.RootElement.GetProperty("path").EnumerateArray());
        }

        Assert.Equal(2, (await RunAsync(server, TestServer.AuditorKey, "audit", "consistency", "--from", "1", "--to", "2", "--public-key", publicKey, "--output", "csv")).ExitCode);

        // The first day's leaf: its records and settlement hash, included under the head above.
        string day = VoucherScene.Day.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture);
        using (JsonDocument proof = Parse(await RunAsync(server, TestServer.AuditorKey, "audit", "log-proof", "--provider", TestRecords.Provider, "--day", day, "--public-key", publicKey,
            "--output", "json")))
        {
            JsonElement leaf = proof.RootElement.GetProperty("leaf");
            Assert.True(leaf.GetProperty("included").GetBoolean());
            Assert.Equal(TestRecords.Provider, leaf.GetProperty("creditCode").GetString());
            Assert.Equal(day, leaf.GetProperty("day").GetString());
            Assert.Equal(12, leaf.GetProperty("leafCount").GetInt64());
            Assert.Equal(root, leaf.GetProperty("headRoot").GetString());
            Assert.Equal(await scene.ScalarAsync<string>("SELECT encode(settlement_sha256, 'hex') FROM settlement_runs WHERE day = @day", new { day = VoucherScene.Day }),
                leaf.GetProperty("settlementSha256").GetString());
            Assert.Single(proof.RootElement.GetProperty("auditPath").EnumerateArray());
        }

        // The key the server signs with, as its operator publishes it.
        var (exit, shownKey) = await CliProcess.RunAsync("key", "signing", "show", ServerProcess.SigningKeyPath, "--output", "csv");
        Assert.True(exit == 0, shownKey);
        List<string[]> key = Rfc4180Text(shownKey);
        Assert.Equal(new[] { "keyId", "publicKeyPem" }, key[0]);
        Assert.Equal(new[] { TestServer.SigningKey.KeyId, TestServer.SigningKey.PublicKey.Pem }, key[1]);
    }

    [Fact]
    public async Task Registry_stage_reconsideration_application_batch_and_item_commands_give_json_and_csv_of_what_the_registry_recorded()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(server.ConnectionString);
        DateTimeOffset now = DateTimeOffset.UtcNow;
        string provider = CreditCode.Complete("91440300MA5G00078");

        string rules = await BatchRulesCliTests.RulesFileAsync(r =>
        {
            r["batchId"] = "cli-output";
            r["windowOpens"] = Shanghai(now.AddDays(-1));
            r["windowCloses"] = Shanghai(now.AddDays(1));
            r["validityEnds"] = Shanghai(now.AddDays(365));
        });
        JsonElement batch = Array(await RunAsync(server, TestServer.OperatorKey, "registry", "batch", "put", "--rules", rules, "--output", "json")).EnumerateArray().Single();
        Assert.Equal("cli-output", batch.GetProperty("batchId").GetString());
        Assert.Equal(1, batch.GetProperty("rulesVersion").GetInt32());
        using (JsonDocument rulesFile = JsonDocument.Parse(await File.ReadAllTextAsync(rules)))
        {
            Assert.Equal(rulesFile.RootElement.GetProperty("capacityMinimumGflops").GetInt64(), batch.GetProperty("capacityMinimumGflops").GetInt64());
        }

        Assert.Equal(0, (await RunAsync(server, TestServer.OperatorKey, "registry", "org", "add", "--code", provider, "--name", "Output Registry Co", "--legal-form", "enterprise",
            "--district", "nanshan", "--established", "2016-04-01")).ExitCode);
        Assert.Equal(0, (await RunAsync(server, TestServer.OperatorKey, "registry", "licence", "add", "--code", provider, "--number", "B1-20200078", "--issuer", "工业和信息化部",
            "--from", "2020-01-01", "--until", "2035-12-31")).ExitCode);
        await Admissions.WriteProofAsync(dataSource, new ManualClock(now), provider);
        string providerKey = await RegistryCliTests.ProviderKeyAsync(dataSource, provider);
        string file = await RegistryCliTests.ApplicationFileAsync("cli-output", provider);

        // An application prints sections: csv is refused before the filing is sent.
        var refused = await RunAsync(server, providerKey, "registry", "apply", "--file", file, "--output", "csv");
        Assert.Equal(2, refused.ExitCode);
        Assert.Equal("", refused.Stdout);
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM applications WHERE provider_id = @provider", new { provider }));

        var filed = await RunAsync(server, providerKey, "registry", "apply", "--file", file, "--output", "json");
        long applicationId = await server.ScalarAsync<long>("SELECT application_id FROM applications WHERE provider_id = @provider", new { provider });
        string id = applicationId.ToString(CultureInfo.InvariantCulture);
        Assert.Contains($"Filed application {applicationId}", filed.Stderr, StringComparison.Ordinal);
        using (JsonDocument application = Parse(filed))
        {
            JsonElement fields = application.RootElement.GetProperty("application");
            Assert.Equal(applicationId, fields.GetProperty("applicationId").GetInt64());
            Assert.Equal("AWAITING_MATERIAL_REVIEW", fields.GetProperty("state").GetString());
            Assert.Equal(316_608_000, fields.GetProperty("declaredFp16Gflops").GetInt64());
            Assert.Equal(JsonValueKind.Null, fields.GetProperty("verifiedFp16Gflops").ValueKind);
            Assert.Equal("filing", application.RootElement.GetProperty("stages").EnumerateArray().Single().GetProperty("stage").GetString());
        }

        using (JsonDocument reviewed = Parse(await RunAsync(server, TestServer.OperatorKey, "registry", "review", id, "--reject", "--reasons", "the tax certificate is missing",
            "--output", "json")))
        {
            Assert.Equal("REJECTED", reviewed.RootElement.GetProperty("application").GetProperty("state").GetString());
            JsonElement stage = reviewed.RootElement.GetProperty("stages").EnumerateArray().Last();
            Assert.Equal("the tax certificate is missing", stage.GetProperty("reasons").GetString());
            Assert.EndsWith("+08:00", stage.GetProperty("at").GetString(), StringComparison.Ordinal);
        }

        Assert.Equal("rejected", (await server.ScalarAsync<string>("SELECT state FROM applications WHERE application_id = @applicationId", new { applicationId })).ToLowerInvariant());

        using (JsonDocument requested = Parse(await RunAsync(server, providerKey, "registry", "reconsider", "request", id, "--grounds", "it was filed on day one", "--output", "json")))
        {
            Assert.Equal(applicationId, requested.RootElement.GetProperty("applicationId").GetInt64());
            Assert.Equal("RECONSIDERATION_PENDING", requested.RootElement.GetProperty("status").GetString());
            Assert.Equal("it was filed on day one", requested.RootElement.GetProperty("grounds").GetString());
        }

        List<string[]> decided = Rfc4180(await RunAsync(server, TestServer.OperatorKey, "registry", "reconsider", "decide", id, "--dismiss", "--reason", "not in the filing",
            "--output", "csv"));
        Assert.Equal("RECONSIDERATION_DISMISSED", decided[1][System.Array.IndexOf(decided[0], "status")]);
        Assert.Equal("not in the filing", decided[1][System.Array.IndexOf(decided[0], "reasons")]);
        Assert.Equal("REJECTED", decided[1][System.Array.IndexOf(decided[0], "applicationState")]);

        // The application in full: every material with its whole hash, capacity per site in GFLOPS, fees in fen.
        using (JsonDocument detail = Parse(await RunAsync(server, TestServer.OperatorKey, "registry", "application", id, "--output", "json")))
        {
            JsonElement root = detail.RootElement;
            Assert.Equal(8, root.GetProperty("materials").GetArrayLength());
            Assert.All(root.GetProperty("materials").EnumerateArray(), m => Assert.Matches("^[0-9a-f]{64}$", m.GetProperty("sha256").GetString()!));
            Assert.Equal(320, root.GetProperty("capacity").EnumerateArray().Sum(c => c.GetProperty("deviceCount").GetInt64()));
            Assert.Equal(316_608_000, root.GetProperty("capacity").EnumerateArray().Sum(c => c.GetProperty("fp16Gflops").GetInt64()));
            Assert.Equal(new long[] { 1800, 1900 }, root.GetProperty("fees").EnumerateArray().Select(f => f.GetProperty("priceFen").GetInt64()));
        }

        Assert.Equal(2, (await RunAsync(server, TestServer.OperatorKey, "registry", "application", id, "--output", "csv")).ExitCode);

        // An admitted item suspended and reinstated: the status printed is the status stored.
        using (JsonDocument suspended = Parse(await RunAsync(server, TestServer.OperatorKey, "registry", "item", "suspend", "--code", TestRecords.Provider, "--item", Admissions.ServiceItem,
            "--reasons", "audit pending", "--output", "json")))
        {
            Assert.Equal("SUSPENDED", suspended.RootElement.GetProperty("status").GetString());
            Assert.Equal("audit pending", suspended.RootElement.GetProperty("reason").GetString());
        }

        Assert.Equal("SUSPENDED", await ItemStatusAsync(server));
        List<string[]> reinstated = Rfc4180(await RunAsync(server, TestServer.OperatorKey, "registry", "item", "reinstate", "--code", TestRecords.Provider, "--item", Admissions.ServiceItem,
            "--output", "csv"));
        Assert.Equal("ACTIVE", reinstated[1][System.Array.IndexOf(reinstated[0], "status")]);
        Assert.Equal("ACTIVE", await ItemStatusAsync(server));
    }

    /// <summary>The item's status as the registry reads it back (`registry org show`), not as the command that changed it said.</summary>
    private static async Task<string> ItemStatusAsync(TestServer server)
    {
        using JsonDocument organisation = Parse(await RunAsync(server, TestServer.AuditorKey, "registry", "org", "show", TestRecords.Provider, "--output", "json"));
        return organisation.RootElement.GetProperty("serviceItems").EnumerateArray()
            .Single(i => i.GetProperty("serviceItem").GetString() == Admissions.ServiceItem).GetProperty("status").GetString()!;
    }

    private static string Shanghai(DateTimeOffset instant) => instant.ToOffset(TimeSpan.FromHours(8)).ToString("yyyy-MM-dd HH:mm", CultureInfo.InvariantCulture);
}
