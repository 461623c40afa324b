using System.Data;
using System.Diagnostics;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Audit;
using Metering.Engine.Registry;
using Metering.Engine.Time;
using Metering.Engine.Transparency;
using Metering.Engine.Vouchers;
using Microsoft.Extensions.Logging;
using Npgsql;
using NpgsqlTypes;

namespace Metering.Engine.Settlement;

// Stage 6 of a run: the party statements, with each provider's Merkle root of the day.
public sealed partial class DailySettlement
{
    private static List<PartyStatement> BuildStatements(DateOnly day, List<PricedLine> lines, List<HoldAction> holds, Dictionary<string, DailyRoot> roots)
    {
        var providers = new SortedDictionary<string, List<StatementRow>>(StringComparer.Ordinal);
        var holders = new SortedDictionary<string, List<StatementRow>>(StringComparer.Ordinal);
        var programme = new List<StatementRow>();
        static List<StatementRow> Of(SortedDictionary<string, List<StatementRow>> parties, string code) =>
            parties.TryGetValue(code, out var rows) ? rows : parties[code] = [];

        foreach (PricedLine line in lines)
        {
            var row = new StatementRow
            {
                Record = line.Group.Kind,
                UsageDay = line.Group.UsageDay,
                Provider = line.Group.Provider,
                Holder = line.Group.Holder,
                Contract = line.ContractId,
                DeviceModel = line.Group.Model,
                FeeUnit = line.FeeUnit,
                Records = line.Group.Records,
                UsageNpfh = line.Group.UsageNpfh,
                CardMs = line.Group.CardMs,
                PriceFen = line.PriceFen,
                FeeFen = line.FeeFen,
                Note = line.Unpriced ?? "",
            };
            Of(providers, line.Group.Provider).Add(row);
            Of(holders, line.Group.Holder).Add(row);
        }

        foreach (HoldAction hold in holds)
        {
            bool deduction = hold.PayeeMode == "provider_deduction";
            var row = new StatementRow
            {
                Record = hold.Post ? "subsidy" : "hold_expired",
                Provider = hold.Provider,
                Holder = hold.Holder,
                Contract = hold.ContractId,
                Claim = hold.ClaimId,
                Voucher = hold.VoucherId,
                Payee = hold.Post ? (deduction ? hold.Provider : hold.Holder) : "",
                SubsidyFen = hold.AmountFen,
                Note = hold.PayeeMode,
            };
            programme.Add(row);
            Of(holders, hold.Holder).Add(row);
            if (hold.Post)
            {
                Of(providers, hold.Provider).Add(row);
            }
        }

        var statements = new List<PartyStatement> { Close(day, StatementFormats.Programme, StatementFormats.Programme, programme, lines.Select(l => l.Group), lines, holds) };
        foreach (var (code, rows) in providers)
        {
            // Every provider statement publishes the provider's root of the day; one with no
            // record that day (only adjustments or subsidies) publishes the empty root.
            DailyRoot root = roots.TryGetValue(code, out DailyRoot? found) ? found : DailyRoot.Empty(code, day, MerkleCutOff.AsSettled);
            rows.Add(StatementFormats.MerkleRootRow(day, code, root.LeafCount, root.Root));
            statements.Add(Close(day, StatementFormats.ProviderKind, code, rows, null, null, null));
        }

        foreach (var (code, rows) in holders)
        {
            statements.Add(Close(day, StatementFormats.HolderKind, code, rows, null, null, null));
        }

        return statements;
    }

    /// <summary>
    /// Orders a party's rows and adds its total: usage and fees of its lines; subsidies posted;
    /// what holders pay (fees less subsidies providers deducted) and what the programme pays
    /// (deducted subsidies to a provider, reimbursed ones to a holder, all of them in the
    /// programme's statement).
    /// </summary>
    private static PartyStatement Close(DateOnly day, string kind, string party, List<StatementRow> rows, IEnumerable<Group>? allGroups, List<PricedLine>? allLines, List<HoldAction>? allHolds)
    {
        var usage = rows.Where(r => r.Record is "usage" or "adjustment").ToList();
        var posted = rows.Where(r => r.Record == "subsidy").ToList();
        long records = allGroups?.Sum(g => g.Records) ?? usage.Sum(r => r.Records ?? 0);
        long npfh = allGroups?.Sum(g => g.UsageNpfh) ?? usage.Sum(r => r.UsageNpfh ?? 0);
        long cardMs = allLines?.Sum(l => l.Group.CardMs) ?? usage.Sum(r => r.CardMs ?? 0);
        long fee = allLines?.Sum(l => l.FeeFen) ?? usage.Sum(r => r.FeeFen ?? 0);
        long subsidy = posted.Sum(r => r.SubsidyFen ?? 0);
        long deducted = posted.Where(r => r.Note == "provider_deduction").Sum(r => r.SubsidyFen ?? 0);
        long programmePays = kind switch
        {
            StatementFormats.ProviderKind => deducted,
            StatementFormats.HolderKind => subsidy - deducted,
            _ => subsidy,
        };
        Debug.Assert(allHolds is null || allHolds.Where(h => h.Post).Sum(h => h.AmountFen) == subsidy);
        var total = new StatementRow
        {
            Record = "total",
            Records = records,
            UsageNpfh = npfh,
            CardMs = cardMs,
            FeeFen = fee,
            SubsidyFen = subsidy,
            HolderPaysFen = fee - deducted,
            ProgrammePaysFen = programmePays,
        };
        return new PartyStatement(day, kind, party, StatementFormats.Order(rows.Append(total)));
    }
}
