using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Metering.Engine.Fixtures;
using Metering.Engine.Identity;
using Metering.Fixtures;
using Metering.Server.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>
/// `--output table|json|csv` on the commands that print rows, run as processes against a real
/// server over TLS: JSON and CSV carry the values the table shows (money as integer fen, times
/// with their offset), CSV follows RFC 4180 where a name holds a comma and quotes, and a format
/// the CLI does not know is a usage error.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed partial class OutputFormatCliTests(PostgresFixture postgres)
{
    private const string Day = "2026-11-20";

    /// <summary>A name that a naive CSV writer breaks: a comma, quotes and Chinese.</summary>
    private const string TrickyName = "Shenzhen \"Compute\", Ltd. 深圳算力";

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    [Fact]
    public async Task Json_and_csv_carry_the_values_the_table_shows_with_money_in_fen_and_times_with_their_offset()
    {
        var clock = new ManualClock(VoucherScene.Now);
        await using TestServer server = await TestServer.StartAsync(postgres, time: clock);
        await using VoucherScene scene = VoucherScene.Over(server.ConnectionString, clock);
        string holder = await scene.HolderAsync();
        var contract = await scene.ContractAsync(holder);
        var voucher = await scene.VoucherAsync(contract.ContractId, 100_000_000);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, VoucherScene.Day, 12));
        await scene.ClaimJobsAsync(contract.ContractId, "job-1120-000", "job-1120-001");
        string tricky = VoucherScene.NewCode();
        var register = await RunAsync(server, TestServer.OperatorKey, "voucher", "holder", "register", "--code", tricky, "--name", TrickyName, "--type", "enterprise",
            "--district", "futian", "--established", "2020-01-02");
        Assert.True(register.ExitCode == 0, register.Stderr);

        // Holders: the same rows three ways; the tricky name survives JSON and CSV byte for byte.
        var holdersTable = await RunAsync(server, TestServer.OperatorKey, "voucher", "holder", "list");
        var holdersJson = await RunAsync(server, TestServer.OperatorKey, "voucher", "holder", "list", "--output", "json");
        var holdersCsv = await RunAsync(server, TestServer.OperatorKey, "voucher", "holder", "list", "--output", "csv");
        Assert.Contains(TrickyName, holdersTable.Stdout, StringComparison.Ordinal);
        JsonElement[] holders = [.. Array(holdersJson).EnumerateArray()];
        Assert.Equal(2, holders.Length);
        JsonElement trickyRow = holders.Single(h => h.GetProperty("creditCode").GetString() == tricky);
        Assert.Equal(TrickyName, trickyRow.GetProperty("name").GetString());
        Assert.Equal("2020-01-02", trickyRow.GetProperty("establishedOn").GetString());
        List<string[]> csv = Rfc4180(holdersCsv);
        Assert.Equal(new[] { "creditCode", "name", "type", "district", "establishedOn", "status" }, csv[0]);
        Assert.Equal(holders.Length, csv.Count - 1);
        foreach (JsonElement row in holders)
        {
            string code = row.GetProperty("creditCode").GetString()!;
            string[] line = csv.Single(l => l[0] == code);
            Assert.Equal(csv[0].Select(name => row.GetProperty(name).GetString()!).ToArray(), line);
            // The table shows the same holder with the same status.
            Assert.Matches($"{code} .*{Regex(row.GetProperty("status").GetString()!)}", holdersTable.Stdout);
        }

        // A claim with its caps and lines: one object, money in fen, csv refused.
        long claimId = await server.ScalarAsync<long>("SELECT max(claim_id) FROM claims");
        using (JsonDocument shownClaim = Parse(await RunAsync(server, TestServer.AuditorKey, "voucher", "claim", "show", $"{claimId}", "--output", "json")))
        {
            JsonElement fields = shownClaim.RootElement.GetProperty("claim");
            Assert.Equal(claimId, fields.GetProperty("claimId").GetInt64());
            Assert.Equal("2400", fields.GetProperty("eligibleFeeFen").GetRawText());
            Assert.Equal("1200", fields.GetProperty("subsidyFen").GetRawText());
            Assert.Equal(2400, shownClaim.RootElement.GetProperty("lines").EnumerateArray().Sum(l => l.GetProperty("feeFen").GetInt64()));
        }

        Assert.Equal(2, (await RunAsync(server, TestServer.AuditorKey, "voucher", "claim", "show", $"{claimId}", "--output", "csv")).ExitCode);

        // Claims: money as integer fen where the table shows yuan.
        var claimsTable = await RunAsync(server, TestServer.AuditorKey, "voucher", "claim", "list");
        var claimsJson = await RunAsync(server, TestServer.AuditorKey, "voucher", "claim", "list", "--output", "json");
        JsonElement claim = Array(claimsJson).EnumerateArray().Single();
        Assert.Equal(JsonValueKind.Number, claim.GetProperty("eligibleFeeFen").ValueKind);
        Assert.Equal("2400", claim.GetProperty("eligibleFeeFen").GetRawText());
        Assert.Equal("1200", claim.GetProperty("subsidyFen").GetRawText());
        Assert.Equal(contract.ContractId, claim.GetProperty("contractId").GetInt64());
        Assert.Matches($@"{contract.ContractId} +{voucher.VoucherId} +{holder} +2 +24\.00 +12\.00 ", claimsTable.Stdout);

        // A show prints one object, not an array of one.
        var voucherJson = await RunAsync(server, TestServer.AuditorKey, "voucher", "show", $"{voucher.VoucherId}", "--output", "json");
        using (JsonDocument shown = Parse(voucherJson))
        {
            Assert.Equal(JsonValueKind.Object, shown.RootElement.ValueKind);
            Assert.Equal("100000000", shown.RootElement.GetProperty("faceValueFen").GetRawText());
            Assert.Equal("1200", shown.RootElement.GetProperty("heldFen").GetRawText());
        }

        // Settle's result for programs: the run's words go to standard error, the row to standard output.
        var settled = await RunAsync(server, TestServer.SettlementKey, "settle", "--day", Day, "--output", "json");
        string hash = await scene.ScalarAsync<string>("SELECT encode(settlement_sha256, 'hex') FROM settlement_runs");
        JsonElement run = Array(settled).EnumerateArray().Single();
        Assert.Equal(Day, run.GetProperty("day").GetString());
        Assert.False(run.GetProperty("alreadyClosed").GetBoolean());
        Assert.Equal(12, run.GetProperty("dayRecords").GetInt64());
        Assert.Equal(hash, run.GetProperty("settlementSha256").GetString());
        Assert.Contains("reconcile: balanced", settled.Stderr, StringComparison.Ordinal);
        long feeFen = run.GetProperty("feeFen").GetInt64();
        Assert.Equal(await scene.ScalarAsync<long>("SELECT fee_fen FROM settlement_runs"), feeFen);

        var listedCsv = await RunAsync(server, TestServer.AuditorKey, "settle", "list", "--output", "csv");
        var listedTable = await RunAsync(server, TestServer.AuditorKey, "settle", "list");
        List<string[]> days = Rfc4180(listedCsv);
        Assert.Equal(new[] { "day", "dayRecords", "lateRecords", "feeFen", "subsidyFen", "settledBy", "finishedAt", "settlementSha256" }, days[0]);
        string[] listed = days.Skip(1).Single();
        Assert.Equal(new[] { Day, "12", "0", feeFen.ToString(CultureInfo.InvariantCulture) }, listed[..4]);
        Assert.Equal(hash, listed[7]);
        // The finish time is an ISO 8601 instant in Asia/Shanghai, the zone the table shows it in.
        var finished = DateTimeOffset.ParseExact(listed[6], "yyyy-MM-dd'T'HH:mm:ss.FFFzzz", CultureInfo.InvariantCulture);
        Assert.Equal(TimeSpan.FromHours(8), finished.Offset);
        Assert.Contains($"{finished:yyyy-MM-dd HH:mm:ss}", listedTable.Stdout, StringComparison.Ordinal);
        Assert.Contains($"{Yuan(feeFen)}", listedTable.Stdout, StringComparison.Ordinal);

        // Chain verification results: the table's stream and count, and a boolean for intact.
        var verified = await RunAsync(server, TestServer.AuditorKey, "audit", "verify", "--provider", TestRecords.Provider, "--output", "json");
        JsonElement[] streams = [.. Array(verified).EnumerateArray()];
        Assert.All(streams, s => Assert.True(s.GetProperty("intact").GetBoolean()));
        JsonElement stream = streams.Single(s => s.GetProperty("streamId").GetString() == "cluster-a");
        Assert.Equal(12, stream.GetProperty("recordsChecked").GetInt64());
        Assert.Equal(JsonValueKind.Null, stream.GetProperty("breakSequence").ValueKind);

        // Keys: every credential the table lists, with its issue time and offset.
        var keysTable = await RunAsync(server, TestServer.OperatorKey, "key", "list");
        var keysJson = await RunAsync(server, TestServer.OperatorKey, "key", "list", "--output", "json");
        JsonElement[] keys = [.. Array(keysJson).EnumerateArray()];
        Assert.NotEmpty(keys);
        foreach (JsonElement key in keys)
        {
            var issued = DateTimeOffset.Parse(key.GetProperty("issuedAt").GetString()!, CultureInfo.InvariantCulture);
            Assert.EndsWith("+08:00", key.GetProperty("issuedAt").GetString(), StringComparison.Ordinal);
            Assert.Matches($@"(?m)^ *{key.GetProperty("credentialId").GetInt64()} +{key.GetProperty("role").GetString()} +{Regex(key.GetProperty("subject").GetString()!)} .*{issued:yyyy-MM-dd HH:mm}", keysTable.Stdout);
        }

        Assert.Equal(keys.Length, keysTable.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length - 2);
    }

    [Fact]
    public async Task Sectioned_and_key_value_commands_give_json_with_the_values_the_table_shows_and_refuse_csv_where_sections_differ()
    {
        var clock = new ManualClock(VoucherScene.Now);
        await using TestServer server = await TestServer.StartAsync(postgres, time: clock);
        await using VoucherScene scene = VoucherScene.Over(server.ConnectionString, clock);
        string holder = await scene.HolderAsync();
        var contract = await scene.ContractAsync(holder);
        var voucher = await scene.VoucherAsync(contract.ContractId, 100_000_000);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, VoucherScene.Day, 3));

        // A holder with its contracts and vouchers: one object with a member per section.
        var holderJson = await RunAsync(server, TestServer.OperatorKey, "voucher", "holder", "show", holder, "--output", "json");
        using (JsonDocument shown = Parse(holderJson))
        {
            JsonElement root = shown.RootElement;
            Assert.Equal(holder, root.GetProperty("holder").GetProperty("creditCode").GetString());
            Assert.Equal(contract.ContractId, root.GetProperty("contracts").EnumerateArray().Single().GetProperty("contractId").GetInt64());
            JsonElement shownVoucher = root.GetProperty("vouchers").EnumerateArray().Single();
            Assert.Equal(voucher.VoucherId, shownVoucher.GetProperty("voucherId").GetInt64());
            Assert.Equal("100000000", shownVoucher.GetProperty("faceValueFen").GetRawText());
        }

        // CSV has one header row, so it cannot hold three sections: a usage error before any call.
        var holderCsv = await RunAsync(server, TestServer.OperatorKey, "voucher", "holder", "show", holder, "--output", "csv");
        Assert.Equal(2, holderCsv.ExitCode);
        Assert.Contains("--output csv is not available for `voucher holder show`", holderCsv.Stderr, StringComparison.Ordinal);
        Assert.Equal("", holderCsv.Stdout);

        // The server's clock as values: the test's clock, in Shanghai time with its offset.
        long nowMs = clock.GetUtcNow().ToUnixTimeMilliseconds();
        var clockJson = await RunAsync(server, TestServer.OperatorKey, "clock", "show", "--output", "json");
        using (JsonDocument shown = Parse(clockJson))
        {
            Assert.Equal(nowMs, shown.RootElement.GetProperty("nowUnixMs").GetInt64());
            string now = shown.RootElement.GetProperty("now").GetString()!;
            Assert.EndsWith("+08:00", now, StringComparison.Ordinal);
            Assert.Equal(nowMs, DateTimeOffset.Parse(now, CultureInfo.InvariantCulture).ToUnixTimeMilliseconds());
            Assert.False(shown.RootElement.GetProperty("simulated").GetBoolean());
        }

        List<string[]> clockCsv = Rfc4180(await RunAsync(server, TestServer.OperatorKey, "clock", "show", "--output", "csv"));
        Assert.Equal(new[] { "now", "nowUnixMs", "simulated", "offsetMs" }, clockCsv[0]);
        Assert.Equal(nowMs.ToString(CultureInfo.InvariantCulture), clockCsv[1][1]);

        // The day's Merkle root: the same leaves and root as the table prints.
        string day = VoucherScene.Day.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture);
        var rootTable = await RunAsync(server, TestServer.AuditorKey, "audit", "merkle-root", "--provider", TestRecords.Provider, "--day", day);
        var rootJson = await RunAsync(server, TestServer.AuditorKey, "audit", "merkle-root", "--provider", TestRecords.Provider, "--day", day, "--output", "json");
        Assert.True(rootTable.ExitCode == 0, rootTable.Stderr);
        using (JsonDocument shown = Parse(rootJson))
        {
            JsonElement root = shown.RootElement;
            Assert.Equal(3, root.GetProperty("leaves").GetInt64());
            Assert.Equal(day, root.GetProperty("day").GetString());
            Assert.Contains($"leaves    {root.GetProperty("leaves").GetInt64()}", rootTable.Stdout, StringComparison.Ordinal);
            Assert.Contains($"root      {root.GetProperty("root").GetString()}", rootTable.Stdout, StringComparison.Ordinal);
            Assert.Matches("^[0-9a-f]{64}$", root.GetProperty("root").GetString()!);

            // A record's proof leads to that root: folding its steps over its leaf hash gives it.
            var proofJson = await RunAsync(server, TestServer.AuditorKey, "audit", "proof", "--provider", TestRecords.Provider, "--stream", "cluster-a", "--sequence", "1", "--output", "json");
            using JsonDocument proof = Parse(proofJson);
            Assert.Equal(root.GetProperty("root").GetString(), proof.RootElement.GetProperty("proof").GetProperty("root").GetString());
            byte[] node = Convert.FromHexString(proof.RootElement.GetProperty("proof").GetProperty("leafHash").GetString()!);
            foreach (JsonElement step in proof.RootElement.GetProperty("steps").EnumerateArray())
            {
                byte[] sibling = Convert.FromHexString(step.GetProperty("sibling").GetString()!);
                byte[] pair = step.GetProperty("side").GetString() == "left" ? [.. sibling, .. node] : [.. node, .. sibling];
                node = System.Security.Cryptography.SHA256.HashData([0x01, .. pair]);
            }

            Assert.Equal(root.GetProperty("root").GetString(), Convert.ToHexStringLower(node));
        }
    }

    [Fact]
    public async Task Registry_org_show_batch_list_and_history_give_json_and_csv_with_the_values_the_table_shows()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);

        // The organisation with its sections: the admitted item active, as the table says.
        var orgTable = await RunAsync(server, TestServer.OperatorKey, "registry", "org", "show", TestRecords.Provider);
        var orgJson = await RunAsync(server, TestServer.OperatorKey, "registry", "org", "show", TestRecords.Provider, "--output", "json");
        Assert.True(orgTable.ExitCode == 0, orgTable.Stderr);
        using (JsonDocument shown = Parse(orgJson))
        {
            JsonElement root = shown.RootElement;
            Assert.Equal(TestRecords.Provider, root.GetProperty("organisation").GetProperty("creditCode").GetString());
            JsonElement item = root.GetProperty("serviceItems").EnumerateArray().Single(i => i.GetProperty("serviceItem").GetString() == Admissions.ServiceItem);
            Assert.Equal("ACTIVE", item.GetProperty("status").GetString());
            Assert.EndsWith("+08:00", item.GetProperty("validUntil").GetString(), StringComparison.Ordinal);
            JsonElement application = root.GetProperty("applications").EnumerateArray().Single();
            Assert.Equal(JsonValueKind.Number, application.GetProperty("declaredFp16Gflops").ValueKind);
            Assert.Contains(application.GetProperty("noticeNumber").GetString()!, orgTable.Stdout, StringComparison.Ordinal);
        }

        var orgCsv = await RunAsync(server, TestServer.OperatorKey, "registry", "org", "show", TestRecords.Provider, "--output", "csv");
        Assert.Equal(2, orgCsv.ExitCode);
        Assert.Contains("--output csv is not available for `registry org show`", orgCsv.Stderr, StringComparison.Ordinal);
        Assert.Equal("", orgCsv.Stdout);

        // Batches: the table's batch ids, with money in fen and capacity in integer GFLOPS.
        var batchTable = await RunAsync(server, TestServer.OperatorKey, "registry", "batch", "list");
        JsonElement[] batches = [.. Array(await RunAsync(server, TestServer.OperatorKey, "registry", "batch", "list", "--output", "json")).EnumerateArray()];
        Assert.NotEmpty(batches);
        foreach (JsonElement batch in batches)
        {
            // An all-digit id is right-aligned in the table, as numbers are.
            Assert.Matches($"(?m)^ *{Regex(batch.GetProperty("batchId").GetString()!)} ", batchTable.Stdout);
            Assert.Equal(JsonValueKind.Number, batch.GetProperty("minAnnualRentalFen").ValueKind);
            Assert.Equal(JsonValueKind.Number, batch.GetProperty("capacityMinimumGflops").ValueKind);
        }

        List<string[]> batchCsv = Rfc4180(await RunAsync(server, TestServer.OperatorKey, "registry", "batch", "list", "--output", "csv"));
        Assert.Equal("batchId", batchCsv[0][0]);
        Assert.Equal(batches.Select(b => b.GetProperty("batchId").GetString()), batchCsv.Skip(1).Select(l => l[0]));

        // History: an organisation registered now is its one change, the entity after it as the JSON text recorded.
        string code = CreditCode.Complete("91440300MA5G00077");
        var register = await RunAsync(server, TestServer.OperatorKey, "registry", "org", "add", "--code", code, "--name", "Output Test Co", "--legal-form", "enterprise",
            "--district", "nanshan", "--established", "2016-04-01");
        Assert.True(register.ExitCode == 0, register.Stderr);
        JsonElement change = Array(await RunAsync(server, TestServer.AuditorKey, "registry", "history", "--code", code, "--output", "json")).EnumerateArray().Single();
        Assert.Equal(JsonValueKind.Number, change.GetProperty("changeId").ValueKind);
        Assert.Equal(JsonValueKind.Null, change.GetProperty("beforeJson").ValueKind);
        using JsonDocument after = JsonDocument.Parse(change.GetProperty("afterJson").GetString()!);
        Assert.Contains(after.RootElement.EnumerateObject(), field => field.Value.ValueKind == JsonValueKind.String && field.Value.GetString() == "Output Test Co");
    }

    [Fact]
    public async Task Ingest_file_json_report_counts_what_the_database_holds_and_lists_the_refused_lines_with_exit_7()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string samples = Path.Combine(TestRecords.RepositoryRoot(), "samples", "RawLogs");

        var run = await RunAsync(server, TestServer.ProviderKey, "ingest-file", Path.Combine(samples, "sacct-2026-11-20.txt"), "--stream", "slurm-nanshan", "--format", "sacct",
            "--mapping", Path.Combine(samples, "mapping.json"), "--output", "json");

        Assert.True(run.ExitCode == 7, run.Stderr);
        using JsonDocument report = JsonDocument.Parse(run.Stdout);
        JsonElement upload = report.RootElement.GetProperty("upload");
        Assert.True(upload.GetProperty("complete").GetBoolean());
        Assert.Equal(await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = 'slurm-nanshan'"), upload.GetProperty("records").GetInt64());
        JsonElement[] refused = [.. report.RootElement.GetProperty("refusedLines").EnumerateArray()];
        Assert.Contains(refused, line => line.GetProperty("reason").GetString() == "UNMAPPED_ACCOUNT" && line.GetProperty("line").ValueKind == JsonValueKind.Number);
        Assert.Contains(refused, line => line.GetProperty("reason").GetString() == "ELAPSED_MISMATCH");
        Assert.True(upload.GetProperty("refused").GetInt64() >= refused.Length);
    }

    [Fact]
    public async Task An_output_format_the_cli_does_not_know_exits_with_2_before_any_call_and_prints_nothing_on_standard_output()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string[][] attempts =
        [
            ["key", "list", "--output", "yaml"],
            // The spellings are exact: a program that asks for JSON gets it, or an error.
            ["settle", "list", "--output", "JSON"],
            ["voucher", "holder", "list", "--output", ""],
            ["audit", "anomalies", "--provider", TestRecords.Provider, "--from", Day, "--to", Day, "--output", "xml"],
        ];
        foreach (string[] attempt in attempts)
        {
            var (exit, stdout, stderr) = await RunAsync(server, TestServer.OperatorKey, attempt);
            Assert.True(exit == 2, $"{string.Join(' ', attempt)}: exit {exit}: {stdout}{stderr}");
            Assert.Equal("", stdout);
            Assert.Contains("is not one of table, json, csv", stderr, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void The_csv_reader_of_these_tests_refuses_what_rfc_4180_does_not_allow()
    {
        // The reader is the check on the CLI's CSV: were it lenient, the tests above could not fail.
        Assert.Equal(new[] { new[] { "a", "b,c", "d\"e" }, new[] { "", "x\r\ny", "z" } }, Rfc4180Text("a,\"b,c\",\"d\"\"e\"\r\n,\"x\r\ny\",z\r\n"));
        foreach (string bad in (string[])["a,b\n", "a,b\r\nc\r\n", "a\"b,c\r\n", "\"a\"b,c\r\n", "\"a,b\r\n", "a,b"])
        {
            Assert.Throws<FormatException>(() => Rfc4180Text(bad));
        }
    }

    private static string Regex(string text) => System.Text.RegularExpressions.Regex.Escape(text);

    private static string Yuan(long fen) => string.Create(CultureInfo.InvariantCulture, $"{fen / 100:N0}.{fen % 100:00}");

    private static JsonElement Array((int ExitCode, string Stdout, string Stderr) run)
    {
        Assert.True(run.ExitCode == 0, run.Stderr);
        using JsonDocument document = JsonDocument.Parse(run.Stdout);
        Assert.Equal(JsonValueKind.Array, document.RootElement.ValueKind);
        return document.RootElement.Clone();
    }

    private static JsonDocument Parse((int ExitCode, string Stdout, string Stderr) run)
    {
        Assert.True(run.ExitCode == 0, run.Stderr);
        return JsonDocument.Parse(run.Stdout);
    }

    private static List<string[]> Rfc4180((int ExitCode, string Stdout, string Stderr) run)
    {
        Assert.True(run.ExitCode == 0, run.Stderr);
        return Rfc4180Text(run.Stdout);
    }

    /// <summary>
    /// A strict RFC 4180 reader: records end with CRLF (the last one too), a field is quoted or
    /// holds no quote, a quote inside a quoted field is doubled, and every record has as many
    /// fields as the first.
    /// </summary>
    private static List<string[]> Rfc4180Text(string text)
    {
        var records = new List<string[]>();
        var fields = new List<string>();
        var field = new StringBuilder();
        int i = 0;
        while (i < text.Length)
        {
            if (text[i] == '"')
            {
                i++;
                while (true)
                {
                    if (i >= text.Length)
                    {
                        throw new FormatException("a quoted field is not closed");
                    }

                    if (text[i] == '"')
                    {
                        if (i + 1 < text.Length && text[i + 1] == '"')
                        {
                            field.Append('"');
                            i += 2;
                            continue;
                        }

                        i++;
                        break;
                    }

                    field.Append(text[i++]);
                }
            }
            else
            {
                while (i < text.Length && text[i] is not (',' or '\r' or '\n'))
                {
                    if (text[i] == '"')
                    {
                        throw new FormatException($"a quote inside an unquoted field at {i}");
                    }

                    field.Append(text[i++]);
                }
            }

            fields.Add(field.ToString());
            field.Clear();
            if (i < text.Length && text[i] == ',')
            {
                i++;
                continue;
            }

            if (i + 1 < text.Length && text[i] == '\r' && text[i + 1] == '\n')
            {
                i += 2;
                records.Add([.. fields]);
                if (records[^1].Length != records[0].Length)
                {
                    throw new FormatException($"record {records.Count} has {records[^1].Length} fields, the header {records[0].Length}");
                }

                fields.Clear();
                continue;
            }

            throw new FormatException(i >= text.Length ? "the last record does not end with CRLF" : $"'{text[i]}' after a field at {i}");
        }

        return records;
    }

    /// <summary>
    /// Runs `metering` against the server as the caller the key names, with standard output kept
    /// apart from standard error (a program reads only the former) and checked to be UTF-8 with
    /// no byte-order mark.
    /// </summary>
    private static async Task<(int ExitCode, string Stdout, string Stderr)> RunAsync(TestServer server, string apiKey, params string[] arguments)
    {
        var start = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string locale in (string[])["LC_ALL", "LC_MESSAGES", "LANG"])
        {
            start.Environment.Remove(locale);
        }

        start.ArgumentList.Add(ProgramBuilds.PathOf("metering.dll"));
        foreach (string argument in (string[])[.. arguments, "--server", server.Address.ToString().TrimEnd('/'), "--ca", TestCertificates.CaPemPath, "--api-key", apiKey])
        {
            start.ArgumentList.Add(argument);
        }

        using Process process = Process.Start(start)!;
        using var stdout = new MemoryStream();
        Task copy = process.StandardOutput.BaseStream.CopyToAsync(stdout);
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60));
        await copy;
        byte[] bytes = stdout.ToArray();
        Assert.False(bytes.AsSpan().StartsWith((byte[])[0xEF, 0xBB, 0xBF]), "standard output starts with a byte-order mark");
        return (process.ExitCode, StrictUtf8.GetString(bytes), await stderr);
    }
}
