using System.CommandLine;
using System.Globalization;
using Grpc.Core;
using Metering.Engine.Registry;
using Metering.Engine.Time;
using Metering.Engine.Vouchers;
using Metering.Protocol.V1;
using Claim = Metering.Protocol.V1.Claim;
using ClaimLine = Metering.Protocol.V1.ClaimLine;
using Contract = Metering.Protocol.V1.Contract;
using EngineHolderType = Metering.Engine.Vouchers.HolderType;
using FeeUnit = Metering.Protocol.V1.FeeUnit;
using Holder = Metering.Protocol.V1.Holder;
using HolderStatus = Metering.Protocol.V1.HolderStatus;
using HolderType = Metering.Protocol.V1.HolderType;
using HoldState = Metering.Protocol.V1.HoldState;
using PayeeMode = Metering.Protocol.V1.PayeeMode;
using ProgrammeParameters = Metering.Protocol.V1.ProgrammeParameters;
using SubsidyLimit = Metering.Protocol.V1.SubsidyLimit;
using Voucher = Metering.Protocol.V1.Voucher;

namespace Metering.Cli.Commands;

/// <summary>
/// `metering voucher …`: the bureau operator's side of the voucher programme: holders, programme
/// parameters, contracts, other support, vouchers and redemption claims, through a running
/// server's VoucherService as the caller the key names. Holders do not use the system
/// themselves; an operator records what they file, and the server records that operator.
/// </summary>
internal static class VoucherCommand
{
    public static Command Create() => new("voucher", """
        Voucher holders, programme-year parameters, contracts, vouchers and redemption claims,
        through a running server (--server, --api-key or METERING_API_KEY, --ca). Changes need
        an operator's key; operators, auditors and the settlement batch read. Money is in fen
        (1 CNY = 100 fen) and dates are yyyy-MM-dd in Asia/Shanghai. A refused change prints
        the status and reason (for example VOUCHER_EXHAUSTED) and exits with 4; nothing is
        written. Bad input exits with 2 before anything is sent.
        """)
    {
        HolderCommand(), ParametersCommand(), ContractCommand(), IssueCommand(), ShowVoucherCommand(), ClaimCommand(), PayoutCommand(), YearEndCommand(),
    };

    // ---------------------------------------------------------------- holders

    private static Command HolderCommand()
    {
        var code = new Option<string>("--code") { Description = "The holder's 18-character unified social credit code.", Required = true };
        var name = new Option<string>("--name") { Description = "Registered name.", Required = true };
        var type = new Option<string>("--type") { Description = "enterprise, university or research_institute.", Required = true };
        type.AcceptOnlyFromAmong("enterprise", "university", "research_institute");
        var district = new Option<string>("--district") { Description = "Shenzhen district, as a key (nanshan) or its Chinese name (南山区).", Required = true };
        var established = new Option<string>("--established") { Description = "Date of establishment; under a year before signing makes a contract a start-up's.", Required = true };
        Command register = Client("register",
            "Register a voucher applicant (operator). Refused for an admitted provider or one with an application in progress, an integrity-listed organisation, or one outside Shenzhen.",
            [code, name, type, district, established], async (parse, vouchers, headers, ct) =>
            {
                string establishedOn = Date(parse, established);
                Holder holder = await vouchers.RegisterHolderAsync(new RegisterHolderRequest
                {
                    Holder = new Holder
                    {
                        CreditCode = parse.GetValue(code)!,
                        Name = parse.GetValue(name)!,
                        Type = (HolderType)VoucherNames.HolderTypeOf(parse.GetValue(type)),
                        District = parse.GetValue(district)!,
                        EstablishedOn = establishedOn,
                    },
                }, headers, cancellationToken: ct);
                Console.WriteLine($"Registered {holder.CreditCode} ({holder.Name}) as a voucher applicant. Approve it with `metering voucher holder approve {holder.CreditCode}`.");
            });

        var approveCode = new Argument<string>("code") { Description = "The applicant's credit code." };
        Command approve = Client("approve", "Approve an applicant as a holder (operator), re-checking the integrity lists and provider exclusivity.", [approveCode],
            async (parse, vouchers, headers, ct) =>
            {
                Holder holder = await vouchers.ApproveHolderAsync(new ApproveHolderRequest { CreditCode = parse.GetValue(approveCode)! }, headers, cancellationToken: ct);
                Console.WriteLine($"Approved {holder.CreditCode} ({holder.Name}): vouchers may be issued to it.");
            });

        var leaveCode = new Argument<string>("code") { Description = "The holder's credit code." };
        var leaveReason = new Option<string>("--reason") { Description = "Why it leaves the holder role (recorded).", Required = true };
        Command leave = Client("leave", "Take a holder out of the holder role (operator) once all its contracts and vouchers have ended and no claim is held; it may then apply as a provider.",
            [leaveCode, leaveReason],
            async (parse, vouchers, headers, ct) =>
            {
                if (string.IsNullOrWhiteSpace(parse.GetValue(leaveReason)))
                {
                    throw new UsageException("--reason must say why");
                }

                Holder holder = await vouchers.LeaveHolderRoleAsync(new LeaveHolderRoleRequest { CreditCode = parse.GetValue(leaveCode)!, Reason = parse.GetValue(leaveReason)! }, headers, cancellationToken: ct);
                Console.WriteLine($"{holder.CreditCode} ({holder.Name}) has left the holder role: it records no new contract, and may apply as a provider.");
            });

        var listOutput = OutputOption.Create();
        Command list = Client("list", "List holders and applicants.", [listOutput], async (parse, vouchers, headers, ct) =>
        {
            ListHoldersResponse listed = await vouchers.ListHoldersAsync(new ListHoldersRequest { Limit = VoucherBook.ListLimitMax }, headers, cancellationToken: ct);
            var rows = new Rows(("code", "creditCode"), ("name", "name"), ("type", "type"), ("district", "district"), ("established", "establishedOn"), ("status", "status"));
            foreach (Holder h in listed.Holders)
            {
                // Rows the registry wrote before the voucher book owned the table carry no type.
                rows.Add(h.CreditCode, h.Name, h.Type == HolderType.Unspecified ? "" : VoucherNames.Of((EngineHolderType)h.Type), h.District, h.EstablishedOn, Status(h.Status));
            }

            rows.Write(parse.GetValue(listOutput), Console.Out);
        });

        var showCode = new Argument<string>("code") { Description = "The holder's credit code." };
        var holderShowOutput = OutputOption.Sections("voucher holder show");
        Command show = Client("show", "Show a holder with its contracts and vouchers; --output json gives one object: holder, contracts, vouchers.", [showCode, holderShowOutput], async (parse, vouchers, headers, ct) =>
        {
            Holder holder = await vouchers.GetHolderAsync(new GetHolderRequest { CreditCode = parse.GetValue(showCode)! }, headers, cancellationToken: ct);
            if (parse.GetValue(holderShowOutput) == OutputFormat.Json)
            {
                var holderRow = new Rows(Column.DataOnly("creditCode"), Column.DataOnly("name"), Column.DataOnly("district"), Column.DataOnly("establishedOn"), Column.DataOnly("status"));
                holderRow.Add(holder.CreditCode, holder.Name, holder.District, holder.EstablishedOn, Status(holder.Status));
                new Sections().One("holder", holderRow).Many("contracts", ContractRows(holder.Contracts)).Many("vouchers", VoucherRows(holder.Vouchers)).WriteJson(Console.Out);
                return;
            }

            Console.WriteLine(Labels.Format("{0}  {1}  ({2}, established {3}, {4})", holder.CreditCode, holder.Name, holder.District, holder.EstablishedOn, Status(holder.Status)));
            Console.WriteLine();
            ContractRows(holder.Contracts).WriteTable(Console.Out);
            Console.WriteLine();
            VoucherRows(holder.Vouchers).WriteTable(Console.Out);
        });

        return new Command("holder", "Voucher holders: register, approve, leave, list, show.") { register, approve, leave, list, show };
    }

    // ---------------------------------------------------------------- parameters

    private static Command ParametersCommand()
    {
        var year = new Option<int>("--year") { Description = "The programme year.", Required = true };
        var ratio = new Option<int>("--ratio-bp") { Description = "Support ratio in basis points.", DefaultValueFactory = _ => 5_000 };
        var startup = new Option<int>("--startup-ratio-bp") { Description = "Start-up support ratio in basis points.", DefaultValueFactory = _ => 6_000 };
        var cap = new Option<long>("--annual-cap-fen") { Description = "Most subsidy per holder per year, in fen.", DefaultValueFactory = _ => 1_000_000_000 };
        var stacking = new Option<int>("--stacking-cap-bp") { Description = "Most public support per contract from all sources, in basis points of its amount.", DefaultValueFactory = _ => 5_000 };
        var minimum = new Option<long>("--min-annual-rental-fen") { Description = "Least total contract amount a holder needs in the year, in fen.", DefaultValueFactory = _ => 50_000_000 };
        var payee = new Option<string>("--payee") { Description = "holder_reimbursement (Shenzhen) or provider_deduction.", DefaultValueFactory = _ => "holder_reimbursement" };
        payee.AcceptOnlyFromAmong("holder_reimbursement", "provider_deduction");
        var holdDays = new Option<int>("--hold-days") { Description = "Days a claim's hold waits for its usage to be settled.", DefaultValueFactory = _ => 90 };
        var from = new Option<string?>("--effective-from") { Description = "Date from which claims use this version (start of day, Asia/Shanghai); default now." };
        Command set = Client("set", "Record a new version of a year's parameters (operator); earlier claims keep the version they used.",
            [year, ratio, startup, cap, stacking, minimum, payee, holdDays, from], async (parse, vouchers, headers, ct) =>
            {
                var parameters = new ProgrammeParameters
                {
                    ProgrammeYear = Positive(parse, year),
                    SupportRatioBp = NotNegative(parse, ratio),
                    StartupRatioBp = NotNegative(parse, startup),
                    AnnualCapFen = NotNegative(parse, cap),
                    StackingCapBp = NotNegative(parse, stacking),
                    MinAnnualRentalFen = NotNegative(parse, minimum),
                    PayeeMode = (PayeeMode)VoucherNames.PayeeModeOf(parse.GetValue(payee)!),
                    HoldDays = NotNegative(parse, holdDays),
                    EffectiveFromUnixMs = parse.GetValue(from) is null ? 0 : ShanghaiTime.StartOf(ParseDate(parse, from)).ToUnixTimeMilliseconds(),
                };
                ProgrammeParameters recorded = await vouchers.PutProgrammeParametersAsync(parameters, headers, cancellationToken: ct);
                Console.WriteLine($"Recorded {recorded.ProgrammeYear} parameters version {recorded.Version}.");
            });

        var listYear = new Option<int>("--year") { Description = "Only this year; all years when left out." };
        var listOutput = OutputOption.Create();
        Command list = Client("list", "List every version of the programme parameters.", [listYear, listOutput], async (parse, vouchers, headers, ct) =>
        {
            uint onlyYear = parse.GetResult(listYear) is null ? 0 : Positive(parse, listYear);
            ListProgrammeParametersResponse listed = await vouchers.ListProgrammeParametersAsync(new ListProgrammeParametersRequest { ProgrammeYear = onlyYear }, headers, cancellationToken: ct);
            var rows = new Rows(("year", "programmeYear"), ("version", "version"), ("effective from", "effectiveFrom"), ("ratio", "supportRatioBp"), ("start-up", "startupRatioBp"),
                ("annual cap CNY", "annualCapFen"), ("stacking", "stackingCapBp"), ("min rental CNY", "minAnnualRentalFen"), ("payee", "payeeMode"), ("hold days", "holdDays"));
            foreach (ProgrammeParameters p in listed.Parameters)
            {
                rows.Add(Cell.Number(p.ProgrammeYear, p.ProgrammeYear.ToString(CultureInfo.InvariantCulture)), Cell.Number(p.Version, N(p.Version)),
                    Cell.Instant(p.EffectiveFromUnixMs) with { Text = Local(p.EffectiveFromUnixMs) },
                    Cell.Number(p.SupportRatioBp, Percent(p.SupportRatioBp)), Cell.Number(p.StartupRatioBp, Percent(p.StartupRatioBp)), Cell.Fen(p.AnnualCapFen, Pricing.Yuan(p.AnnualCapFen)),
                    Cell.Number(p.StackingCapBp, Percent(p.StackingCapBp)), Cell.Fen(p.MinAnnualRentalFen, Pricing.Yuan(p.MinAnnualRentalFen)),
                    p.PayeeMode == PayeeMode.ProviderDeduction ? "provider_deduction" : "holder_reimbursement", Cell.Number(p.HoldDays, N(p.HoldDays)));
            }

            rows.Write(parse.GetValue(listOutput), Console.Out);
        });

        return new Command("params", "Programme-year parameters: ratios, caps, minimum rental, payee mode; versioned.") { set, list };
    }

    // ---------------------------------------------------------------- contracts and support

    private static Command ContractCommand()
    {
        var holder = new Option<string>("--holder") { Description = "The holder's credit code.", Required = true };
        var provider = new Option<string>("--provider") { Description = "The admitted provider's credit code.", Required = true };
        var item = new Option<string>("--service-item") { Description = "The provider's admitted service item.", Required = true };
        var number = new Option<string>("--number") { Description = "The contract number, unique per provider.", Required = true };
        var signed = new Option<string>("--signed") { Description = "Signing date.", Required = true };
        var starts = new Option<string>("--starts") { Description = "First day of service.", Required = true };
        var ends = new Option<string>("--ends") { Description = "Last day of service (inclusive).", Required = true };
        var amount = new Option<long>("--amount-fen") { Description = "The contract amount in fen.", Required = true };
        var unit = new Option<string>("--unit") { Description = "per_card_hour or per_pflops_hour: how usage under it is priced.", Required = true };
        unit.AcceptOnlyFromAmong("per_card_hour", "per_pflops_hour");
        var version = new Option<uint>("--fee-version") { Description = "Fee-schedule version; default the one in force on the first day." };
        var declaration = new Option<string>("--non-related-declaration") { Description = "Where the signed non-related-party declaration is kept; required.", Required = true };
        var addOutput = OutputOption.Create();
        Command add = Client("add",
            "Record a contract (operator). Its dates must lie within the provider's admission of the item; it may not overlap the holder's other contract with that provider.",
            [holder, provider, item, number, signed, starts, ends, amount, unit, version, declaration, addOutput], async (parse, vouchers, headers, ct) =>
            {
                var contract = new Contract
                {
                    HolderCode = parse.GetValue(holder)!,
                    ProviderId = parse.GetValue(provider)!,
                    ServiceItem = parse.GetValue(item)!,
                    ContractNumber = parse.GetValue(number)!,
                    SignedOn = Date(parse, signed),
                    StartsOn = Date(parse, starts),
                    EndsOn = Date(parse, ends),
                    AmountFen = Positive(parse, amount),
                    FeeUnit = UnitOf(parse.GetValue(unit)!),
                    FeeScheduleVersion = parse.GetValue(version),
                    NonRelatedParty = true,
                    DeclarationRef = parse.GetValue(declaration)!,
                };
                ContractRows([await vouchers.RecordContractAsync(new RecordContractRequest { Contract = contract }, headers, cancellationToken: ct)])
                    .WriteOne(parse.GetValue(addOutput), Console.Out);
            });

        var showId = new Argument<long>("contract-id") { Description = "The contract's id." };
        var showOutput = OutputOption.Create();
        Command show = Client("show", "Show a contract and the support recorded against it.", [showId, showOutput], async (parse, vouchers, headers, ct) =>
            ContractRows([await vouchers.GetContractAsync(new GetContractRequest { ContractId = Id(parse, showId) }, headers, cancellationToken: ct)]).WriteOne(parse.GetValue(showOutput), Console.Out));

        var contractId = new Option<long>("--contract") { Description = "The contract's id.", Required = true };
        var source = new Option<string>("--source") { Description = "Which programme or fund gave it.", Required = true };
        var supportFen = new Option<long>("--amount-fen") { Description = "The amount in fen.", Required = true };
        var supportOutput = OutputOption.Create();
        Command support = Client("support", "Record public support for a contract from another source (operator); it counts against the stacking cap. Prints the contract with its support.",
            [contractId, source, supportFen, supportOutput], async (parse, vouchers, headers, ct) =>
            {
                var request = new RecordOtherSupportRequest { ContractId = Id(parse, contractId), Source = parse.GetValue(source)!, AmountFen = Positive(parse, supportFen) };
                ContractRows([await vouchers.RecordOtherSupportAsync(request, headers, cancellationToken: ct)]).WriteOne(parse.GetValue(supportOutput), Console.Out);
            });

        return new Command("contract", "Service contracts between holders and admitted providers: add, show, support.") { add, show, support };
    }

    // ---------------------------------------------------------------- vouchers

    private static Command IssueCommand()
    {
        var contract = new Option<long>("--contract") { Description = "The contract's id.", Required = true };
        var year = new Option<int>("--year") { Description = "The programme year.", Required = true };
        var face = new Option<long>("--face-fen") { Description = "Face value in fen: at most the support ratio of the contract amount and the annual cap.", Required = true };
        var from = new Option<string>("--valid-from") { Description = "First valid day; default 1 January.", DefaultValueFactory = _ => "" };
        var until = new Option<string>("--valid-until") { Description = "Last valid day; default 31 December.", DefaultValueFactory = _ => "" };
        var output = OutputOption.Create();
        return Client("issue", "Issue the voucher of a contract for a programme year (operator).", [contract, year, face, from, until, output], async (parse, vouchers, headers, ct) =>
        {
            var request = new IssueVoucherRequest
            {
                ContractId = Id(parse, contract),
                ProgrammeYear = Positive(parse, year),
                FaceValueFen = Positive(parse, face),
                ValidFrom = parse.GetValue(from) is { Length: > 0 } ? Date(parse, from) : "",
                ValidUntil = parse.GetValue(until) is { Length: > 0 } ? Date(parse, until) : "",
            };
            VoucherRows([await vouchers.IssueVoucherAsync(request, headers, cancellationToken: ct)]).WriteOne(parse.GetValue(output), Console.Out);
        });
    }

    private static Command ShowVoucherCommand()
    {
        var id = new Argument<long>("voucher-id") { Description = "The voucher's id." };
        var output = OutputOption.Create();
        return Client("show", "Show a voucher: face value, held, posted and remaining.", [id, output], async (parse, vouchers, headers, ct) =>
            VoucherRows([await vouchers.GetVoucherAsync(new GetVoucherRequest { VoucherId = Id(parse, id) }, headers, cancellationToken: ct)]).WriteOne(parse.GetValue(output), Console.Out));
    }

    // ---------------------------------------------------------------- claims

    private static Command ClaimCommand()
    {
        var contract = new Option<long>("--contract") { Description = "The contract whose holder used the compute.", Required = true };
        var jobs = new Option<string[]>("--job") { Description = "A job id to claim (repeat for more); every record of the job in the year.", AllowMultipleArgumentsPerToken = true };
        var from = new Option<string?>("--from") { Description = "Or: claim every record that starts on or after this day..." };
        var until = new Option<string?>("--until") { Description = "...and on or before this day (default --from)." };
        var year = new Option<int>("--year") { Description = "For --job: the programme year searched; default this year." };
        var fileOutput = OutputOption.Sections("voucher claim file");
        Command file = Client("file", """
            File a redemption claim and reserve its subsidy on the contract's voucher (operator):
            subsidy = min(ratio × eligible fee, voucher remaining, annual cap remaining, stacking room).
            The hold is posted by the first settlement run after which every day of the claimed usage is closed.
            Name the usage with --job or with --from/--until, not both. --output json gives one object: claim (caps in fen) and lines.
            """, [contract, jobs, from, until, year, fileOutput], async (parse, vouchers, headers, ct) =>
            {
                string[] named = parse.GetValue(jobs) ?? [];
                if ((named.Length > 0) == (parse.GetValue(from) is not null))
                {
                    throw new UsageException("name the claimed usage with --job or with --from (and --until), not both and not neither");
                }

                if (parse.GetValue(from) is null && parse.GetValue(until) is not null)
                {
                    throw new UsageException("--until needs --from");
                }

                var request = new FileClaimRequest
                {
                    ContractId = Id(parse, contract),
                    ProgrammeYear = parse.GetResult(year) is null ? 0 : Positive(parse, year),
                };
                request.JobIds.Add(named);
                if (parse.GetValue(from) is not null)
                {
                    DateOnly first = ParseDate(parse, from);
                    DateOnly last = parse.GetValue(until) is null ? first : ParseDate(parse, until);
                    if (last < first)
                    {
                        throw new UsageException($"--until {parse.GetValue(until)} is before --from {parse.GetValue(from)}");
                    }

                    request.PeriodFromUnixMs = ShanghaiTime.StartOf(first).ToUnixTimeMilliseconds();
                    request.PeriodUntilUnixMs = ShanghaiTime.StartOf(last.AddDays(1)).ToUnixTimeMilliseconds();
                }

                WriteClaim(await vouchers.FileClaimAsync(request, headers, cancellationToken: ct), parse.GetValue(fileOutput));
            });

        var voidId = new Argument<long>("claim-id") { Description = "The claim's id." };
        var reason = new Option<string>("--reason") { Description = "Why it is voided.", Required = true };
        var voidOutput = OutputOption.Sections("voucher claim void");
        Command @void = Client("void", "Void a claim whose hold is still reserved (operator); its subsidy returns to the voucher and its usage can be claimed again. "
            + "--output json gives one object: claim and lines.",
            [voidId, reason, voidOutput], async (parse, vouchers, headers, ct) =>
            {
                if (string.IsNullOrWhiteSpace(parse.GetValue(reason)))
                {
                    throw new UsageException("--reason must say why the claim is voided");
                }

                WriteClaim(await vouchers.VoidClaimAsync(new VoidClaimRequest { ClaimId = Id(parse, voidId), Reason = parse.GetValue(reason)! }, headers, cancellationToken: ct),
                    parse.GetValue(voidOutput));
            });

        var showId = new Argument<long>("claim-id") { Description = "The claim's id." };
        var claimShowOutput = OutputOption.Sections("voucher claim show");
        Command show = Client("show", "Show a claim: its lines, the four caps and its hold; --output json gives one object: claim (caps in fen) and lines.", [showId, claimShowOutput],
            async (parse, vouchers, headers, ct) =>
            {
                WriteClaim(await vouchers.GetClaimAsync(new GetClaimRequest { ClaimId = Id(parse, showId) }, headers, cancellationToken: ct), parse.GetValue(claimShowOutput));
            });

        var listContract = new Option<long?>("--contract") { Description = "Only this contract's claims." };
        var listOutput = OutputOption.Create();
        Command list = Client("list", "List claims, newest first (at most 1,000).", [listContract, listOutput], async (parse, vouchers, headers, ct) =>
        {
            long only = parse.GetValue(listContract) is { } id ? (id > 0 ? id : throw new UsageException($"--contract must be a contract's id (1 or more), not {id}")) : 0;
            ListClaimsResponse listed = await vouchers.ListClaimsAsync(new ListClaimsRequest { ContractId = only, Limit = VoucherBook.ListLimitMax }, headers, cancellationToken: ct);
            var rows = new Rows(("claim", "claimId"), ("contract", "contractId"), ("voucher", "voucherId"), ("holder", "holderCode"), ("records", "records"),
                ("eligible CNY", "eligibleFeeFen"), ("subsidy CNY", "subsidyFen"), ("limited by", "limitedBy"), ("hold", "hold"));
            foreach (Claim c in listed.Claims)
            {
                rows.Add(Cell.Number(c.ClaimId, N(c.ClaimId)), Cell.Number(c.ContractId, N(c.ContractId)), Cell.Number(c.VoucherId, N(c.VoucherId)), c.HolderCode, Cell.Number(c.Records, N(c.Records)),
                    Cell.Fen(c.EligibleFeeFen, Pricing.Yuan(c.EligibleFeeFen)), Cell.Fen(c.SubsidyFen, Pricing.Yuan(c.SubsidyFen)), Limit(c.LimitedBy), Hold(c.HoldState));
            }

            rows.Write(parse.GetValue(listOutput), Console.Out);
        });

        return new Command("claim", "Redemption claims: file, void, show, list.") { file, @void, show, list };
    }

    // ---------------------------------------------------------------- payouts and the year end

    private static Command PayoutCommand()
    {
        var payee = new Option<string>("--payee") { Description = "The payee's credit code: a holder reimbursed, or a provider in deduction mode.", Required = true };
        var amount = new Option<long>("--amount-fen") { Description = "The amount transferred, in fen (1 CNY = 100 fen).", Required = true };
        var reference = new Option<string>("--reference") { Description = "The bank's reference of the transfer; recorded once.", Required = true };
        var paidOn = new Option<string>("--paid-on") { Description = "The transfer's value date, today or earlier.", Required = true };
        Command record = Client("record", """
            Record a bank transfer to a payee (operator): it clears that much of what the programme owes
            the payee (payee_payable) on the ledger. Refused when it is more than is owed for subsidies
            settled before the payment date (PAYOUT_OVER_PAYABLE, PAYEE_NOTHING_PAYABLE), or when the
            reference is recorded already for another transfer (PAYOUT_REFERENCE_TAKEN). Running the
            same command again records nothing and prints the first payout.
            """, [payee, amount, reference, paidOn], async (parse, vouchers, headers, ct) =>
            {
                Payout payout = await vouchers.RecordPayoutAsync(new RecordPayoutRequest
                {
                    PayeeCode = parse.GetValue(payee)!,
                    AmountFen = Positive(parse, amount),
                    BankReference = parse.GetValue(reference)!,
                    PaidOn = Date(parse, paidOn),
                }, headers, cancellationToken: ct);
                Console.WriteLine(payout.AlreadyRecorded
                    ? $"Payout {payout.PayoutId} with reference {payout.BankReference} was recorded already; nothing was paid again."
                    : $"Recorded payout {payout.PayoutId}: {Pricing.Yuan(payout.AmountFen)} CNY to {payout.PayeeCode} on {payout.PaidOn} (ledger entry {payout.LedgerEntryId}).");
                Console.WriteLine($"{payout.PayeeCode} is still owed {Pricing.Yuan(payout.PayableFen)} CNY.");
            });

        var listPayee = new Option<string?>("--payee") { Description = "Only this payee's payouts." };
        var listOutput = OutputOption.Create();
        Command list = Client("list", "List payouts, newest first (at most 1,000), with each payee's outstanding payable.", [listPayee, listOutput], async (parse, vouchers, headers, ct) =>
        {
            ListPayoutsResponse listed = await vouchers.ListPayoutsAsync(new ListPayoutsRequest { PayeeCode = parse.GetValue(listPayee) ?? "", Limit = VoucherBook.ListLimitMax },
                headers, cancellationToken: ct);
            var rows = new Rows(("payout", "payoutId"), ("payee", "payeeCode"), ("paid on", "paidOn"), ("amount CNY", "amountFen"), ("bank reference", "bankReference"),
                ("recorded by", "recordedBy"), ("payee still owed CNY", "payableFen"));
            foreach (Payout p in listed.Payouts)
            {
                rows.Add(Cell.Number(p.PayoutId, N(p.PayoutId)), p.PayeeCode, p.PaidOn, Cell.Fen(p.AmountFen, Pricing.Yuan(p.AmountFen)), p.BankReference, p.RecordedBy,
                    Cell.Fen(p.PayableFen, Pricing.Yuan(p.PayableFen)));
            }

            rows.Write(parse.GetValue(listOutput), Console.Out);
        });

        return new Command("payout", "Payouts to payees: record, list.") { record, list };
    }

    private static Command YearEndCommand()
    {
        var year = new Option<int>("--year") { Description = "The programme year; it must have ended (Asia/Shanghai, by the server's clock).", Required = true };
        Command release = Client("release", """
            Return the unused balances of a programme year's vouchers to the year's budget (operator), once
            the year has ended by the server's clock (PROGRAMME_YEAR_NOT_ENDED before). A second run releases
            only what became free since, and is refused with NOTHING_TO_RELEASE when nothing did.
            """, [year], async (parse, vouchers, headers, ct) =>
            {
                YearEndRelease released = await vouchers.ReleaseYearEndAsync(new ReleaseYearEndRequest { ProgrammeYear = Positive(parse, year) }, headers, cancellationToken: ct);
                Console.WriteLine($"Release {released.ReleaseId}: {Pricing.Yuan(released.ReleasedFen)} CNY unused on {N(released.Vouchers)} voucher(s) of {released.ProgrammeYear} returned to the budget "
                    + $"({Pricing.Yuan(released.YearReleasedFen)} CNY released for {released.ProgrammeYear} in all).");
            });
        return new Command("year-end", "The end of a programme year: release.") { release };
    }

    // ---------------------------------------------------------------- output

    private static Rows ContractRows(IEnumerable<Contract> contracts)
    {
        var rows = new Rows(("contract", "contractId"), ("number", "contractNumber"), ("holder", "holderCode"), ("provider", "providerId"), ("item", "serviceItem"), ("from", "startsOn"),
            ("to", "endsOn"), ("amount CNY", "amountFen"), ("unit", "feeUnit"), ("fees v", "feeScheduleVersion"), ("start-up", "startup"), ("other support CNY", "otherSupportFen"),
            ("voucher support CNY", "voucherSupportFen"));
        foreach (Contract c in contracts)
        {
            rows.Add(Cell.Number(c.ContractId, N(c.ContractId)), c.ContractNumber, c.HolderCode, c.ProviderId, c.ServiceItem, c.StartsOn, c.EndsOn, Cell.Fen(c.AmountFen, Pricing.Yuan(c.AmountFen)),
                Spelling(c.FeeUnit), Cell.Number(c.FeeScheduleVersion, N(c.FeeScheduleVersion)), Cell.Flag(c.Startup, c.Startup ? "yes" : "no"),
                Cell.Fen(c.OtherSupportFen, Pricing.Yuan(c.OtherSupportFen)), Cell.Fen(c.VoucherSupportFen, Pricing.Yuan(c.VoucherSupportFen)));
        }

        return rows;
    }

    private static Rows VoucherRows(IEnumerable<Voucher> vouchers)
    {
        var rows = new Rows(("voucher", "voucherId"), ("contract", "contractId"), ("holder", "holderCode"), ("year", "programmeYear"), ("valid from", "validFrom"), ("valid until", "validUntil"),
            ("face CNY", "faceValueFen"), ("held CNY", "heldFen"), ("posted CNY", "postedFen"), ("released CNY", "releasedFen"), ("remaining CNY", "remainingFen"));
        foreach (Voucher v in vouchers)
        {
            rows.Add(Cell.Number(v.VoucherId, N(v.VoucherId)), Cell.Number(v.ContractId, N(v.ContractId)), v.HolderCode, Cell.Number(v.ProgrammeYear, v.ProgrammeYear.ToString(CultureInfo.InvariantCulture)),
                v.ValidFrom, v.ValidUntil, Cell.Fen(v.FaceValueFen, Pricing.Yuan(v.FaceValueFen)), Cell.Fen(v.HeldFen, Pricing.Yuan(v.HeldFen)), Cell.Fen(v.PostedFen, Pricing.Yuan(v.PostedFen)),
                Cell.Fen(v.ReleasedFen, Pricing.Yuan(v.ReleasedFen)), Cell.Fen(v.RemainingFen, Pricing.Yuan(v.RemainingFen)));
        }

        return rows;
    }

    /// <summary>A claim as `--output` asks: one JSON object of claim and lines, or the people's tables (csv is refused before the call).</summary>
    private static void WriteClaim(Claim claim, OutputFormat format)
    {
        if (format == OutputFormat.Json)
        {
            WriteClaimJson(claim);
            return;
        }

        Console.WriteLine($"Claim {claim.ClaimId} on contract {claim.ContractId}, voucher {claim.VoucherId}, holder {claim.HolderCode}, {claim.ProgrammeYear} parameters v{claim.ParametersVersion}");
        Console.WriteLine($"  usage days {string.Join(", ", claim.UsageDays)}; hold {Hold(claim.HoldState)} until {Local(claim.HoldExpiresUnixMs)}");
        var lines = new TextTable("model", "unit", "records", "card-ms", "nPFh", "price CNY", "fee CNY");
        foreach (ClaimLine l in claim.Lines)
        {
            lines.Add(l.DeviceModel, Spelling(l.FeeUnit), N(l.Records), N(l.CardMs), N(l.UsageNpfh), Pricing.Yuan(l.PriceFen), Pricing.Yuan(l.FeeFen));
        }

        lines.Write(Console.Out);
        var caps = new TextTable("eligible CNY", $"ratio {Percent(claim.RatioBp)} CNY", "voucher left CNY", "annual cap left CNY", "stacking room CNY", "subsidy CNY", "limited by");
        caps.Add(Pricing.Yuan(claim.EligibleFeeFen), Pricing.Yuan(claim.RatioSubsidyFen), Pricing.Yuan(claim.VoucherRemainingFen), Pricing.Yuan(claim.AnnualCapRemainingFen),
            Pricing.Yuan(claim.StackingRoomFen), Pricing.Yuan(claim.SubsidyFen), Limit(claim.LimitedBy));
        caps.Write(Console.Out);
    }

    /// <summary>A claim as one object: its fields and caps (money in fen, usage days as a space-separated list), then its lines.</summary>
    private static void WriteClaimJson(Claim claim)
    {
        var fields = new Rows(Column.DataOnly("claimId"), Column.DataOnly("contractId"), Column.DataOnly("voucherId"), Column.DataOnly("holderCode"), Column.DataOnly("providerId"),
            Column.DataOnly("programmeYear"), Column.DataOnly("parametersVersion"), Column.DataOnly("ratioBp"), Column.DataOnly("records"), Column.DataOnly("usageDays"),
            Column.DataOnly("eligibleFeeFen"), Column.DataOnly("ratioSubsidyFen"), Column.DataOnly("voucherRemainingFen"), Column.DataOnly("annualCapRemainingFen"),
            Column.DataOnly("stackingRoomFen"), Column.DataOnly("subsidyFen"), Column.DataOnly("limitedBy"), Column.DataOnly("hold"), Column.DataOnly("holdExpires"), Column.DataOnly("filed"));
        fields.Add(Cell.Data(claim.ClaimId), Cell.Data(claim.ContractId), Cell.Data(claim.VoucherId), claim.HolderCode, claim.ProviderId, Cell.Data(claim.ProgrammeYear),
            Cell.Data(claim.ParametersVersion), Cell.Data(claim.RatioBp), Cell.Data(claim.Records), string.Join(' ', claim.UsageDays), Cell.Data(claim.EligibleFeeFen),
            Cell.Data(claim.RatioSubsidyFen), Cell.Data(claim.VoucherRemainingFen), Cell.Data(claim.AnnualCapRemainingFen), Cell.Data(claim.StackingRoomFen), Cell.Data(claim.SubsidyFen),
            Limit(claim.LimitedBy), Hold(claim.HoldState), Cell.Instant(claim.HoldExpiresUnixMs), Cell.Instant(claim.FiledUnixMs));
        var lines = new Rows(Column.DataOnly("deviceModel"), Column.DataOnly("feeUnit"), Column.DataOnly("records"), Column.DataOnly("cardMs"), Column.DataOnly("usageNpfh"),
            Column.DataOnly("priceFen"), Column.DataOnly("feeFen"));
        foreach (ClaimLine l in claim.Lines)
        {
            lines.Add(l.DeviceModel, Spelling(l.FeeUnit), Cell.Data(l.Records), Cell.Data(l.CardMs), Cell.Data(l.UsageNpfh), Cell.Data(l.PriceFen), Cell.Data(l.FeeFen));
        }

        new Sections().One("claim", fields).Many("lines", lines).WriteJson(Console.Out);
    }

    // ---------------------------------------------------------------- plumbing

    /// <summary>A client command (ClientCommand) whose action gets the voucher client and the caller's key; it exits with 0 when the action returns.</summary>
    private static Command Client(string name, string description, Symbol[] symbols,
        Func<ParseResult, VoucherService.VoucherServiceClient, Metadata, CancellationToken, Task> action) =>
        ClientCommand.Create(name, description, symbols, async (parse, call, cancellationToken) =>
        {
            await action(parse, new VoucherService.VoucherServiceClient(call.Channel), call.Headers, cancellationToken);
            return 0;
        });

    /// <summary>The option's date, checked here so that a typo exits with 2 before any call.</summary>
    private static DateOnly ParseDate(ParseResult parse, Option<string?> option) => ParseDate(option.Name, parse.GetValue(option)!);

    /// <summary>The option's date as given, once it parses exactly as yyyy-MM-dd.</summary>
    private static string Date(ParseResult parse, Option<string> option)
    {
        string text = parse.GetValue(option)!;
        ParseDate(option.Name, text);
        return text;
    }

    internal static DateOnly ParseDate(string name, string text) =>
        DateOnly.TryParseExact(text, "yyyy-MM-dd", CultureInfo.InvariantCulture, DateTimeStyles.None, out DateOnly date)
            ? date
            : throw new UsageException($"{name} must be a date as yyyy-MM-dd, not '{text}'");

    private static uint Positive(ParseResult parse, Option<int> option) => (uint)AtLeast(option.Name, parse.GetValue(option), 1);

    private static long Positive(ParseResult parse, Option<long> option) => AtLeast(option.Name, parse.GetValue(option), 1);

    private static uint NotNegative(ParseResult parse, Option<int> option) => (uint)AtLeast(option.Name, parse.GetValue(option), 0);

    private static long NotNegative(ParseResult parse, Option<long> option) => AtLeast(option.Name, parse.GetValue(option), 0);

    private static long Id(ParseResult parse, Option<long> option) => AtLeast(option.Name, parse.GetValue(option), 1);

    private static long Id(ParseResult parse, Argument<long> argument) => AtLeast(argument.Name, parse.GetValue(argument), 1);

    private static long AtLeast(string name, long value, long least) =>
        value >= least ? value : throw new UsageException(string.Create(CultureInfo.InvariantCulture, $"{name} must be {least} or more, not {value}"));

    private static string Status(HolderStatus status) => status switch
    {
        HolderStatus.HolderApproved => "holder",
        HolderStatus.HolderLeft => "left",
        _ => "applicant",
    };

    private static string Hold(HoldState state) => state switch
    {
        HoldState.HoldReserved => "reserved",
        HoldState.HoldPosted => "posted",
        HoldState.HoldVoided => "voided",
        _ => "expired",
    };

    private static string Limit(SubsidyLimit limit) => limit switch
    {
        SubsidyLimit.LimitedByRatio => "ratio",
        SubsidyLimit.LimitedByVoucherRemaining => "voucher remaining",
        SubsidyLimit.LimitedByAnnualCap => "annual cap",
        _ => "stacking cap",
    };

    private static string Percent(uint basisPoints) => string.Create(CultureInfo.InvariantCulture, $"{basisPoints / 100}.{basisPoints % 100:00}%");

    private static string N(long value) => value.ToString("N0", CultureInfo.InvariantCulture);

    private static string Local(long unixMs) => LocalTime.Minutes(unixMs);

    // The registry spells fee units in its database and on the command line; the wire's enum and
    // the engine's carry the same members at the same numbers, so they convert by value.
    private static string Spelling(FeeUnit unit) => Names.Of((Engine.Registry.FeeUnit)(int)unit);

    private static FeeUnit UnitOf(string name) => (FeeUnit)(int)Names.FeeUnitOf(name);
}
