using System.CommandLine;
using Metering.Engine.Registry;
using Metering.Protocol.V1;
using LegalForm = Metering.Protocol.V1.LegalForm;
using ServiceItemAction = Metering.Protocol.V1.ServiceItemAction;
using IntegrityListing = Metering.Protocol.V1.IntegrityListing;
using Licence = Metering.Protocol.V1.Licence;
using Organisation = Metering.Protocol.V1.Organisation;
using Application = Metering.Protocol.V1.Application;

namespace Metering.Cli.Commands;

/// <summary>
/// `metering registry …`: the bureau operator's side of the provider registry, through the
/// running server's RegistryService: organisations, licences, integrity listings, admission
/// batches, the admission workflow (RegistryWorkflowCommands), admitted service items and the
/// change history. The server's role policy decides what the key may do, and every change is
/// recorded in the history under the key's subject.
/// </summary>
internal static class RegistryCommand
{
    public static Command Create()
    {
        var registry = new Command("registry", """
            The provider registry: organisations and their licences and integrity listings, admission
            batches, applications through review, verification, public notice, decision and admission
            notice, admitted service items, and the history of every change. Every subcommand calls the
            running server with an API key (--api-key or METERING_API_KEY); writes need an operator's key
            (filing, the applicant's own provider key) and are recorded under the key's subject.
            """)
        {
            OrganisationCommand(),
            LicenceCommand(),
            ListingCommand(),
            BatchCommand(),
        };
        foreach (Command command in RegistryWorkflowCommands.Create())
        {
            registry.Subcommands.Add(command);
        }

        registry.Subcommands.Add(ItemCommand());
        registry.Subcommands.Add(FalseMaterialsCommand());
        registry.Subcommands.Add(HistoryCommand());
        registry.Subcommands.Add(RegistryPublishCommand.Create());
        return registry;
    }

    private static Command OrganisationCommand()
    {
        var code = RegistryInput.CreditCode("The organisation's 18-character unified social credit code (GB 32100-2015); a Shenzhen one (4403xx), or Shanwei (4415xx) for 深汕特别合作区.");
        var name = RegistryInput.Text("--name", "The registered name, 1 to 200 characters.");
        var legalForm = new Option<string>("--legal-form")
        {
            Description = "enterprise (企业), public-institution (事业单位; files no tax certificate) or branch (分支机构 of an institution registered elsewhere).",
            Required = true,
        };
        legalForm.AcceptOnlyFromAmong("enterprise", "public-institution", "branch");
        var district = RegistryInput.Text("--district", $"The registered district, by key or Chinese name: {string.Join(", ", Districts.Keys)} (for example nanshan or 南山区).");
        var established = RegistryInput.Date("--established", "Date of establishment; an organisation under a year old files a capital verification report instead of an audit report");
        var add = RegistryInput.Subcommand("add", "Register an organisation so that it can stream its metering-log proof and file applications.", code, name, legalForm, district, established);
        RegistryInput.SetAction(add, parse =>
        {
            var organisation = new Organisation
            {
                CreditCode = parse.GetValue(code)!,
                Name = parse.GetValue(name)!,
                LegalForm = parse.GetValue(legalForm) switch
                {
                    "public-institution" => LegalForm.PublicInstitution,
                    "branch" => LegalForm.Branch,
                    _ => LegalForm.Enterprise,
                },
                District = parse.GetValue(district)!,
                EstablishedOn = RegistryInput.Date(parse.GetValue(established)!.Value),
            };
            return async call =>
            {
                Organisation registered = await call.Registry.RegisterOrganisationAsync(new RegisterOrganisationRequest { Organisation = organisation }, call.Options);
                Console.WriteLine($"Registered {registered.CreditCode} {registered.Name} ({RegistryOutput.Name(registered.LegalForm)}, {registered.District} {Districts.NameOf(registered.District)}, established {registered.EstablishedOn}).");
            };
        });

        var shown = new Argument<string>("credit-code") { Description = "The organisation's credit code." };
        var showOutput = OutputOption.Sections("registry org show");
        var show = RegistryInput.Subcommand("show", "Show an organisation: its licences, integrity listings, service items with status and validity, and its applications; "
            + "--output json gives one object: organisation, licences, integrityListings, serviceItems, applications.", shown, showOutput);
        RegistryInput.SetAction(show, parse => async call =>
        {
            string creditCode = parse.GetValue(shown)!;
            Organisation organisation = await call.Registry.GetOrganisationAsync(new GetOrganisationRequest { CreditCode = creditCode }, call.Options);
            RegistryOutput.WriteOrganisation(organisation, await ApplicationsOfAsync(call, creditCode), TimeProvider.System.GetUtcNow(), parse.GetValue(showOutput));
        });

        return new Command("org", "Organisations: register one, or show everything the registry holds about one.") { add, show };
    }

    private static Command LicenceCommand()
    {
        var code = RegistryInput.CreditCode("The holder's credit code.");
        var number = RegistryInput.Text("--number", "The licence number, for example B1-20190001 (1 to 64 characters).");
        var issuer = RegistryInput.Text("--issuer", "The issuing authority, for example 工业和信息化部 (1 to 200 characters).");
        var from = RegistryInput.Date("--from", "Valid from this date, inclusive");
        var until = RegistryInput.Date("--until", "Valid until this date, inclusive");
        var add = RegistryInput.Subcommand("add", "Record an IDC/ISP value-added telecom licence (增值电信业务经营许可证); filing needs one valid on the filing day.", code, number, issuer, from, until);
        RegistryInput.SetAction(add, parse =>
        {
            var licence = new Licence
            {
                CreditCode = parse.GetValue(code)!,
                LicenceNumber = parse.GetValue(number)!,
                Issuer = parse.GetValue(issuer)!,
                ValidFrom = RegistryInput.Date(parse.GetValue(from)!.Value),
                ValidUntil = RegistryInput.Date(parse.GetValue(until)!.Value),
            };
            return async call =>
            {
                Licence added = await call.Registry.AddLicenceAsync(new AddLicenceRequest { Licence = licence }, call.Options);
                Console.WriteLine($"Recorded licence {added.LicenceNumber} of {added.CreditCode} from {added.Issuer}, valid {added.ValidFrom} to {added.ValidUntil}.");
            };
        });
        return new Command("licence", "IDC/ISP licences.") { add };
    }

    private static Command ListingCommand()
    {
        var code = RegistryInput.CreditCode("The listed organisation's credit code.");
        var list = new Option<string>("--list")
        {
            Description = "research_integrity (科研诚信严重失信行为数据库), serious_dishonesty (严重失信主体名单), overdue_acceptance (超期未申请验收名单), "
                + "funding_restricted (restricted from fiscal support) or integrity_anomaly (科研诚信异常名录).",
            Required = true,
        };
        list.AcceptOnlyFromAmong(Names.ListNames);
        var from = RegistryInput.Date("--from", "Listed from this date, inclusive");
        var until = RegistryInput.Date("--until", "Listed until this date, inclusive; leave out for no end", required: false);
        var reason = RegistryInput.Text("--reason", "Why, as the list states it.");
        var add = RegistryInput.Subcommand("add", "Record that an organisation is on an integrity list; while listed it cannot file applications.", code, list, from, until, reason);
        RegistryInput.SetAction(add, parse =>
        {
            var listing = new IntegrityListing
            {
                CreditCode = parse.GetValue(code)!,
                List = parse.GetValue(list)!,
                ListedFrom = RegistryInput.Date(parse.GetValue(from)!.Value),
                ListedUntil = parse.GetValue(until) is { } end ? RegistryInput.Date(end) : "",
                Reason = parse.GetValue(reason)!,
            };
            return async call =>
            {
                IntegrityListing added = await call.Registry.AddIntegrityListingAsync(new AddIntegrityListingRequest { Listing = listing }, call.Options);
                Console.WriteLine($"Listed {added.CreditCode} on {added.List} from {added.ListedFrom}{(added.ListedUntil.Length == 0 ? " with no end" : $" to {added.ListedUntil}")}: {added.Reason}");
            };
        });
        return new Command("listing", "Integrity-list entries.") { add };
    }

    private static Command BatchCommand()
    {
        var rules = new Option<FileInfo>("--rules")
        {
            Description = "The batch and its rules as JSON: batchId, windowOpens, windowCloses, validityEnds, publicNoticeDays, capacityMinimumGflops, "
                + "materialsRequired, auditReportYear, auditReportPriorYearWithReason, capitalVerificationForNewEntities, voucherProgrammeYear and, "
                + "optionally, singleOperatorDecisions and reconsiderationDays. See samples/Registry/batch-2027.json and samples/Registry/README.md.",
            Required = true,
        };
        var reason = RegistryInput.Text("--reason",
            "Why the rules change: required to change the rules of a batch whose filing window has opened (a correction, recorded as a new version with this reason).",
            required: false);
        var putOutput = OutputOption.Create();
        var put = RegistryInput.Subcommand("put",
            "Open an admission batch from a rules file, or change one. Once the batch's filing window has opened its rules change only by a correction with --reason; "
            + "a batch with applications keeps its validity end. A file that states the rules in force changes nothing.",
            rules, reason, putOutput);
        RegistryInput.SetAction(put, parse =>
        {
            AdmissionBatch batch = BatchRulesFile.Read(parse.GetValue(rules)!);
            batch.CorrectionReason = parse.GetValue(reason)!.Trim();
            return async call =>
            {
                AdmissionBatch saved = await call.Registry.PutAdmissionBatchAsync(batch, call.Options);
                OutputFormat format = parse.GetValue(putOutput);
                (format == OutputFormat.Table ? Console.Out : Console.Error).WriteLine($"Saved batch {saved.BatchId}, rules version {saved.RulesVersion}.");
                RegistryOutput.WriteBatches([saved], format);
            };
        });

        var listOutput = OutputOption.Create();
        var list = RegistryInput.Subcommand("list", "List the admission batches by window start, with the version of their rules in force.", listOutput);
        RegistryInput.SetAction(list, parse => async call =>
            RegistryOutput.WriteBatches((await call.Registry.ListAdmissionBatchesAsync(new ListAdmissionBatchesRequest(), call.Options)).Batches, parse.GetValue(listOutput)));
        return new Command("batch", "Admission batches and their rules: when applications are taken, until when admission is valid, and what a filing must meet.") { put, list };
    }

    private static Command ItemCommand()
    {
        var item = new Command("item", "Admitted service items: suspend, reinstate, withdraw or revoke one, from now.");
        foreach (var (action, description) in new[]
        {
            (ServiceItemAction.Suspend, "Suspend an active service item from now; usage during the suspension is refused. Needs --reasons."),
            (ServiceItemAction.Reinstate, "Lift a suspension from now."),
            (ServiceItemAction.Withdraw, "Record that the provider leaves the item voluntarily, from now."),
            (ServiceItemAction.Revoke, "Revoke the item for a violation, from now. Needs --reasons."),
        })
        {
            var code = RegistryInput.CreditCode("The provider's credit code.");
            var serviceItem = RegistryInput.Text("--item", "The admitted service item, for example gpu-training.");
            var reasons = RegistryInput.Text("--reasons", "Why; required to suspend or revoke.", required: false);
            var output = OutputOption.Create();
            var command = RegistryInput.Subcommand(RegistryOutput.Name(action).ToLowerInvariant(), description, code, serviceItem, reasons, output);
            RegistryInput.SetAction(command, parse =>
            {
                var request = new ChangeServiceItemStatusRequest
                {
                    CreditCode = parse.GetValue(code)!,
                    ServiceItem = parse.GetValue(serviceItem)!,
                    Action = action,
                    Reasons = parse.GetValue(reasons)!,
                };
                return async call => RegistryOutput.WriteServiceItem(await call.Registry.ChangeServiceItemStatusAsync(request, call.Options), parse.GetValue(output));
            });
            item.Subcommands.Add(command);
        }

        return item;
    }

    private static Command FalseMaterialsCommand()
    {
        var code = RegistryInput.CreditCode("The organisation's credit code.");
        var reasons = RegistryInput.Text("--reasons", "What was found false.");
        var output = OutputOption.Sections("registry false-materials");
        var command = RegistryInput.Subcommand("false-materials",
            "Record that an organisation filed false materials: its pending applications are rejected, its admitted items revoked, and it goes on the integrity_anomaly list from today.",
            code, reasons, output);
        RegistryInput.SetAction(command, parse =>
        {
            var request = new RecordFalseMaterialsRequest { CreditCode = parse.GetValue(code)!, Reasons = parse.GetValue(reasons)! };
            return async call =>
            {
                Organisation organisation = await call.Registry.RecordFalseMaterialsAsync(request, call.Options);
                IReadOnlyList<Application> applications = await ApplicationsOfAsync(call, request.CreditCode);
                OutputFormat format = parse.GetValue(output);
                TextWriter words = format == OutputFormat.Table ? Console.Out : Console.Error;
                words.WriteLine($"Recorded false materials of {organisation.CreditCode}.");
                words.WriteLine();
                RegistryOutput.WriteOrganisation(organisation, applications, TimeProvider.System.GetUtcNow(), format);
            };
        });
        return command;
    }

    private static Command HistoryCommand()
    {
        var code = RegistryInput.CreditCode("Only changes to this organisation's entries; leave out for all (batches belong to no organisation).", required: false);
        var limit = RegistryInput.Limit("changes");
        var json = new Option<bool>("--json") { Description = "Show each change's entity before and after as whole JSON instead of a one-line summary." };
        var output = OutputOption.Create();
        var command = RegistryInput.Subcommand("history", "The registry's change history, newest first: who changed what, when, and how.", code, limit, json, output);
        RegistryInput.SetAction(command, parse =>
        {
            var request = new GetHistoryRequest { CreditCode = parse.GetValue(code)!, Limit = (uint)parse.GetValue(limit) };
            return async call => RegistryOutput.WriteHistory((await call.Registry.GetHistoryAsync(request, call.Options)).Entries, parse.GetValue(json), parse.GetValue(output));
        });
        return command;
    }

    /// <summary>An organisation's applications, as many as one call lists, newest first.</summary>
    private static async Task<IReadOnlyList<Application>> ApplicationsOfAsync(RegistryCall call, string creditCode) =>
        (await call.Registry.ListApplicationsAsync(new ListApplicationsRequest { CreditCode = creditCode, Limit = RegistryInput.ListLimitMax }, call.Options)).Applications;
}
