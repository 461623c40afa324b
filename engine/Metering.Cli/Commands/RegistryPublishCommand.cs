using System.CommandLine;
using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;
using Metering.Engine.Registry;
using Metering.Protocol.V1;

namespace Metering.Cli.Commands;

/// <summary>
/// `metering registry publish notice|admitted`: the lists the bureau posts, in Chinese, as HTML,
/// CSV (Chinese headers, then the English field names on the line beneath) or JSON, from the
/// server's public PublicationService (no key needed).
/// </summary>
internal static class RegistryPublishCommand
{
    private static readonly (string Chinese, string English)[] NoticeColumns =
    [
        ("序号", "index"), ("机构名称", "name"), ("统一社会信用代码", "credit_code"), ("服务项目", "service_item"), ("批次", "batch_id"),
        ("申报算力（PFLOPS，FP16 稠密）", "declared_pflops"), ("核验算力（PFLOPS，FP16 稠密）", "verified_pflops"), ("公示截止（北京时间）", "notice_ends"),
    ];

    private static readonly (string Chinese, string English)[] AdmittedColumns =
    [
        ("序号", "index"), ("机构名称", "name"), ("统一社会信用代码", "credit_code"), ("服务项目", "service_item"), ("批次", "batch_id"),
        ("申报算力（PFLOPS，FP16 稠密）", "declared_pflops"), ("核验算力（PFLOPS，FP16 稠密）", "verified_pflops"), ("入库通知书编号", "notice_number"),
        ("有效期起（北京时间）", "valid_from"), ("有效期止（北京时间）", "valid_until"), ("状态", "status"),
    ];

    public static Command Create() => new("publish", "Write what the bureau posts, in Chinese: a batch's public notice (公示) or the admitted list (入库名单), as HTML, CSV or JSON. Reads the server's public lists; no key needed.")
    {
        List("notice", "The applications of a batch in public notice now.", batchRequired: true,
            (client, batch, ct) => client.GetPublicNoticeAsync(new GetPublicNoticeRequest { BatchId = batch }, cancellationToken: ct).ResponseAsync),
        List("admitted", "The service items whose admission is in force (or starts when a renewal takes over); of one batch, or of all without --batch.", batchRequired: false,
            (client, batch, ct) => client.GetAdmittedListAsync(new GetAdmittedListRequest { BatchId = batch }, cancellationToken: ct).ResponseAsync),
    };

    private static Command List(string kind, string description, bool batchRequired,
        Func<PublicationService.PublicationServiceClient, string, CancellationToken, Task<PublishedList>> read)
    {
        var batch = new Option<string>("--batch") { Description = "The admission batch, for example 2025.", Required = batchRequired };
        if (!batchRequired)
        {
            batch.DefaultValueFactory = _ => "";
        }

        var format = new Option<string>("--format") {
            Description = "html, csv or json: the list as the bureau posts it (Chinese headers, the English field names beneath in csv). "
                + "A posted list is a document with its own formats, so this command takes --format, not --output.",
            DefaultValueFactory = _ => "html",
        };
        format.AcceptOnlyFromAmong("html", "csv", "json");
        var output = new Option<FileInfo?>("--out") { Description = "The file to write; standard output when left out." };
        return ClientCommand.Create(kind, description, [batch, format, output], async (parse, call, ct) =>
        {
            string batchId = parse.GetValue(batch)!;
            if (batchId.Length > 0 && !Names.IsBatchId(batchId))
            {
                throw new UsageException($"--batch '{batchId}' is not a batch id (1 to 32 characters from A-Z a-z 0-9 . _ -)");
            }

            PublishedList list = await read(new PublicationService.PublicationServiceClient(call.Channel), batchId, ct);
            bool notice = kind == "notice";
            string title = notice
                ? $"{batchId} 批次算力服务商入库申请公示名单"
                : batchId.Length > 0 ? $"{batchId} 批次算力服务商入库名单" : "算力服务商入库名单";
            string text = parse.GetValue(format) switch
            {
                "csv" => Csv(list, notice),
                "json" => Json(list, notice, title),
                _ => Html(list, notice, title),
            };
            if (parse.GetValue(output) is { } file)
            {
                await File.WriteAllTextAsync(file.FullName, text, new UTF8Encoding(encoderShouldEmitUTF8Identifier: parse.GetValue(format) == "csv"), ct);
                Console.Error.WriteLine($"Wrote {list.Entries.Count} entr{(list.Entries.Count == 1 ? "y" : "ies")} to {file.FullName}.");
            }
            else
            {
                Console.Out.Write(text);
            }

            return 0;
        }, anonymous: true);
    }

    /// <summary>A row's cells, in the order of the columns of its list.</summary>
    private static string[] Cells(PublishedEntry entry, int index, bool notice)
    {
        string[] common =
        [
            index.ToString(CultureInfo.InvariantCulture), entry.Name, entry.CreditCode, entry.ServiceItem, entry.BatchId,
            FilingRules.Pflops(entry.DeclaredFp16Gflops), entry.VerifiedFp16Gflops > 0 ? FilingRules.Pflops(entry.VerifiedFp16Gflops) : "",
        ];
        return notice
            ? [.. common, Local(entry.NoticeEndsUnixMs)]
            : [.. common, entry.NoticeNumber, Local(entry.ValidFromUnixMs), Local(entry.ValidUntilUnixMs), entry.Suspended ? "暂停" : "在库"];
    }

    private static string Local(long unixMs) => unixMs == 0 ? "" : LocalTime.Minutes(unixMs);

    private static string Csv(PublishedList list, bool notice)
    {
        var columns = notice ? NoticeColumns : AdmittedColumns;
        var csv = new StringBuilder();
        csv.AppendJoin(',', columns.Select(c => Quote(c.Chinese))).Append("\r\n");
        csv.AppendJoin(',', columns.Select(c => c.English)).Append("\r\n");
        for (int i = 0; i < list.Entries.Count; i++)
        {
            csv.AppendJoin(',', Cells(list.Entries[i], i + 1, notice).Select(Quote)).Append("\r\n");
        }

        return csv.ToString();
    }

    /// <summary>RFC 4180: a field with a comma, quote or line break is quoted, quotes doubled.</summary>
    private static string Quote(string field) =>
        field.AsSpan().IndexOfAny(",\"\r\n") >= 0 ? "\"" + field.Replace("\"", "\"\"", StringComparison.Ordinal) + "\"" : field;

    private static string Json(PublishedList list, bool notice, string title)
    {
        var columns = notice ? NoticeColumns : AdmittedColumns;
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            json.WriteString("title", title);
            json.WriteString("batch_id", list.BatchId);
            json.WriteString("as_of", DateTimeOffset.FromUnixTimeMilliseconds(list.AsOfUnixMs).ToString("yyyy-MM-dd'T'HH:mm:ss.fffZ", CultureInfo.InvariantCulture));
            json.WriteStartArray("entries");
            for (int i = 0; i < list.Entries.Count; i++)
            {
                string[] cells = Cells(list.Entries[i], i + 1, notice);
                json.WriteStartObject();
                for (int c = 1; c < columns.Length; c++)
                {
                    json.WriteString(columns[c].English, cells[c]);
                }

                json.WriteEndObject();
            }

            json.WriteEndArray();
            json.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.ToArray()) + "\n";
    }

    private static string Html(PublishedList list, bool notice, string title)
    {
        var columns = notice ? NoticeColumns : AdmittedColumns;
        string E(string text) => WebUtility.HtmlEncode(text);
        var html = new StringBuilder();
        html.Append(CultureInfo.InvariantCulture, $"""
            <!DOCTYPE html>
            <html lang="zh-CN"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
            <title>{E(title)}</title>
            <style>
            body {"{"} font-family: system-ui, "Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", "Microsoft YaHei", sans-serif; margin: 24px auto; max-width: 1200px; color: #1d2330; {"}"}
            table {"{"} border-collapse: collapse; font-size: 13px; {"}"} th, td {"{"} border: 1px solid #d5d9e0; padding: 4px 8px; text-align: left; {"}"}
            td.num {"{"} text-align: right; font-variant-numeric: tabular-nums; {"}"} .note {"{"} color: #5b6475; font-size: 12px; {"}"}
            </style></head><body>
            <h1>{E(title)}</h1>
            <p class="note">截至 {E(LocalTime.Minutes(list.AsOfUnixMs))}（北京时间），共 {list.Entries.Count} 项。{(notice ? "公示期内，任何单位和个人均可对名单提出异议。" : "")}</p>
            <table id="published"><thead><tr>
            """);
        foreach (var (chinese, english) in columns)
        {
            html.Append(CultureInfo.InvariantCulture, $"<th data-field=\"{english}\">{E(chinese)}</th>");
        }

        html.Append("</tr></thead><tbody>\n");
        for (int i = 0; i < list.Entries.Count; i++)
        {
            string[] cells = Cells(list.Entries[i], i + 1, notice);
            html.Append(CultureInfo.InvariantCulture, $"<tr data-credit-code=\"{E(list.Entries[i].CreditCode)}\">");
            for (int c = 0; c < cells.Length; c++)
            {
                bool number = c is 0 or 5 or 6;
                html.Append(number ? "<td class=\"num\">" : "<td>").Append(E(cells[c])).Append("</td>");
            }

            html.Append("</tr>\n");
        }

        html.Append("</tbody></table>\n</body></html>\n");
        return html.ToString();
    }
}
