using System.CommandLine;
using System.Globalization;
using Metering.Engine.Access;
using Metering.Engine.Registry;
using Metering.Engine.Settlement;
using Metering.Engine.Vouchers;
using Metering.Protocol.V1;
using Npgsql;

namespace Metering.Cli.Commands;

/// <summary>
/// `metering voucher …`: the bureau operator's side of the voucher programme: holders, programme
/// parameters, contracts, other support, vouchers and redemption claims. Holders do not use
/// the system themselves; an operator records what they file.
/// </summary>
internal static class VoucherCommand
{
    public static Command Create() => new("voucher", """
        Voucher holders, programme-year parameters, contracts, vouchers and redemption claims.
        Money is in fen (1 CNY = 100 fen) and dates are yyyy-MM-dd in Asia/Shanghai. A refused
        change prints its reason (for example VOUCHER_EXHAUSTED) and exits with 1; nothing is
        written.
        """)
    {
        HolderCommand(), ParametersCommand(), ContractCommand(), IssueCommand(), ShowVoucherCommand(), ClaimCommand(),
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
        var (connection, dataDirectory, actingAs) = (CommonOptions.Connection(), CommonOptions.DataDirectory(), CommonOptions.ActingOperator());
        var register = new Command("register", "Register a voucher applicant. Refused for an admitted provider or one with an application in progress, an integrity-listed organisation, or one outside Shenzhen.")
        {
            code, name, type, district, established, actingAs, connection, dataDirectory,
        };
        register.SetAction((parse, ct) => Run(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            Holder holder = await Book(dataSource).RegisterHolderAsync(Operator(parse.GetValue(actingAs)!), new Holder
            {
                CreditCode = parse.GetValue(code)!,
                Name = parse.GetValue(name)!,
                Type = VoucherNames.HolderTypeOf(parse.GetValue(type)),
                District = parse.GetValue(district)!,
                EstablishedOn = parse.GetValue(established)!,
            }, ct);
            Console.WriteLine($"Registered {holder.CreditCode} ({holder.Name}) as a voucher applicant. Approve it with `metering voucher holder approve {holder.CreditCode}`.");
        }, ct));

        var approveCode = new Argument<string>("code") { Description = "The applicant's credit code." };
        var approve = new Command("approve", "Approve an applicant as a holder, re-checking the integrity lists and provider exclusivity.") { approveCode, actingAs, connection, dataDirectory };
        approve.SetAction((parse, ct) => Run(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            Holder holder = await Book(dataSource).ApproveHolderAsync(Operator(parse.GetValue(actingAs)!), parse.GetValue(approveCode)!, ct);
            Console.WriteLine($"Approved {holder.CreditCode} ({holder.Name}): vouchers may be issued to it.");
        }, ct));

        var list = new Command("list", "List holders and applicants.") { connection, dataDirectory };
        list.SetAction((parse, ct) => Run(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            var table = new TextTable("code", "name", "type", "district", "established", "status");
            foreach (Holder h in await Book(dataSource).ListHoldersAsync(VoucherBook.ListLimitMax, ct))
            {
                // Rows the registry wrote before the voucher book owned the table carry no type.
                table.Add(h.CreditCode, h.Name, h.Type == HolderType.Unspecified ? "" : VoucherNames.Of(h.Type), h.District, h.EstablishedOn, Status(h.Status));
            }

            table.Write(Console.Out);
        }, ct));

        var showCode = new Argument<string>("code") { Description = "The holder's credit code." };
        var show = new Command("show", "Show a holder with its contracts and vouchers.") { showCode, connection, dataDirectory };
        show.SetAction((parse, ct) => Run(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            Holder holder = await Book(dataSource).GetHolderAsync(parse.GetValue(showCode)!, ct)
                ?? throw new VoucherRefusedException(VoucherRefusal.HolderUnknown, $"no voucher holder {parse.GetValue(showCode)} is registered");
            Console.WriteLine($"{holder.CreditCode}  {holder.Name}  ({holder.District}, established {holder.EstablishedOn}, {Status(holder.Status)})");
            Console.WriteLine();
            WriteContracts(holder.Contracts);
            Console.WriteLine();
            WriteVouchers(holder.Vouchers);
        }, ct));

        return new Command("holder", "Voucher holders: register, approve, list, show.") { register, approve, list, show };
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
        var (connection, dataDirectory, actingAs) = (CommonOptions.Connection(), CommonOptions.DataDirectory(), CommonOptions.ActingOperator());
        var set = new Command("set", "Record a new version of a year's parameters; earlier claims keep the version they used.")
        {
            year, ratio, startup, cap, stacking, minimum, payee, holdDays, from, actingAs, connection, dataDirectory,
        };
        set.SetAction((parse, ct) => Run(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            string? effective = parse.GetValue(from);
            ProgrammeParameters recorded = await Book(dataSource).PutParametersAsync(Operator(parse.GetValue(actingAs)!), new ProgrammeParameters
            {
                ProgrammeYear = (uint)parse.GetValue(year),
                SupportRatioBp = (uint)parse.GetValue(ratio),
                StartupRatioBp = (uint)parse.GetValue(startup),
                AnnualCapFen = parse.GetValue(cap),
                StackingCapBp = (uint)parse.GetValue(stacking),
                MinAnnualRentalFen = parse.GetValue(minimum),
                PayeeMode = VoucherNames.PayeeModeOf(parse.GetValue(payee)!),
                HoldDays = (uint)parse.GetValue(holdDays),
                EffectiveFromUnixMs = effective is null ? 0 : ShanghaiTime.StartOf(VoucherBook.ParseDate("--effective-from", effective)).ToUnixTimeMilliseconds(),
            }, ct);
            Console.WriteLine($"Recorded {recorded.ProgrammeYear} parameters version {recorded.Version}.");
        }, ct));

        var listYear = new Option<int>("--year") { Description = "Only this year; all years when left out." };
        var list = new Command("list", "List every version of the programme parameters.") { listYear, connection, dataDirectory };
        list.SetAction((parse, ct) => Run(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            var table = new TextTable("year", "version", "effective from", "ratio", "start-up", "annual cap CNY", "stacking", "min rental CNY", "payee", "hold days");
            foreach (ProgrammeParameters p in await Book(dataSource).ListParametersAsync(parse.GetValue(listYear), ct))
            {
                table.Add(N(p.ProgrammeYear), N(p.Version), Local(p.EffectiveFromUnixMs), Percent(p.SupportRatioBp), Percent(p.StartupRatioBp), Pricing.Yuan(p.AnnualCapFen),
                    Percent(p.StackingCapBp), Pricing.Yuan(p.MinAnnualRentalFen), p.PayeeMode == PayeeMode.ProviderDeduction ? "provider_deduction" : "holder_reimbursement", N(p.HoldDays));
            }

            table.Write(Console.Out);
        }, ct));

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
        var (connection, dataDirectory, actingAs) = (CommonOptions.Connection(), CommonOptions.DataDirectory(), CommonOptions.ActingOperator());
        var add = new Command("add", "Record a contract. Its dates must lie within the provider's admission of the item; it may not overlap the holder's other contract with that provider.")
        {
            holder, provider, item, number, signed, starts, ends, amount, unit, version, declaration, actingAs, connection, dataDirectory,
        };
        add.SetAction((parse, ct) => Run(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            Contract contract = await Book(dataSource).RecordContractAsync(Operator(parse.GetValue(actingAs)!), new Contract
            {
                HolderCode = parse.GetValue(holder)!,
                ProviderId = parse.GetValue(provider)!,
                ServiceItem = parse.GetValue(item)!,
                ContractNumber = parse.GetValue(number)!,
                SignedOn = parse.GetValue(signed)!,
                StartsOn = parse.GetValue(starts)!,
                EndsOn = parse.GetValue(ends)!,
                AmountFen = parse.GetValue(amount),
                FeeUnit = Names.FeeUnitOf(parse.GetValue(unit)!),
                FeeScheduleVersion = parse.GetValue(version),
                NonRelatedParty = true,
                DeclarationRef = parse.GetValue(declaration)!,
            }, ct);
            WriteContracts([contract]);
        }, ct));

        var showId = new Argument<long>("contract-id") { Description = "The contract's id." };
        var show = new Command("show", "Show a contract and the support recorded against it.") { showId, connection, dataDirectory };
        show.SetAction((parse, ct) => Run(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            Contract contract = await Book(dataSource).GetContractAsync(parse.GetValue(showId), ct)
                ?? throw new VoucherRefusedException(VoucherRefusal.ContractUnknown, $"there is no contract {parse.GetValue(showId)}");
            WriteContracts([contract]);
        }, ct));

        var contractId = new Option<long>("--contract") { Description = "The contract's id.", Required = true };
        var source = new Option<string>("--source") { Description = "Which programme or fund gave it.", Required = true };
        var supportFen = new Option<long>("--amount-fen") { Description = "The amount in fen.", Required = true };
        var support = new Command("support", "Record public support for a contract from another source; it counts against the stacking cap.")
        {
            contractId, source, supportFen, actingAs, connection, dataDirectory,
        };
        support.SetAction((parse, ct) => Run(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            Contract contract = await Book(dataSource).RecordOtherSupportAsync(Operator(parse.GetValue(actingAs)!), new RecordOtherSupportRequest
            {
                ContractId = parse.GetValue(contractId),
                Source = parse.GetValue(source)!,
                AmountFen = parse.GetValue(supportFen),
            }, ct);
            WriteContracts([contract]);
        }, ct));

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
        var (connection, dataDirectory, actingAs) = (CommonOptions.Connection(), CommonOptions.DataDirectory(), CommonOptions.ActingOperator());
        var issue = new Command("issue", "Issue the voucher of a contract for a programme year.") { contract, year, face, from, until, actingAs, connection, dataDirectory };
        issue.SetAction((parse, ct) => Run(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            Voucher voucher = await Book(dataSource).IssueVoucherAsync(Operator(parse.GetValue(actingAs)!), new IssueVoucherRequest
            {
                ContractId = parse.GetValue(contract),
                ProgrammeYear = (uint)parse.GetValue(year),
                FaceValueFen = parse.GetValue(face),
                ValidFrom = parse.GetValue(from)!,
                ValidUntil = parse.GetValue(until)!,
            }, ct);
            WriteVouchers([voucher]);
        }, ct));
        return issue;
    }

    private static Command ShowVoucherCommand()
    {
        var id = new Argument<long>("voucher-id") { Description = "The voucher's id." };
        var (connection, dataDirectory) = (CommonOptions.Connection(), CommonOptions.DataDirectory());
        var show = new Command("show", "Show a voucher: face value, held, posted and remaining.") { id, connection, dataDirectory };
        show.SetAction((parse, ct) => Run(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            Voucher voucher = await Book(dataSource).GetVoucherAsync(parse.GetValue(id), ct)
                ?? throw new VoucherRefusedException(VoucherRefusal.VoucherUnknown, $"there is no voucher {parse.GetValue(id)}");
            WriteVouchers([voucher]);
        }, ct));
        return show;
    }

    // ---------------------------------------------------------------- claims

    private static Command ClaimCommand()
    {
        var contract = new Option<long>("--contract") { Description = "The contract whose holder used the compute.", Required = true };
        var jobs = new Option<string[]>("--job") { Description = "A job id to claim (repeat for more); every record of the job in the year.", AllowMultipleArgumentsPerToken = true };
        var from = new Option<string?>("--from") { Description = "Or: claim every record that starts on or after this day..." };
        var until = new Option<string?>("--until") { Description = "...and on or before this day." };
        var year = new Option<int>("--year") { Description = "For --job: the programme year searched; default this year." };
        var (connection, dataDirectory, actingAs) = (CommonOptions.Connection(), CommonOptions.DataDirectory(), CommonOptions.ActingOperator());
        var file = new Command("file", """
            File a redemption claim and reserve its subsidy on the contract's voucher:
            subsidy = min(ratio × eligible fee, voucher remaining, annual cap remaining, stacking room).
            The hold is posted by the first settlement run after which every day of the claimed usage is closed.
            """)
        {
            contract, jobs, from, until, year, actingAs, connection, dataDirectory,
        };
        file.SetAction((parse, ct) => Run(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            var request = new FileClaimRequest { ContractId = parse.GetValue(contract), ProgrammeYear = (uint)parse.GetValue(year) };
            request.JobIds.Add(parse.GetValue(jobs) ?? []);
            if (parse.GetValue(from) is { } first)
            {
                DateOnly last = VoucherBook.ParseDate("--until", parse.GetValue(until) ?? first);
                request.PeriodFromUnixMs = ShanghaiTime.StartOf(VoucherBook.ParseDate("--from", first)).ToUnixTimeMilliseconds();
                request.PeriodUntilUnixMs = ShanghaiTime.StartOf(last.AddDays(1)).ToUnixTimeMilliseconds();
            }

            Claim claim = await new Redemptions(dataSource, TimeProvider.System).FileClaimAsync(Operator(parse.GetValue(actingAs)!), request, ct);
            WriteClaim(claim);
        }, ct));

        var voidId = new Argument<long>("claim-id") { Description = "The claim's id." };
        var reason = new Option<string>("--reason") { Description = "Why it is voided.", Required = true };
        var @void = new Command("void", "Void a claim whose hold is still reserved; its subsidy returns to the voucher and its usage can be claimed again.")
        {
            voidId, reason, actingAs, connection, dataDirectory,
        };
        @void.SetAction((parse, ct) => Run(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            Claim claim = await new Redemptions(dataSource, TimeProvider.System).VoidClaimAsync(Operator(parse.GetValue(actingAs)!),
                new VoidClaimRequest { ClaimId = parse.GetValue(voidId), Reason = parse.GetValue(reason)! }, ct);
            WriteClaim(claim);
        }, ct));

        var showId = new Argument<long>("claim-id") { Description = "The claim's id." };
        var show = new Command("show", "Show a claim: its lines, the four caps and its hold.") { showId, connection, dataDirectory };
        show.SetAction((parse, ct) => Run(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            Claim claim = await new Redemptions(dataSource, TimeProvider.System).GetClaimAsync(parse.GetValue(showId), ct)
                ?? throw new VoucherRefusedException(VoucherRefusal.ClaimUnknown, $"there is no claim {parse.GetValue(showId)}");
            WriteClaim(claim);
        }, ct));

        var listContract = new Option<long?>("--contract") { Description = "Only this contract's claims." };
        var list = new Command("list", "List claims, newest first.") { listContract, connection, dataDirectory };
        list.SetAction((parse, ct) => Run(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            var table = new TextTable("claim", "contract", "voucher", "holder", "records", "eligible CNY", "subsidy CNY", "limited by", "hold");
            foreach (Claim c in await new Redemptions(dataSource, TimeProvider.System).ListClaimsAsync(parse.GetValue(listContract), VoucherBook.ListLimitMax, ct))
            {
                table.Add(N(c.ClaimId), N(c.ContractId), N(c.VoucherId), c.HolderCode, N(c.Records), Pricing.Yuan(c.EligibleFeeFen), Pricing.Yuan(c.SubsidyFen), Limit(c.LimitedBy), Hold(c.HoldState));
            }

            table.Write(Console.Out);
        }, ct));

        return new Command("claim", "Redemption claims: file, void, show, list.") { file, @void, show, list };
    }

    // ---------------------------------------------------------------- output

    private static void WriteContracts(IEnumerable<Contract> contracts)
    {
        var table = new TextTable("contract", "number", "holder", "provider", "item", "from", "to", "amount CNY", "unit", "fees v", "start-up", "other support CNY", "voucher support CNY");
        foreach (Contract c in contracts)
        {
            table.Add(N(c.ContractId), c.ContractNumber, c.HolderCode, c.ProviderId, c.ServiceItem, c.StartsOn, c.EndsOn, Pricing.Yuan(c.AmountFen), Names.Of(c.FeeUnit), N(c.FeeScheduleVersion),
                c.Startup ? "yes" : "no", Pricing.Yuan(c.OtherSupportFen), Pricing.Yuan(c.VoucherSupportFen));
        }

        table.Write(Console.Out);
    }

    private static void WriteVouchers(IEnumerable<Voucher> vouchers)
    {
        var table = new TextTable("voucher", "contract", "holder", "year", "valid from", "valid until", "face CNY", "held CNY", "posted CNY", "remaining CNY");
        foreach (Voucher v in vouchers)
        {
            table.Add(N(v.VoucherId), N(v.ContractId), v.HolderCode, N(v.ProgrammeYear), v.ValidFrom, v.ValidUntil, Pricing.Yuan(v.FaceValueFen), Pricing.Yuan(v.HeldFen),
                Pricing.Yuan(v.PostedFen), Pricing.Yuan(v.RemainingFen));
        }

        table.Write(Console.Out);
    }

    private static void WriteClaim(Claim claim)
    {
        Console.WriteLine($"Claim {claim.ClaimId} on contract {claim.ContractId}, voucher {claim.VoucherId}, holder {claim.HolderCode}, {claim.ProgrammeYear} parameters v{claim.ParametersVersion}");
        Console.WriteLine($"  usage days {string.Join(", ", claim.UsageDays)}; hold {Hold(claim.HoldState)} until {Local(claim.HoldExpiresUnixMs)}");
        var lines = new TextTable("model", "unit", "records", "card-ms", "nPFh", "price CNY", "fee CNY");
        foreach (ClaimLine l in claim.Lines)
        {
            lines.Add(l.DeviceModel, Names.Of(l.FeeUnit), N(l.Records), N(l.CardMs), N(l.UsageNpfh), Pricing.Yuan(l.PriceFen), Pricing.Yuan(l.FeeFen));
        }

        lines.Write(Console.Out);
        var caps = new TextTable("eligible CNY", $"ratio {Percent(claim.RatioBp)} CNY", "voucher left CNY", "annual cap left CNY", "stacking room CNY", "subsidy CNY", "limited by");
        caps.Add(Pricing.Yuan(claim.EligibleFeeFen), Pricing.Yuan(claim.RatioSubsidyFen), Pricing.Yuan(claim.VoucherRemainingFen), Pricing.Yuan(claim.AnnualCapRemainingFen),
            Pricing.Yuan(claim.StackingRoomFen), Pricing.Yuan(claim.SubsidyFen), Limit(claim.LimitedBy));
        caps.Write(Console.Out);
    }

    // ---------------------------------------------------------------- plumbing

    /// <summary>
    /// Runs an action against the database; a voucher or settlement refusal prints its reason and
    /// exits with 1, a failed reconciliation with 3.
    /// </summary>
    internal static Task<int> Run(string? connection, string dataDirectory, Func<NpgsqlDataSource, Task> action, CancellationToken cancellationToken) =>
        CommonOptions.WithDatabaseAsync(connection, dataDirectory, async dataSource =>
        {
            try
            {
                await action(dataSource);
                return 0;
            }
            catch (VoucherRefusedException refused)
            {
                Console.Error.WriteLine($"refused: {VoucherProtocolNames.Of(refused.Reason)}: {refused.Message}");
                return 1;
            }
            catch (SettlementRefusedException refused)
            {
                Console.Error.WriteLine($"{(refused.Reason == SettlementRefusal.ReconciliationFailed ? "FAILED" : "refused")}: {VoucherProtocolNames.Of(refused.Reason)}: {refused.Message}");
                return refused.Reason == SettlementRefusal.ReconciliationFailed ? 3 : 1;
            }
        }, cancellationToken);

    private static VoucherBook Book(NpgsqlDataSource dataSource) => new(dataSource, TimeProvider.System);

    private static Actor Operator(string name) => CommonOptions.Operator(name);

    private static string Status(HolderStatus status) => status == HolderStatus.HolderApproved ? "holder" : "applicant";

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
}
