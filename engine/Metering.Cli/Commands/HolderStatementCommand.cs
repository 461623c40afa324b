using System.CommandLine;
using System.Security.Cryptography;
using System.Text;
using Google.Rpc;
using Grpc.Core;
using Metering.Engine.Identity;
using Metering.Engine.Settlement;
using Metering.Engine.Time;
using Metering.Engine.Vouchers;
using Metering.Protocol.V1;
using Metering.Server;
using Metering.Server.Vouchers;
using Holder = Metering.Protocol.V1.Holder;

namespace Metering.Cli.Commands;

/// <summary>
/// `metering settle statement --holder CODE --day D [--to D]`: the holder-facing statement of a
/// day or period, built from the holder's daily statements as the server stores them. Holders are
/// not API callers, so an operator, auditor or settlement key exports it for them; a provider's
/// key is refused (a holder's statement is another party's).
/// </summary>
internal static class HolderStatementCommand
{
    public static Command Create()
    {
        var holder = new Option<string>("--holder") { Description = "The holder's 18-character credit code.", Required = true };
        var day = new Option<string>("--day") { Description = "The first closed day (yyyy-MM-dd, Asia/Shanghai).", Required = true };
        var to = new Option<string?>("--to") { Description = $"The last closed day, inclusive; --day alone when left out. At most {HolderStatements.PeriodDaysMax} days in all." };
        var format = new Option<string>("--format") {
            Description = "text or json. A statement is a document with its own formats, so this command takes --format, not --output.",
            DefaultValueFactory = _ => "text",
        };
        format.AcceptOnlyFromAmong("text", "json");
        var output = new Option<string?>("--out") { Description = "File to write the statement to; standard output when left out." };
        return ClientCommand.Create("statement", """
            Export a holder's statement of a closed day or period, in Chinese with names beside credit codes (--format json for programs): per provider, the fees of its
            usage under contracts, what its vouchers paid and what the holder pays; then every
            voucher payment; then the daily statements it was read from, with their SHA-256.
            Every day of the period must be settled. Exit codes: 0 written, 6 the holder has
            nothing settled in the period, 3 a statement does not match its hash, 4 refused,
            2 bad usage; the table is below.
            """, [holder, day, to, format, output], async (parse, call, ct) =>
            {
                string code = parse.GetValue(holder)!;
                if (!CreditCode.IsValid(code))
                {
                    throw new UsageException($"--holder is not a unified social credit code: 18 characters ending in the GB 32100-2015 check character ({code.Length} characters given)");
                }

                DateOnly from = VoucherCommand.ParseDate(day.Name, parse.GetValue(day)!);
                DateOnly until = parse.GetValue(to) is { } last ? VoucherCommand.ParseDate(to.Name, last) : from;
                if (until < from || until.DayNumber - from.DayNumber + 1 > HolderStatements.PeriodDaysMax)
                {
                    throw new UsageException($"--to must be on or after --day, and the period at most {HolderStatements.PeriodDaysMax} days");
                }

                // An unknown holder is NOT_FOUND here, rather than a statement with nothing in it.
                Holder registered = await new VoucherService.VoucherServiceClient(call.Channel).GetHolderAsync(new GetHolderRequest { CreditCode = code }, call.Headers, cancellationToken: ct);
                var settlement = new SettlementService.SettlementServiceClient(call.Channel);
                var daily = new List<(PartyStatement, string)>();
                try
                {
                    for (DateOnly d = from; d <= until; d = d.AddDays(1))
                    {
                        if (await ReadAsync(settlement, call.Headers, code, d, ct) is { } statement)
                        {
                            daily.Add(statement);
                        }
                    }
                }
                catch (InvalidDataException mismatch)
                {
                    Console.Error.WriteLine($"error: {mismatch.Message}; nothing was written.");
                    return ExitCodes.EvidenceFailed;
                }

                if (daily.Count == 0)
                {
                    Console.Error.WriteLine($"Holder {code} has no usage or voucher payment settled from {ShanghaiTime.IsoDate(from)} to {ShanghaiTime.IsoDate(until)}; nothing was written.");
                    return AuditCommand.NothingToExamineExit;
                }

                HolderStatement exported = HolderStatements.Build(code, from, until, daily);
                string content = parse.GetValue(format) == "json"
                    ? HolderStatements.Json(exported)
                    : HolderStatements.Text(exported, await NamesAsync(call, registered, exported, ct));
                if (parse.GetValue(output) is not { } path)
                {
                    Console.Write(content);
                    return 0;
                }

                // Written whole or not at all: a partial file would read as a smaller bill.
                string partial = path + ".partial";
                await File.WriteAllTextAsync(partial, content, new UTF8Encoding(encoderShouldEmitUTF8Identifier: false), ct);
                File.Move(partial, path, overwrite: true);
                Console.Error.WriteLine($"Wrote {path}: {exported.Sources.Count} settled day(s), {exported.Payments.Count} voucher payment(s).");
                return 0;
            });
    }

    /// <summary>
    /// The names the text shows beside credit codes: the holder's, and each provider's as the
    /// registry holds it now. A name the key may not read is left out; the code stands alone.
    /// </summary>
    private static async Task<IReadOnlyDictionary<string, string>> NamesAsync(ServerCall call, Holder holder, HolderStatement statement, CancellationToken ct)
    {
        var names = new Dictionary<string, string>(StringComparer.Ordinal) { [holder.CreditCode] = holder.Name };
        var registry = new RegistryService.RegistryServiceClient(call.Channel);
        foreach (string provider in statement.Providers.Select(p => p.Provider).Concat(statement.Payments.Select(p => p.Payee)).Distinct().Where(c => !names.ContainsKey(c)))
        {
            try
            {
                names[provider] = (await registry.GetOrganisationAsync(new GetOrganisationRequest { CreditCode = provider }, call.Headers, cancellationToken: ct)).Name;
            }
            catch (RpcException refused) when (refused.StatusCode is StatusCode.NotFound or StatusCode.PermissionDenied)
            {
            }
        }

        return names;
    }

    /// <summary>
    /// The holder's statement of one day with its hash checked, or null when the day's settlement
    /// has none for the holder. A day not settled is the server's refusal and ends the export.
    /// </summary>
    private static async Task<(PartyStatement, string)?> ReadAsync(SettlementService.SettlementServiceClient client, Metadata headers, string holder, DateOnly day, CancellationToken ct)
    {
        Statement statement;
        try
        {
            statement = await client.GetStatementAsync(new GetStatementRequest
            {
                Day = ShanghaiTime.IsoDate(day),
                PartyKind = PartyKind.PartyHolder,
                Party = holder,
                Format = StatementFormat.StatementCsv,
            }, headers, cancellationToken: ct);
        }
        catch (RpcException e) when (e.GetRpcStatus()?.GetDetail<ErrorInfo>()?.Reason == ProtocolNames.Of(SettlementRefusal.StatementUnknown))
        {
            return null;
        }

        byte[] csv = Encoding.UTF8.GetBytes(statement.Content);
        string sha256 = Convert.ToHexStringLower(SHA256.HashData(csv));
        if (sha256 != statement.Sha256)
        {
            throw new InvalidDataException($"the holder statement of {statement.Day} hashes to {sha256}, not to the {statement.Sha256} the server reported");
        }

        return (StatementFormats.ParseCanonicalCsv(csv), sha256);
    }
}
