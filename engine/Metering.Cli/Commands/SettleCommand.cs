using System.CommandLine;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Google.Rpc;
using Grpc.Core;
using Metering.Engine.Settlement;
using Metering.Engine.Time;
using Metering.Engine.Vouchers;
using Metering.Protocol.V1;
using Metering.Server;
using Metering.Server.Vouchers;

namespace Metering.Cli.Commands;

/// <summary>
/// `metering settle [--day D]`: asks a running server to close one Asia/Shanghai day (or every
/// open one through yesterday, in order), printing each
/// step as the server reports it, and writes its statements (CSV, JSON and text) and settlement
/// hash; `settle show` and `settle list` read closed days. The caller is the key's: a settlement
/// key settles; operators and auditors read.
/// </summary>
internal static class SettleCommand
{
    /// <summary>Exit code of a run whose reconciliation failed (the server rolled it back).</summary>
    private const int ReconciliationFailedExitCode = ExitCodes.EvidenceFailed;

    /// <summary>Exit code of a catch-up that found every day through yesterday closed.</summary>
    private const int NothingToSettleExitCode = ExitCodes.NothingToExamine;

    public static Command Create()
    {
        var day = new Option<string?>("--day")
        {
            Description = "The Asia/Shanghai day to settle (yyyy-MM-dd); it must have ended. Without it, every day after the last closed one through yesterday, oldest first.",
        };
        var empty = new Option<bool>("--allow-empty")
        {
            Description = "Close days with no usage records too; without it such a day is refused (DAY_EMPTY), since a closed day is never settled again.",
        };
        var output = new Option<string?>("--out") { Description = "Folder to write the statements to: <out>/<day>/{programme,provider-<code>,holder-<code>}.{csv,json,txt,html} and settlement.sha256." };
        var settle = new Command("settle", """
            Close one day (--day), or every day still open through yesterday, oldest first, on a
            running server (--server, --api-key or METERING_API_KEY, --ca; a settlement key). A
            day with no usage records is closed only with --allow-empty. Exit codes: 0 settled
            (or already closed), 3 reconciliation failed, 6 nothing to settle, 4 refused (a day
            with no records without --allow-empty), 2 bad usage; the table is below. For each day: price its usage per provider, holder, contract and model with each
            contract's fee schedule; settle records that arrived late for closed days as
            adjustments; post claim holds whose usage is now settled and expire overdue ones;
            write balanced ledger entries and statements per provider, per holder and for the
            programme, with a SHA-256 settlement hash over them. Ends with a reconciliation
            (debits = credits; usage settled = usage metered; each voucher's balance = issued −
            posted − held) that rolls the whole run back on any mismatch and exits with 3.

            Everything is one transaction on the server: a run that fails, or whose caller goes
            away before it commits, leaves nothing behind. A closed day is never settled again:
            rerunning it prints the stored hash and writes nothing (exit 0). Progress goes to
            standard error; the summary to standard output. With --out, each statement fetched is
            checked against the hashes the run reported before any file is written.
            """)
        {
            day, empty, output,
        };
        var resultOutput = OutputOption.Create();
        settle.Options.Add(resultOutput);
        ClientCommand.SetAction(settle, async (parse, call, ct) =>
        {
            if (parse.GetValue(day) is { } given)
            {
                VoucherCommand.ParseDate(day.Name, given);
            }

            // For programs, one row per day settled, printed once at the end (also after a failure,
            // for the days closed before it); the words around them go to standard error then.
            OutputFormat format = parse.GetValue(resultOutput);
            Rows? results = format == OutputFormat.Table ? null : ResultRows();
            int exit = await SettleAsync(new SettlementService.SettlementServiceClient(call.Channel), call.Headers, parse.GetValue(day), parse.GetValue(empty), parse.GetValue(output), results, ct);
            results?.Write(format, Console.Out);
            return exit;
        });

        var showDay = new Option<string>("--day") { Description = "The closed day.", Required = true };
        var kind = new Option<string>("--party-kind") { Description = "programme, provider or holder.", DefaultValueFactory = _ => StatementFormats.Programme };
        kind.AcceptOnlyFromAmong(StatementFormats.Programme, StatementFormats.ProviderKind, StatementFormats.HolderKind);
        var party = new Option<string?>("--party") { Description = "The provider's or holder's credit code; needed with --party-kind provider or holder." };
        var format = new Option<string>("--format") {
            Description = "text (in Chinese), html (in Chinese, one self-contained page), csv (the canonical form) or json. "
                + "A statement is a document with its own formats, so this command takes --format, not --output: its csv and json are the hashed statement itself.",
            DefaultValueFactory = _ => "text",
        };
        format.AcceptOnlyFromAmong("text", "html", "csv", "json");
        Command show = ClientCommand.Create("show", "Print one statement of a closed day; with no --party-kind, the programme's. A provider's key reads only its own.",
            [showDay, kind, party, format], async (parse, call, ct) =>
            {
                string closedDay = Day(parse, showDay);
                string wantedKind = parse.GetValue(kind)!;
                string wantedParty = wantedKind == StatementFormats.Programme ? "" : parse.GetValue(party) ?? "";
                if (wantedKind != StatementFormats.Programme && wantedParty.Length == 0)
                {
                    throw new UsageException($"--party-kind {wantedKind} needs --party, the {wantedKind}'s credit code");
                }

                Statement statement = await new SettlementService.SettlementServiceClient(call.Channel).GetStatementAsync(new GetStatementRequest
                {
                    Day = closedDay,
                    PartyKind = PartyKindOf(wantedKind),
                    Party = wantedParty,
                    Format = FormatOf(parse.GetValue(format)!),
                }, call.Headers, cancellationToken: ct);
                Console.Write(statement.Content);
                return 0;
            });

        var listOutput = OutputOption.Create();
        Command list = ClientCommand.Create("list", "List closed days, newest first (at most 1,000), with their settlement hashes.", [listOutput], async (parse, call, ct) =>
        {
            ListSettlementsResponse listed = await new SettlementService.SettlementServiceClient(call.Channel)
                .ListSettlementsAsync(new ListSettlementsRequest { Limit = VoucherBook.ListLimitMax }, call.Headers, cancellationToken: ct);
            var rows = new Rows(("day", "day"), ("records", "dayRecords"), ("late records", "lateRecords"), ("fees CNY", "feeFen"), ("subsidies CNY", "subsidyFen"), ("settled by", "settledBy"),
                ("finished", "finishedAt"), ("settlement sha256", "settlementSha256"));
            foreach (Protocol.V1.Settlement s in listed.Settlements)
            {
                DateTimeOffset finished = DateTimeOffset.FromUnixTimeMilliseconds(s.FinishedUnixMs);
                rows.Add(s.Day, Cell.Number(s.DayRecords, N(s.DayRecords)), Cell.Number(s.AdjustmentRecords, N(s.AdjustmentRecords)), Cell.Fen(s.FeeFen, Pricing.Yuan(s.FeeFen)),
                    Cell.Fen(s.SubsidyFen, Pricing.Yuan(s.SubsidyFen)), s.SettledBy,
                    Cell.Instant(finished, finished.ToOffset(ShanghaiTime.Offset).ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture)), s.SettlementSha256);
            }

            rows.Write(parse.GetValue(listOutput), Console.Out);
            return 0;
        });

        settle.Subcommands.Add(show);
        settle.Subcommands.Add(list);
        settle.Subcommands.Add(HolderStatementCommand.Create());
        return settle;
    }

    /// <summary>Settles <paramref name="given"/>, or every open day through yesterday, oldest first.</summary>
    private static async Task<int> SettleAsync(SettlementService.SettlementServiceClient client, Metadata headers, string? given, bool allowEmpty, string? folder, Rows? results,
        CancellationToken ct)
    {
        TextWriter words = results is null ? Console.Out : Console.Error;
        if (given is not null)
        {
            return await SettleOneAsync(client, headers, given, allowEmpty, folder, results, ct);
        }

        // Catch up: every day after the last closed one through yesterday, oldest first.
        int settledDays = 0;
        while (true)
        {
            ListPendingDaysResponse pending = await client.ListPendingDaysAsync(new ListPendingDaysRequest(), headers, cancellationToken: ct);
            if (pending.Days.Count == 0)
            {
                if (settledDays == 0)
                {
                    words.WriteLine(Labels.Of("Nothing to settle: every day through yesterday (Asia/Shanghai) is closed."));
                    return NothingToSettleExitCode;
                }

                words.WriteLine(Labels.Format("Settled {0} day(s); every day through yesterday (Asia/Shanghai) is closed.", settledDays));
                return 0;
            }

            foreach (Protocol.V1.PendingDay next in pending.Days)
            {
                if (next.Records == 0 && !allowEmpty)
                {
                    Console.Error.WriteLine($"error: {next.Day} has no usage records. A closed day is never settled again (records that arrive later become adjustments of a later day); "
                        + $"if the platforms were idle, settle it with `metering settle --day {next.Day} --allow-empty` (or the whole backlog with --allow-empty). Settled {settledDays} day(s) before it.");
                    // The server would refuse the day with DAY_EMPTY; said here first, with the way out.
                    return ExitCodes.Refused;
                }

                Console.Error.WriteLine($"== {next.Day}: {next.Records:N0} record(s)");
                int exit = await SettleOneAsync(client, headers, next.Day, allowEmpty, folder, results, ct);
                if (exit != 0)
                {
                    return exit;
                }

                settledDays++;
            }
        }
    }

    /// <summary>The rows `settle --output json|csv` prints: one per day the run closed or found closed.</summary>
    private static Rows ResultRows() => new(("day", "day"), ("already closed", "alreadyClosed"), ("day records", "dayRecords"), ("usage nPFh", "usageNpfh"), ("late records", "lateRecords"),
        ("fees CNY", "feeFen"), ("subsidies posted CNY", "subsidyFen"), ("statements", "statements"), ("settlement sha256", "settlementSha256"), ("statements written to", "writtenTo"));

    /// <summary>One statement in the four forms written to disk; the CSV as the bytes that were hashed.</summary>
    private sealed record StatementFiles(StatementSummary Summary, string Name, byte[] Csv, string Json, string Text, string Html);

    private static void WriteSummary(Protocol.V1.Settlement settled)
    {
        Console.WriteLine(settled.AlreadyClosed
            ? Labels.Format("{0} was already closed; nothing was written. Its settlement, re-verified:", settled.Day)
            : Labels.Format("{0} closed.", settled.Day));
        var table = new TextTable("day records", "usage PFLOPS·h", "late records", "fees CNY", "subsidies posted CNY", "statements");
        table.Add(N(settled.DayRecords), N(settled.DayUsageNpfh / Pricing.NanoPflopsHoursPerPflopsHour), N(settled.AdjustmentRecords), Pricing.Yuan(settled.FeeFen),
            Pricing.Yuan(settled.SubsidyFen), N(settled.Statements.Count));
        table.Write(Console.Out);
        var roots = settled.Statements.Where(s => s.PartyKind == PartyKind.PartyProvider && s.MerkleRoot.Length > 0).ToList();
        if (roots.Count > 0)
        {
            Console.WriteLine(Labels.Format("Merkle roots of {0} as settled, one per provider statement (recompute with `metering audit merkle-root --settled`):", settled.Day));
            var rootTable = new TextTable("provider", "leaves", "root");
            foreach (StatementSummary root in roots)
            {
                rootTable.Add(root.Party, N(root.MerkleLeafCount), root.MerkleRoot);
            }

            rootTable.Write(Console.Out);
        }

        Console.WriteLine(Labels.Format("settlement sha256 {0}", settled.SettlementSha256));
    }

    private static async Task<List<StatementFiles>> FetchAsync(SettlementService.SettlementServiceClient client, Metadata headers, Protocol.V1.Settlement settled,
        CancellationToken cancellationToken)
    {
        var files = new List<StatementFiles>(settled.Statements.Count);
        foreach (StatementSummary summary in settled.Statements)
        {
            async Task<string> RenderAsync(StatementFormat format) => (await client.GetStatementAsync(new GetStatementRequest
            {
                Day = settled.Day,
                PartyKind = summary.PartyKind,
                Party = summary.Party,
                Format = format,
            }, headers, cancellationToken: cancellationToken)).Content;

            string name = summary.PartyKind == PartyKind.PartyProgramme ? "programme" : $"{KindName(summary.PartyKind)}-{summary.Party}";
            byte[] csv = Encoding.UTF8.GetBytes(await RenderAsync(StatementFormat.StatementCsv));
            files.Add(new StatementFiles(summary, name, csv, await RenderAsync(StatementFormat.StatementJson), await RenderAsync(StatementFormat.StatementText),
                await RenderAsync(StatementFormat.StatementHtml)));
        }

        return files;
    }

    /// <summary>
    /// What in the fetched statements disagrees with the hashes the run reported, or null: each
    /// CSV must hash to its summary's SHA-256 and all of them, in order, to the settlement hash.
    /// </summary>
    private static string? Mismatch(Protocol.V1.Settlement settled, List<StatementFiles> files)
    {
        using var all = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (StatementFiles file in files)
        {
            string hex = Convert.ToHexStringLower(SHA256.HashData(file.Csv));
            if (hex != file.Summary.Sha256)
            {
                return $"the server's {file.Name}.csv hashes to {hex}, not to the {file.Summary.Sha256} the settlement reported";
            }

            all.AppendData(file.Csv);
        }

        string settlementHex = Convert.ToHexStringLower(all.GetHashAndReset());
        return settlementHex == settled.SettlementSha256 ? null : $"the statements hash to {settlementHex}, not to the settlement hash {settled.SettlementSha256}";
    }

    private static async Task<string> WriteFilesAsync(Protocol.V1.Settlement settled, List<StatementFiles> files, string folder, CancellationToken cancellationToken)
    {
        string directory = Path.Combine(folder, settled.Day);
        Directory.CreateDirectory(directory);
        // One line per statement as sha256sum prints it, then the settlement hash: `sha256sum -c` checks the CSVs.
        var sums = new StringBuilder();
        foreach (StatementFiles file in files)
        {
            await File.WriteAllBytesAsync(Path.Combine(directory, file.Name + ".csv"), file.Csv, cancellationToken);
            await File.WriteAllTextAsync(Path.Combine(directory, file.Name + ".json"), file.Json, cancellationToken);
            await File.WriteAllTextAsync(Path.Combine(directory, file.Name + ".txt"), file.Text, cancellationToken);
            await File.WriteAllTextAsync(Path.Combine(directory, file.Name + ".html"), file.Html, cancellationToken);
            sums.Append(CultureInfo.InvariantCulture, $"{file.Summary.Sha256}  {file.Name}.csv\n");
        }

        await File.WriteAllTextAsync(Path.Combine(directory, "statements.sha256"), sums.ToString(), cancellationToken);
        await File.WriteAllTextAsync(Path.Combine(directory, "settlement.sha256"), settled.SettlementSha256 + "\n", cancellationToken);
        return directory;
    }

    private static PartyKind PartyKindOf(string kind) => kind switch
    {
        StatementFormats.ProviderKind => PartyKind.PartyProvider,
        StatementFormats.HolderKind => PartyKind.PartyHolder,
        _ => PartyKind.PartyProgramme,
    };

    private static string KindName(PartyKind kind) => kind switch
    {
        PartyKind.PartyProvider => StatementFormats.ProviderKind,
        PartyKind.PartyHolder => StatementFormats.HolderKind,
        _ => StatementFormats.Programme,
    };

    private static StatementFormat FormatOf(string format) => format switch
    {
        "csv" => StatementFormat.StatementCsv,
        "json" => StatementFormat.StatementJson,
        "html" => StatementFormat.StatementHtml,
        _ => StatementFormat.StatementText,
    };

    /// <summary>The option's day, checked here so that a typo exits with 2 before any call.</summary>
    /// <summary>Settles one day with progress on standard error, prints its summary and writes its statements to <paramref name="folder"/>.</summary>
    private static async Task<int> SettleOneAsync(SettlementService.SettlementServiceClient client, Metadata headers, string settledDay, bool allowEmpty, string? folder, Rows? results,
        CancellationToken ct)
    {
        Protocol.V1.Settlement? settled = null;
        try
        {
            using AsyncServerStreamingCall<SettleDayProgress> run = client.SettleDayWithProgress(new SettleDayRequest { Day = settledDay, AllowEmpty = allowEmpty }, headers, cancellationToken: ct);
            await foreach (SettleDayProgress update in run.ResponseStream.ReadAllAsync(ct))
            {
                if (update.UpdateCase == SettleDayProgress.UpdateOneofCase.Step)
                {
                    Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"[{update.Step.ElapsedMs / 1000.0,7:0.0} s] {update.Step.Stage}: {update.Step.Message}"));
                }
                else if (update.UpdateCase == SettleDayProgress.UpdateOneofCase.Settlement)
                {
                    settled = update.Settlement;
                }
            }
        }
        catch (RpcException e) when (e.GetRpcStatus()?.GetDetail<ErrorInfo>()?.Reason == ProtocolNames.Of(SettlementRefusal.ReconciliationFailed))
        {
            Console.Error.WriteLine($"FAILED: {ServerConnection.Describe(e)}");
            return ReconciliationFailedExitCode;
        }

        if (settled is null)
        {
            Console.Error.WriteLine($"error: the server ended the settlement of {settledDay} without reporting its result; `metering settle show --day {settledDay}` tells whether it closed");
            return ExitCodes.Unexpected;
        }

        if (results is null)
        {
            WriteSummary(settled);
        }

        string? written = null;
        int exit = 0;
        if (folder is not null)
        {
            List<StatementFiles> files = await FetchAsync(client, headers, settled, ct);
            if (Mismatch(settled, files) is { } problem)
            {
                Console.Error.WriteLine($"FAILED: {problem}; nothing was written to {folder}");
                exit = ExitCodes.EvidenceFailed;
            }
            else
            {
                written = await WriteFilesAsync(settled, files, folder, ct);
                (results is null ? Console.Out : Console.Error).WriteLine(Labels.Format("Statements written to {0}", written));
            }
        }

        results?.Add(settled.Day, Cell.Flag(settled.AlreadyClosed, settled.AlreadyClosed ? "yes" : "no"), Cell.Number(settled.DayRecords, N(settled.DayRecords)),
            Cell.Number(settled.DayUsageNpfh, N(settled.DayUsageNpfh)), Cell.Number(settled.AdjustmentRecords, N(settled.AdjustmentRecords)), Cell.Fen(settled.FeeFen, Pricing.Yuan(settled.FeeFen)),
            Cell.Fen(settled.SubsidyFen, Pricing.Yuan(settled.SubsidyFen)), Cell.Number(settled.Statements.Count, N(settled.Statements.Count)), settled.SettlementSha256,
            written is null ? Cell.Data(null) : written);
        return exit;
    }

    private static string Day(ParseResult parse, Option<string> option)
    {
        string text = parse.GetValue(option)!;
        VoucherCommand.ParseDate(option.Name, text);
        return text;
    }

    private static string N(long value) => value.ToString("N0", CultureInfo.InvariantCulture);
}
