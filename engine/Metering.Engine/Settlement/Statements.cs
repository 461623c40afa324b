using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Metering.Engine.Time;

namespace Metering.Engine.Settlement;

/// <summary>
/// One row of a statement. Which fields a row fills depends on its record kind (see
/// settlement.md); the others are null or empty and are written as empty CSV fields.
/// </summary>
public sealed record StatementRow
{
    public required string Record { get; init; }
    public DateOnly? UsageDay { get; init; }
    public string Provider { get; init; } = "";
    public string Holder { get; init; } = "";
    public long? Contract { get; init; }
    public string DeviceModel { get; init; } = "";
    public string FeeUnit { get; init; } = "";
    public long? Records { get; init; }
    public long? UsageNpfh { get; init; }
    public long? CardMs { get; init; }
    public long? PriceFen { get; init; }
    public long? FeeFen { get; init; }
    public long? Claim { get; init; }
    public long? Voucher { get; init; }
    public string Payee { get; init; } = "";
    public long? SubsidyFen { get; init; }
    public long? HolderPaysFen { get; init; }
    public long? ProgrammePaysFen { get; init; }
    public string Note { get; init; } = "";
}

/// <summary>A statement of one party for one closed day.</summary>
public sealed record PartyStatement(DateOnly Day, string PartyKind, string Party, IReadOnlyList<StatementRow> Rows);

/// <summary>
/// The statement formats. CSV is canonical: its bytes are what each statement's SHA-256 and the
/// settlement hash are taken over, so it is written by hand with a fixed column order, integers
/// only, ordinal order of rows, LF line ends, UTF-8 without a byte-order mark and RFC 4180
/// quoting. JSON is a rendering of the same rows, deterministic but not hashed, to which a reader
/// may add the party's payee account (<see cref="PayeePosition"/>); the readable forms (text and
/// HTML, in Chinese) are <see cref="StatementRendering"/>'s.
/// </summary>
public static class StatementFormats
{
    /// <summary>
    /// The version of the canonical form; stored on every run. Format 2 added the provider's
    /// <c>merkle_root</c> row; statements of format-1 runs have none and are never rewritten.
    /// </summary>
    public const int CanonicalFormat = 2;

    public const string Programme = "programme";
    public const string ProviderKind = "provider";
    public const string HolderKind = "holder";

    public static readonly string[] Columns =
    [
        "day", "party_kind", "party", "record", "usage_day", "provider", "holder", "contract", "device_model", "fee_unit", "records", "usage_npfh",
        "card_ms", "price_fen", "fee_fen", "claim", "voucher", "payee", "subsidy_fen", "holder_pays_fen", "programme_pays_fen", "note",
    ];

    /// <summary>
    /// The row kind that publishes a provider's Merkle root of the day's metering log as settled
    /// (merkle-proofs.md): usage_day = the day, provider = the provider, records = the leaf
    /// count, note = the 32-byte root in lower-case hex. It carries no money and no usage, and
    /// totals leave it out.
    /// </summary>
    public const string MerkleRootRecord = "merkle_root";

    /// <summary>Record kinds in the order rows appear; a statement ends with its one total row.</summary>
    public static readonly string[] RecordOrder = ["usage", "adjustment", "subsidy", "hold_expired", MerkleRootRecord, "total"];

    /// <summary>The merkle_root row of a provider's statement.</summary>
    public static StatementRow MerkleRootRow(DateOnly day, string provider, int leafCount, ReadOnlySpan<byte> root) => new()
    {
        Record = MerkleRootRecord,
        UsageDay = day,
        Provider = provider,
        Records = leafCount,
        Note = Convert.ToHexStringLower(root),
    };

    /// <summary>Rows in canonical order: by record kind, then usage day, provider, holder, contract, model and claim, ordinally.</summary>
    public static IReadOnlyList<StatementRow> Order(IEnumerable<StatementRow> rows) =>
        rows.OrderBy(r => Array.IndexOf(RecordOrder, r.Record))
            .ThenBy(r => r.UsageDay ?? DateOnly.MinValue)
            .ThenBy(r => r.Provider, StringComparer.Ordinal)
            .ThenBy(r => r.Holder, StringComparer.Ordinal)
            .ThenBy(r => r.Contract ?? 0)
            .ThenBy(r => r.DeviceModel, StringComparer.Ordinal)
            .ThenBy(r => r.Claim ?? 0)
            .ToList();

    public static byte[] CanonicalCsv(PartyStatement statement)
    {
        var text = new StringBuilder();
        text.Append(string.Join(',', Columns)).Append('\n');
        foreach (StatementRow row in statement.Rows)
        {
            string[] fields =
            [
                ShanghaiTime.IsoDate(statement.Day), statement.PartyKind, statement.Party, row.Record, row.UsageDay is { } d ? ShanghaiTime.IsoDate(d) : "", row.Provider, row.Holder, Number(row.Contract),
                row.DeviceModel, row.FeeUnit, Number(row.Records), Number(row.UsageNpfh), Number(row.CardMs), Number(row.PriceFen), Number(row.FeeFen), Number(row.Claim),
                Number(row.Voucher), row.Payee, Number(row.SubsidyFen), Number(row.HolderPaysFen), Number(row.ProgrammePaysFen), row.Note,
            ];
            text.AppendJoin(',', fields.Select(Quote)).Append('\n');
        }

        return new UTF8Encoding(encoderShouldEmitUTF8Identifier: false).GetBytes(text.ToString());
    }

    public static byte[] Sha256(byte[] canonicalCsv) => SHA256.HashData(canonicalCsv);

    /// <summary>The settlement hash: SHA-256 over the canonical CSVs of the statements, concatenated in their order.</summary>
    public static byte[] SettlementHash(IEnumerable<byte[]> canonicalCsvsInOrder)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (byte[] csv in canonicalCsvsInOrder)
        {
            hash.AppendData(csv);
        }

        return hash.GetHashAndReset();
    }

    /// <summary>Reads a canonical CSV back into its statement.</summary>
    public static PartyStatement ParseCanonicalCsv(byte[] canonicalCsv)
    {
        List<string[]> records = ParseCsv(Encoding.UTF8.GetString(canonicalCsv));
        if (records.Count < 1 || !records[0].SequenceEqual(Columns))
        {
            throw new InvalidDataException("not a canonical statement: the header does not match");
        }

        var rows = new List<StatementRow>();
        DateOnly day = default;
        string kind = "";
        string party = "";
        foreach (string[] f in records.Skip(1))
        {
            day = ParseDate(f[0]);
            kind = f[1];
            party = f[2];
            rows.Add(new StatementRow
            {
                Record = f[3],
                UsageDay = f[4].Length == 0 ? null : ParseDate(f[4]),
                Provider = f[5],
                Holder = f[6],
                Contract = Long(f[7]),
                DeviceModel = f[8],
                FeeUnit = f[9],
                Records = Long(f[10]),
                UsageNpfh = Long(f[11]),
                CardMs = Long(f[12]),
                PriceFen = Long(f[13]),
                FeeFen = Long(f[14]),
                Claim = Long(f[15]),
                Voucher = Long(f[16]),
                Payee = f[17],
                SubsidyFen = Long(f[18]),
                HolderPaysFen = Long(f[19]),
                ProgrammePaysFen = Long(f[20]),
                Note = f[21],
            });
        }

        return new PartyStatement(day, kind, party, rows);
    }

    /// <summary>
    /// The same rows as one JSON object; empty fields are left out, numbers are JSON integers.
    /// With a <paramref name="payable"/>, a <c>payable</c> object follows the rows: the party's
    /// payee account as at the end of the day, read from the ledger, not part of the hashed form.
    /// </summary>
    public static string Json(PartyStatement statement, byte[] sha256, PayeePosition? payable = null)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            json.WriteString("format", $"metering-statement/{CanonicalFormat}");
            json.WriteString("day", ShanghaiTime.IsoDate(statement.Day));
            json.WriteString("partyKind", statement.PartyKind);
            json.WriteString("party", statement.Party);
            json.WriteString("sha256", Convert.ToHexStringLower(sha256));
            json.WriteStartArray("rows");
            foreach (StatementRow row in statement.Rows)
            {
                json.WriteStartObject();
                json.WriteString("record", row.Record);
                if (row.Record == MerkleRootRecord)
                {
                    // The same CSV fields under the names they have in this row kind.
                    WriteText(json, "usageDay", row.UsageDay is { } rootDay ? ShanghaiTime.IsoDate(rootDay) : "");
                    WriteText(json, "provider", row.Provider);
                    WriteNumber(json, "leafCount", row.Records);
                    WriteText(json, "root", row.Note);
                    json.WriteEndObject();
                    continue;
                }

                WriteText(json, "usageDay", row.UsageDay is { } d ? ShanghaiTime.IsoDate(d) : "");
                WriteText(json, "provider", row.Provider);
                WriteText(json, "holder", row.Holder);
                WriteNumber(json, "contract", row.Contract);
                WriteText(json, "deviceModel", row.DeviceModel);
                WriteText(json, "feeUnit", row.FeeUnit);
                WriteNumber(json, "records", row.Records);
                WriteNumber(json, "usageNpfh", row.UsageNpfh);
                WriteNumber(json, "cardMs", row.CardMs);
                WriteNumber(json, "priceFen", row.PriceFen);
                WriteNumber(json, "feeFen", row.FeeFen);
                WriteNumber(json, "claim", row.Claim);
                WriteNumber(json, "voucher", row.Voucher);
                WriteText(json, "payee", row.Payee);
                WriteNumber(json, "subsidyFen", row.SubsidyFen);
                WriteNumber(json, "holderPaysFen", row.HolderPaysFen);
                WriteNumber(json, "programmePaysFen", row.ProgrammePaysFen);
                WriteText(json, "note", row.Note);
                json.WriteEndObject();
            }

            json.WriteEndArray();
            if (payable is not null)
            {
                json.WriteStartObject("payable");
                json.WriteNumber("postedFen", payable.PostedFen);
                json.WriteNumber("paidFen", payable.PaidFen);
                json.WriteNumber("outstandingFen", payable.OutstandingFen);
                json.WriteStartArray("payoutsOfDay");
                foreach (PayoutRecord payout in payable.PayoutsOfDay)
                {
                    json.WriteStartObject();
                    json.WriteNumber("payout", payout.PayoutId);
                    json.WriteString("payee", payout.PayeeCode);
                    json.WriteNumber("amountFen", payout.AmountFen);
                    json.WriteString("bankReference", payout.BankReference);
                    json.WriteEndObject();
                }

                json.WriteEndArray();
                json.WriteEndObject();
            }

            json.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.ToArray()) + "\n";
    }

    private static void WriteText(Utf8JsonWriter json, string name, string value)
    {
        if (value.Length > 0)
        {
            json.WriteString(name, value);
        }
    }

    private static void WriteNumber(Utf8JsonWriter json, string name, long? value)
    {
        if (value is { } v)
        {
            json.WriteNumber(name, v);
        }
    }

    private static string Quote(string field) =>
        field.AsSpan().IndexOfAny(",\"\r\n") < 0 ? field : "\"" + field.Replace("\"", "\"\"", StringComparison.Ordinal) + "\"";

    private static List<string[]> ParseCsv(string text)
    {
        var records = new List<string[]>();
        var fields = new List<string>();
        var field = new StringBuilder();
        bool quoted = false;
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (quoted)
            {
                if (c == '"' && i + 1 < text.Length && text[i + 1] == '"')
                {
                    field.Append('"');
                    i++;
                }
                else if (c == '"')
                {
                    quoted = false;
                }
                else
                {
                    field.Append(c);
                }
            }
            else if (c == '"')
            {
                quoted = true;
            }
            else if (c == ',')
            {
                fields.Add(field.ToString());
                field.Clear();
            }
            else if (c == '\n')
            {
                fields.Add(field.ToString());
                field.Clear();
                records.Add(fields.ToArray());
                fields.Clear();
            }
            else
            {
                field.Append(c);
            }
        }

        return records;
    }

    private static DateOnly ParseDate(string text) => DateOnly.ParseExact(text, "yyyy-MM-dd", CultureInfo.InvariantCulture);

    private static string Number(long? value) => value is { } v ? v.ToString(CultureInfo.InvariantCulture) : "";

    private static long? Long(string text) => text.Length == 0 ? null : long.Parse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture);
}
