using System.CommandLine;
using System.Globalization;
using System.Text;
using Metering.Engine.Access;
using Metering.Engine.Settlement;
using Metering.Engine.Vouchers;
using Microsoft.Extensions.Logging.Abstractions;

namespace Metering.Cli.Commands;

/// <summary>
/// `metering settle --day D`: closes one Asia/Shanghai day, printing each step, and writes its
/// statements (CSV, JSON and text) and settlement hash; `settle show` and `settle list` read
/// closed days.
/// </summary>
internal static class SettleCommand
{
    public static Command Create()
    {
        var day = new Option<string>("--day") { Description = "The Asia/Shanghai day to settle (yyyy-MM-dd); it must have ended.", Required = true };
        var output = new Option<string?>("--out") { Description = "Folder to write the statements to: <out>/<day>/{programme,provider-<code>,holder-<code>}.{csv,json,txt} and settlement.sha256." };
        var actingAs = new Option<string>("--as") { Description = "Name recorded as who ran the settlement.", DefaultValueFactory = _ => $"{Environment.UserName}@cli" };
        var drill = new Option<double>("--drill-pause-before-commit")
        {
            Description = "Fault drill: seconds to wait, all work done and reconciled, before committing, so that the run can be killed and its rerun watched.",
            Hidden = true,
        };
        var (connection, dataDirectory) = (CommonOptions.Connection(), CommonOptions.DataDirectory());
        var settle = new Command("settle", """
            Close one day: price its usage per provider, holder, contract and model with each
            contract's fee schedule; settle records that arrived late for closed days as
            adjustments; post claim holds whose usage is now settled and expire overdue ones;
            write balanced ledger entries and statements per provider, per holder and for the
            programme, with a SHA-256 settlement hash over them. Ends with a reconciliation
            (debits = credits; usage settled = usage metered; each voucher's balance = issued −
            posted − held) that rolls the whole run back on any mismatch and exits with 3.

            Everything is one transaction: a run that fails or is killed leaves nothing behind.
            A closed day is never settled again: rerunning it prints the stored hash and writes
            nothing (exit 0). Progress goes to standard error; the summary to standard output.
            """)
        {
            day, output, actingAs, drill, connection, dataDirectory,
        };
        settle.SetAction((parse, ct) => VoucherCommand.Run(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            DateOnly settled = ParseDay(parse.GetValue(day)!);
            var options = new SettlementOptions { PauseBeforeCommit = TimeSpan.FromSeconds(Math.Clamp(parse.GetValue(drill), 0, 3_600)) };
            var run = new DailySettlement(dataSource, TimeProvider.System, NullLogger.Instance, options);
            SettlementOutcome outcome = await run.SettleAsync(settled, new Actor(Role.Settlement, parse.GetValue(actingAs)!),
                step => Console.Error.WriteLine($"[{step.Elapsed.TotalSeconds,7:0.0} s] {step.Stage}: {step.Message}"), ct);
            WriteSummary(outcome);
            if (parse.GetValue(output) is { } folder)
            {
                string written = await WriteFilesAsync(outcome, folder, ct);
                Console.WriteLine($"Statements written to {written}");
            }
        }, ct));

        var showDay = new Option<string>("--day") { Description = "The closed day.", Required = true };
        var kind = new Option<string>("--party-kind") { Description = "programme, provider or holder.", DefaultValueFactory = _ => StatementFormats.Programme };
        kind.AcceptOnlyFromAmong(StatementFormats.Programme, StatementFormats.ProviderKind, StatementFormats.HolderKind);
        var party = new Option<string?>("--party") { Description = "The provider's or holder's credit code." };
        var format = new Option<string>("--format") { Description = "text, csv (the canonical form) or json.", DefaultValueFactory = _ => "text" };
        format.AcceptOnlyFromAmong("text", "csv", "json");
        var show = new Command("show", "Print one statement of a closed day; with no --party-kind, the programme's.") { showDay, kind, party, format, connection, dataDirectory };
        show.SetAction((parse, ct) => VoucherCommand.Run(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            DateOnly closedDay = ParseDay(parse.GetValue(showDay)!);
            SettlementOutcome outcome = await new DailySettlement(dataSource, TimeProvider.System, NullLogger.Instance).GetAsync(closedDay, ct)
                ?? throw new SettlementRefusedException(Protocol.V1.SettlementRefusal.DayNotSettled, $"{StatementFormats.Date(closedDay)} has not been settled");
            string wantedKind = parse.GetValue(kind)!;
            string wantedParty = wantedKind == StatementFormats.Programme ? StatementFormats.Programme : parse.GetValue(party) ?? "";
            StoredStatement stored = outcome.Statements.FirstOrDefault(s => s.PartyKind == wantedKind && s.Party == wantedParty)
                ?? throw new SettlementRefusedException(Protocol.V1.SettlementRefusal.StatementUnknown, $"the settlement of {StatementFormats.Date(closedDay)} has no statement for {wantedKind} {wantedParty}");
            Console.Write(Render(stored, parse.GetValue(format)!));
        }, ct));

        var list = new Command("list", "List closed days, newest first, with their settlement hashes.") { connection, dataDirectory };
        list.SetAction((parse, ct) => VoucherCommand.Run(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            var table = new TextTable("day", "records", "late records", "fees CNY", "subsidies CNY", "settled by", "finished", "settlement sha256");
            foreach (SettlementOutcome o in await new DailySettlement(dataSource, TimeProvider.System, NullLogger.Instance).ListAsync(1_000, ct))
            {
                table.Add(StatementFormats.Date(o.Day), N(o.DayRecords), N(o.AdjustmentRecords), Pricing.Yuan(o.FeeFen), Pricing.Yuan(o.SubsidyFen), o.SettledBy,
                    o.FinishedAt.ToOffset(TimeSpan.FromHours(8)).ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture), o.SettlementHex);
            }

            table.Write(Console.Out);
        }, ct));

        settle.Subcommands.Add(show);
        settle.Subcommands.Add(list);
        return settle;
    }

    private static void WriteSummary(SettlementOutcome outcome)
    {
        Console.WriteLine(outcome.AlreadyClosed
            ? $"{StatementFormats.Date(outcome.Day)} was already closed; nothing was written. Its settlement, re-verified:"
            : $"{StatementFormats.Date(outcome.Day)} closed.");
        var table = new TextTable("day records", "usage PFLOPS·h", "late records", "fees CNY", "subsidies posted CNY", "statements");
        table.Add(N(outcome.DayRecords), N(outcome.DayUsageNpfh / Pricing.NanoPflopsHoursPerPflopsHour), N(outcome.AdjustmentRecords), Pricing.Yuan(outcome.FeeFen),
            Pricing.Yuan(outcome.SubsidyFen), N(outcome.Statements.Count));
        table.Write(Console.Out);
        var roots = outcome.Statements.Where(s => s.PartyKind == StatementFormats.ProviderKind)
            .Select(s => s.Parse().Rows.FirstOrDefault(r => r.Record == StatementFormats.MerkleRootRecord))
            .OfType<StatementRow>().ToList();
        if (roots.Count > 0)
        {
            Console.WriteLine($"Merkle roots of {StatementFormats.Date(outcome.Day)} as settled, one per provider statement (recompute with `metering audit merkle-root --settled`):");
            var rootTable = new TextTable("provider", "leaves", "root");
            foreach (StatementRow root in roots)
            {
                rootTable.Add(root.Provider, N(root.Records ?? 0), root.Note);
            }

            rootTable.Write(Console.Out);
        }

        Console.WriteLine($"settlement sha256 {outcome.SettlementHex}");
    }

    private static async Task<string> WriteFilesAsync(SettlementOutcome outcome, string folder, CancellationToken cancellationToken)
    {
        string directory = Path.Combine(folder, StatementFormats.Date(outcome.Day));
        Directory.CreateDirectory(directory);
        foreach (StoredStatement statement in outcome.Statements)
        {
            string name = statement.PartyKind == StatementFormats.Programme ? "programme" : $"{statement.PartyKind}-{statement.Party}";
            await File.WriteAllBytesAsync(Path.Combine(directory, name + ".csv"), statement.CanonicalCsv, cancellationToken);
            await File.WriteAllTextAsync(Path.Combine(directory, name + ".json"), Render(statement, "json"), cancellationToken);
            await File.WriteAllTextAsync(Path.Combine(directory, name + ".txt"), Render(statement, "text"), cancellationToken);
        }

        // One line per statement as sha256sum prints it, then the settlement hash: `sha256sum -c` checks the CSVs.
        var sums = new StringBuilder();
        foreach (StoredStatement statement in outcome.Statements)
        {
            string name = statement.PartyKind == StatementFormats.Programme ? "programme" : $"{statement.PartyKind}-{statement.Party}";
            sums.Append(CultureInfo.InvariantCulture, $"{Convert.ToHexStringLower(statement.Sha256)}  {name}.csv\n");
        }

        await File.WriteAllTextAsync(Path.Combine(directory, "statements.sha256"), sums.ToString(), cancellationToken);
        await File.WriteAllTextAsync(Path.Combine(directory, "settlement.sha256"), outcome.SettlementHex + "\n", cancellationToken);
        return directory;
    }

    private static string Render(StoredStatement statement, string format) => format switch
    {
        "csv" => Encoding.UTF8.GetString(statement.CanonicalCsv),
        "json" => StatementFormats.Json(statement.Parse(), statement.Sha256),
        _ => StatementFormats.Text(statement.Parse(), statement.Sha256),
    };

    private static DateOnly ParseDay(string text) =>
        DateOnly.TryParseExact(text, "yyyy-MM-dd", CultureInfo.InvariantCulture, DateTimeStyles.None, out DateOnly day)
            ? day
            : throw new SettlementRefusedException(Protocol.V1.SettlementRefusal.SettlementFieldInvalid, $"--day must be a date as yyyy-MM-dd, not '{text}'");

    private static string N(long value) => value.ToString("N0", CultureInfo.InvariantCulture);
}
