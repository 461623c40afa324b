using System.Text;
using Metering.Engine.Ledger;
using Metering.Engine.Settlement;

namespace Metering.Engine.Tests.Settlement;

/// <summary>The canonical statement form: fixed columns, canonical row order, RFC 4180 quoting, and a round trip.</summary>
public sealed class StatementFormatTests
{
    private static readonly DateOnly Day = new(2026, 11, 20);

    private static PartyStatement Sample(params StatementRow[] rows) => new(Day, "provider", "914403001922038216", StatementFormats.Order(rows));

    private static StatementRow Usage(string holder, string model, long fee) => new()
    {
        Record = "usage",
        UsageDay = Day,
        Provider = "914403001922038216",
        Holder = holder,
        Contract = 7,
        DeviceModel = model,
        FeeUnit = "per_card_hour",
        Records = 1,
        UsageNpfh = 10,
        CardMs = 20,
        PriceFen = 1_800,
        FeeFen = fee,
    };

    [Fact]
    public void Rows_are_ordered_by_kind_then_keys_ordinally_whatever_order_they_come_in()
    {
        var total = new StatementRow { Record = "total", FeeFen = 3 };
        var adjustment = Usage("B", "H100-SXM", 1) with { Record = "adjustment", UsageDay = Day.AddDays(-1) };
        PartyStatement one = Sample(total, Usage("b", "H100-SXM", 1), adjustment, Usage("B", "A100-SXM", 1), Usage("B", "H100-SXM", 1));
        PartyStatement two = Sample(Usage("B", "H100-SXM", 1), Usage("b", "H100-SXM", 1), Usage("B", "A100-SXM", 1), adjustment, total);

        Assert.Equal(StatementFormats.CanonicalCsv(one), StatementFormats.CanonicalCsv(two));
        Assert.Equal(["usage:B:A100-SXM", "usage:B:H100-SXM", "usage:b:H100-SXM", "adjustment:B:H100-SXM", "total::"],
            one.Rows.Select(r => $"{r.Record}:{r.Holder}:{r.DeviceModel}"));
    }

    [Fact]
    public void The_merkle_root_row_comes_before_the_total_keeps_the_22_columns_and_renders_under_its_own_names()
    {
        const string provider = "914403001922038216";
        byte[] root = System.Security.Cryptography.SHA256.HashData("a day"u8);
        string hex = Convert.ToHexStringLower(root);
        PartyStatement statement = Sample(new StatementRow { Record = "total", Records = 1 }, StatementFormats.MerkleRootRow(Day, provider, 13, root), Usage("H", "H100-SXM", 5));

        byte[] csv = StatementFormats.CanonicalCsv(statement);
        string[] lines = Encoding.UTF8.GetString(csv).Split('\n');
        using var json = System.Text.Json.JsonDocument.Parse(StatementFormats.Json(statement, new byte[32]));
        System.Text.Json.JsonElement row = json.RootElement.GetProperty("rows")[1];

        Assert.Equal(["usage", StatementFormats.MerkleRootRecord, "total"], statement.Rows.Select(r => r.Record));
        Assert.Equal($"2026-11-20,provider,{provider},merkle_root,2026-11-20,{provider},,,,,13,,,,,,,,,,,{hex}", lines[2]);
        Assert.Equal(StatementFormats.Columns.Length, lines[2].Split(',').Length);
        Assert.Equal(statement.Rows, StatementFormats.ParseCanonicalCsv(csv).Rows);
        Assert.Equal((StatementFormats.MerkleRootRecord, 13, hex), (row.GetProperty("record").GetString(), row.GetProperty("leafCount").GetInt32(), row.GetProperty("root").GetString()));
        Assert.False(row.TryGetProperty("records", out _) || row.TryGetProperty("note", out _));
        Assert.Contains(hex, StatementRendering.Text(statement, new StatementContext(new byte[32], "", DateTimeOffset.UnixEpoch, PartyNames.None)), StringComparison.Ordinal);
    }

    [Fact]
    public void Fields_with_commas_quotes_or_line_breaks_are_quoted_and_read_back_unchanged()
    {
        PartyStatement statement = Sample(Usage("H", "odd,\"model\"\nX", 5), new StatementRow { Record = "total", Note = "a\r\nb" });

        byte[] csv = StatementFormats.CanonicalCsv(statement);
        PartyStatement back = StatementFormats.ParseCanonicalCsv(csv);

        Assert.Contains("\"odd,\"\"model\"\"\nX\"", Encoding.UTF8.GetString(csv), StringComparison.Ordinal);
        Assert.Equal(statement, back with { Rows = statement.Rows });
        Assert.Equal(statement.Rows, back.Rows);
        Assert.Equal(csv, StatementFormats.CanonicalCsv(back));
    }

    [Fact]
    public void The_canonical_form_is_utf8_without_a_byte_order_mark_with_lf_line_ends()
    {
        byte[] csv = StatementFormats.CanonicalCsv(Sample(new StatementRow { Record = "total", Note = "南山" }));

        Assert.NotEqual(0xEF, csv[0]);
        Assert.DoesNotContain((byte)'\r', csv);
        Assert.EndsWith("南山\n", Encoding.UTF8.GetString(csv), StringComparison.Ordinal);
    }

    [Fact]
    public void The_settlement_hash_is_sha256_over_the_statements_concatenated_in_order()
    {
        byte[] a = Encoding.UTF8.GetBytes("first\n");
        byte[] b = Encoding.UTF8.GetBytes("second\n");

        Assert.Equal(System.Security.Cryptography.SHA256.HashData(Encoding.UTF8.GetBytes("first\nsecond\n")), StatementFormats.SettlementHash([a, b]));
        Assert.NotEqual(StatementFormats.SettlementHash([a, b]), StatementFormats.SettlementHash([b, a]));
    }

    [Fact]
    public void A_ledger_entry_that_does_not_balance_fails_in_every_build()
    {
        var entry = new LedgerEntry("usage_billing", "day:2026-11-20", "test").Debit(Accounts.HolderDue("H"), 10).Credit(Accounts.ProviderReceivable("P"), 9);

        Assert.Throws<LedgerInvariantException>(entry.AssertBalanced);
        Assert.Throws<LedgerInvariantException>(() => entry.Debit(Accounts.HolderDue("H"), -1));
        entry.Credit(Accounts.ProviderReceivable("P"), 1).Credit(Accounts.ProviderReceivable("P"), 0);
        entry.AssertBalanced();
        Assert.Equal(3, entry.Lines.Count);
    }
}
