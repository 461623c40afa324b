using System.CommandLine;
using System.Globalization;
using Google.Protobuf;
using Metering.Engine.Catalog;
using Metering.Engine.Registry;
using Metering.Protocol.V1;
using VerifierPart = Metering.Protocol.V1.VerifierPart;
using Application = Metering.Protocol.V1.Application;

namespace Metering.Cli.Commands;

/// <summary>
/// The admission workflow under `metering registry`: apply → review → verify → notice open
/// (objection add) → decide → notice issue, and the commands that read applications. Each stage
/// command prints the application's new state and its stage table.
/// </summary>
internal static class RegistryWorkflowCommands
{
    /// <summary>An application file is a few kilobytes; anything past this is not one.</summary>
    public const long ApplicationFileBytesMax = 1024 * 1024;

    public static IEnumerable<Command> Create() =>
    [
        Apply(),
        Review(),
        Verify(),
        Notice(),
        Objection(),
        Decide(),
        Approve(),
        Reconsider(),
        ListApplications(),
        ShowApplication(),
    ];

    private static Command Apply()
    {
        var file = new Option<FileInfo>("--file")
        {
            Description = "The application as JSON: the FileApplicationRequest fields of registry.proto in the proto3 JSON mapping "
                + "(batchId, creditCode, serviceItem, materials, financialReportKind, auditReportYear, capacity, serviceContent, serviceStandards, fees, "
                + "meteringProofStream, ...). See samples/Registry/application.json.",
            Required = true,
        };
        var renews = new Option<long?>("--renews")
        {
            Description = "Renew this admitted application of the same organisation and service item in a later batch (renewsApplicationId in the file): "
                + "admitted before the old admission ends, the renewal starts exactly at its end, so ingest sees no gap.",
        };
        var output = ApplicationOutput("registry apply");
        var command = RegistryInput.Subcommand("apply",
            "File an application for one service item from a JSON file. Applicants file for themselves (自主申报): run it with the provider key of the applicant "
            + "the file names (creditCode); any other key is refused. Every filing rule is checked and a broken one refuses the filing.",
            file, renews, output);
        RegistryInput.SetAction(command, parse =>
        {
            FileApplicationRequest request = ReadApplication(parse.GetValue(file)!);
            if (parse.GetValue(renews) is long renewed)
            {
                if (renewed <= 0)
                {
                    throw new UsageException($"--renews {renewed} is not an application id");
                }

                if (request.RenewsApplicationId != 0 && request.RenewsApplicationId != renewed)
                {
                    throw new UsageException($"--renews {renewed} disagrees with renewsApplicationId {request.RenewsApplicationId} in the file; give one");
                }

                request.RenewsApplicationId = renewed;
            }

            return async call =>
            {
                Application filed = await call.Registry.FileApplicationAsync(request, call.Options);
                OutputFormat format = parse.GetValue(output);
                // Standard output stays one JSON document for programs; the sentence goes to standard error then.
                TextWriter words = format == OutputFormat.Table ? Console.Out : Console.Error;
                words.WriteLine($"Filed application {filed.ApplicationId} of {filed.CreditCode} for '{filed.ServiceItem}' in batch {filed.BatchId}.");
                words.WriteLine();
                RegistryOutput.WriteApplication(filed, format);
            };
        });
        return command;
    }

    /// <summary>Reads and parses the application file; what is wrong with it is a usage error naming the file.</summary>
    internal static FileApplicationRequest ReadApplication(FileInfo path)
    {
        if (!path.Exists)
        {
            throw new UsageException($"no application file at {path.FullName}");
        }

        if (path.Length > ApplicationFileBytesMax)
        {
            throw new UsageException($"{path.Name} is {path.Length:N0} bytes; an application file is at most {ApplicationFileBytesMax:N0}");
        }

        FileApplicationRequest request;
        try
        {
            request = JsonParser.Default.Parse<FileApplicationRequest>(File.ReadAllText(path.FullName));
        }
        catch (Exception e) when (e is InvalidJsonException or InvalidProtocolBufferException or FormatException)
        {
            throw new UsageException($"{path.Name} is not a valid application: {e.Message}");
        }
        catch (IOException e)
        {
            throw new UsageException($"cannot read {path.FullName}: {e.Message}");
        }

        if (request.CreditCode.Length == 0)
        {
            throw new UsageException($"{path.Name} does not name the applicant: creditCode is missing");
        }

        return request;
    }

    private static Command Review()
    {
        var id = RegistryInput.ApplicationId();
        var pass = new Option<bool>("--pass") { Description = "The materials are complete and in order: the application goes on to verification." };
        var reject = new Option<bool>("--reject") { Description = "Reject the application at material review (needs --reasons)." };
        var reasons = Reasons("Why; required with --reject.");
        var output = ApplicationOutput("registry review");
        var command = RegistryInput.Subcommand("review",
            "Electronic material review of an application awaiting it. An application filed through an intermediary is rejected whatever is asked.",
            id, pass, reject, reasons, output);
        RegistryInput.ExactlyOne(command, pass, reject);
        RegistryInput.SetAction(command, parse =>
        {
            var decision = new StageDecision { ApplicationId = parse.GetValue(id), Pass = parse.GetValue(pass), Reasons = parse.GetValue(reasons)! };
            return async call => RegistryOutput.WriteApplication(await call.Registry.ReviewMaterialsAsync(decision, call.Options), parse.GetValue(output));
        });
        return command;
    }

    private static Command Verify()
    {
        var id = RegistryInput.ApplicationId();
        var pflops = RegistryInput.Pflops("--verified-pflops", "The verified FP16 dense capacity in PFLOPS, for example 316.608 (at most six decimals).");
        var gflops = new Option<long?>("--verified-gflops") { Description = "The verified FP16 dense capacity in GFLOPS, for example 316608000; instead of --verified-pflops." };
        gflops.Validators.Add(result =>
        {
            if (result.GetValueOrDefault<long?>() < 0)
            {
                result.AddError("--verified-gflops cannot be negative.");
            }
        });
        var parts = new Option<string[]>("--verifier-part")
        {
            Description = "The commissioned verifier's figure for one device model the probe cannot reach, as MODEL:DEVICES:GFLOPS "
                + "(for example ASCEND-910B:1000:300000000: 1,000 devices confirmed, 300 PFLOPS dense FP16), integers only; repeat it per model. "
                + "Added to the provider's fleet validation in force, if any; not with --verified-pflops or --verified-gflops.",
        };
        var pass = new Option<bool>("--pass") { Description = "Verification confirms the capacity; it must reach the batch's capacity bar (`registry batch list`)." };
        var reject = new Option<bool>("--reject") { Description = "Reject the application at verification (needs --reasons)." };
        var reasons = Reasons("The verifier's report or why it failed; required with --reject.");
        var output = ApplicationOutput("registry verify");
        var command = RegistryInput.Subcommand("verify", "Record the commissioned verification of an application awaiting it, with the verified capacity: "
            + "the commissioned verifier's total, or the fleet validation in force plus the commissioned verifier's figure per model (--verifier-part). "
            + "A figure typed here is proposed, and takes effect when a second operator approves it (`registry approve`), unless the batch allows single-operator decisions.",
            id, pflops, gflops, parts, pass, reject, reasons, output);
        RegistryInput.ExactlyOne(command, pass, reject);
        command.Validators.Add(result =>
        {
            bool hasPflops = result.GetResult(pflops) is not null;
            bool hasGflops = result.GetResult(gflops) is not null;
            bool hasParts = result.GetResult(parts) is not null;
            if (hasPflops && hasGflops)
            {
                result.AddError("give the verified capacity once: --verified-pflops or --verified-gflops, not both.");
            }
            else if (hasParts && (hasPflops || hasGflops))
            {
                result.AddError("--verifier-part gives the commissioned verifier's figure per model, added to the fleet validation; it does not go with a total (--verified-pflops or --verified-gflops).");
            }
            else if (!hasPflops && !hasGflops && !hasParts && result.GetValue(pass))
            {
                result.AddError("--pass needs the verified capacity: --verified-pflops, --verified-gflops or --verifier-part.");
            }
        });
        RegistryInput.SetAction(command, parse =>
        {
            var decision = new VerificationDecision
            {
                ApplicationId = parse.GetValue(id),
                Pass = parse.GetValue(pass),
                Reasons = parse.GetValue(reasons)!,
                VerifiedFp16Gflops = parse.GetValue(pflops) ?? parse.GetValue(gflops) ?? 0,
            };
            decision.VerifierParts.Add((parse.GetValue(parts) ?? []).Select(ParseVerifierPart));
            return async call => RegistryOutput.WriteApplication(await call.Registry.RecordVerificationAsync(decision, call.Options), parse.GetValue(output));
        });
        return command;
    }

    /// <summary>`MODEL:DEVICES:GFLOPS`, integers only; the server checks the model against the catalog and the figure against its peak.</summary>
    internal static VerifierPart ParseVerifierPart(string text)
    {
        string[] fields = text.Split(':');
        string usage = $"--verifier-part '{text}': expected MODEL:DEVICES:GFLOPS with whole numbers, for example ASCEND-910B:1000:300000000";
        if (fields.Length != 3 || fields[0].Trim().Length == 0)
        {
            throw new UsageException(usage);
        }

        if (!uint.TryParse(fields[1], NumberStyles.None, CultureInfo.InvariantCulture, out uint devices) || devices == 0)
        {
            throw new UsageException($"{usage}; DEVICES '{fields[1]}' is not a whole number of devices above 0");
        }

        if (!long.TryParse(fields[2], NumberStyles.None, CultureInfo.InvariantCulture, out long gflops) || gflops == 0)
        {
            throw new UsageException($"{usage}; GFLOPS '{fields[2]}' is not a whole number of GFLOPS above 0 (give GFLOPS, not PFLOPS: 1 PFLOPS = 1000000 GFLOPS)");
        }

        return new VerifierPart { DeviceModel = fields[0].Trim(), Devices = devices, DenseFp16Gflops = gflops };
    }

    private static Command Notice()
    {
        var openId = RegistryInput.ApplicationId();
        var reject = new Option<bool>("--reject") { Description = "Reject the application after consultation instead of opening the notice (needs --reasons)." };
        var openReasons = Reasons("Why; required with --reject.");
        var openOutput = ApplicationOutput("registry notice open");
        var open = RegistryInput.Subcommand("open", "Open consultation and public notice of a verified application for the batch's number of days.", openId, reject, openReasons, openOutput);
        RegistryInput.SetAction(open, parse =>
        {
            var decision = new StageDecision { ApplicationId = parse.GetValue(openId), Pass = !parse.GetValue(reject), Reasons = parse.GetValue(openReasons)! };
            return async call => RegistryOutput.WriteApplication(await call.Registry.OpenPublicNoticeAsync(decision, call.Options), parse.GetValue(openOutput));
        });

        var issueId = RegistryInput.ApplicationId();
        var number = RegistryInput.Text("--number", "The admission notice number, unique, 1 to 64 characters, for example 深科创训力入库〔2025〕1号.");
        var issueOutput = ApplicationOutput("registry notice issue");
        var issue = RegistryInput.Subcommand("issue", "Issue the admission notice of a decided application: its service item is admitted from the decision until the batch's validity end.",
            issueId, number, issueOutput);
        RegistryInput.SetAction(issue, parse =>
        {
            var request = new IssueAdmissionNoticeRequest { ApplicationId = parse.GetValue(issueId), NoticeNumber = parse.GetValue(number)! };
            return async call => RegistryOutput.WriteApplication(await call.Registry.IssueAdmissionNoticeAsync(request, call.Options), parse.GetValue(issueOutput));
        });
        return new Command("notice", "Public notice (open) and the admission notice (issue).") { open, issue };
    }

    private static Command Objection()
    {
        var id = RegistryInput.ApplicationId();
        var objector = RegistryInput.Text("--objector", "Who objected, as recorded (1 to 200 characters).");
        var content = RegistryInput.Text("--content", "What the objection says.");
        var output = ApplicationOutput("registry objection add");
        var add = RegistryInput.Subcommand("add", "Record an objection raised during public notice; admitting over it then needs reasons that answer it.", id, objector, content, output);
        RegistryInput.SetAction(add, parse =>
        {
            var request = new RecordObjectionRequest { ApplicationId = parse.GetValue(id), Objector = parse.GetValue(objector)!, Content = parse.GetValue(content)! };
            return async call => RegistryOutput.WriteApplication(await call.Registry.RecordObjectionAsync(request, call.Options), parse.GetValue(output));
        });
        return new Command("objection", "Objections raised during public notice.") { add };
    }

    private static Command Decide()
    {
        var id = RegistryInput.ApplicationId();
        var admit = new Option<bool>("--admit") { Description = "Admit: the application goes on to the admission notice (needs --reasons if objections were recorded)." };
        var reject = new Option<bool>("--reject") { Description = "Reject the application (needs --reasons)." };
        var reasons = Reasons("Why; required with --reject, and to admit over recorded objections.");
        var output = ApplicationOutput("registry decide");
        var command = RegistryInput.Subcommand("decide",
            "Decide admission of an application whose public notice has ended. Unless the batch allows single-operator decisions, this proposes the decision, "
            + "which takes effect when a second operator approves it (`registry approve`).", id, admit, reject, reasons, output);
        RegistryInput.ExactlyOne(command, admit, reject);
        RegistryInput.SetAction(command, parse =>
        {
            var decision = new StageDecision { ApplicationId = parse.GetValue(id), Pass = parse.GetValue(admit), Reasons = parse.GetValue(reasons)! };
            return async call => RegistryOutput.WriteApplication(await call.Registry.DecideAdmissionAsync(decision, call.Options), parse.GetValue(output));
        });
        return command;
    }

    private static Command Approve()
    {
        var id = RegistryInput.ApplicationId();
        var proposal = new Option<uint>("--proposal")
        {
            Description = "The proposal approved, as the application shows it under 'awaiting approval'.",
            Required = true,
        };
        var output = ApplicationOutput("registry approve");
        var command = RegistryInput.Subcommand("approve",
            "Approve the pending proposal of an admission decision, a typed verification figure or an upheld reconsideration of a refusal at the decision (four-eyes). Run it with another operator's key than the proposer's (a different subject); "
            + "the stage then takes effect as proposed, checked again as of now.", id, proposal, output);
        RegistryInput.SetAction(command, parse =>
        {
            var request = new ApproveProposalRequest { ApplicationId = parse.GetValue(id), ProposalNo = parse.GetValue(proposal) };
            return async call => RegistryOutput.WriteApplication(await call.Registry.ApproveProposalAsync(request, call.Options), parse.GetValue(output));
        });
        return command;
    }

    private static Command Reconsider()
    {
        var requestId = RegistryInput.ApplicationId();
        var grounds = RegistryInput.Text("--grounds", "Why the refusal should be reconsidered, 1 to 4000 characters.");
        var requestOutput = OutputOption.Create();
        var request = RegistryInput.Subcommand("request",
            "Ask for reconsideration (复核) of your application's refusal, with your grounds. Run it with the applicant's provider key, within the batch's "
            + "reconsideration days of the refusal (15 unless the batch says otherwise). Each refusal is reconsidered once; the application then awaits an operator.",
            requestId, grounds, requestOutput);
        RegistryInput.SetAction(request, parse =>
        {
            var call = new RequestReconsiderationRequest { ApplicationId = parse.GetValue(requestId), Grounds = parse.GetValue(grounds)! };
            return async registry => RegistryOutput.WriteReconsideration(await registry.Registry.RequestReconsiderationAsync(call, registry.Options), parse.GetValue(requestOutput));
        });

        var decideId = RegistryInput.ApplicationId();
        var uphold = new Option<bool>("--uphold")
        {
            Description = "Set the refusal aside: the application goes back to the stage it was refused at, or, refused at the decision, on to the admission notice. "
                + "Upholding a refusal at the decision admits, so unless the batch allows single-operator decisions it is proposed, and a second operator approves it (`registry approve`).",
        };
        var dismiss = new Option<bool>("--dismiss") { Description = "Let the refusal stand: the application stays rejected." };
        var reason = RegistryInput.Text("--reason", "Why, 1 to 4000 characters; recorded in the application's stages and the registry history.");
        var decideOutput = OutputOption.Create();
        var decide = RegistryInput.Subcommand("decide", "Decide a pending reconsideration (operator), with the reason.", decideId, uphold, dismiss, reason, decideOutput);
        RegistryInput.ExactlyOne(decide, uphold, dismiss);
        RegistryInput.SetAction(decide, parse =>
        {
            var call = new DecideReconsiderationRequest
            {
                ApplicationId = parse.GetValue(decideId),
                Verdict = parse.GetValue(uphold) ? ReconsiderationVerdict.ReconsiderationUphold : ReconsiderationVerdict.ReconsiderationDismiss,
                Reasons = parse.GetValue(reason)!,
            };
            return async registry => RegistryOutput.WriteReconsideration(await registry.Registry.DecideReconsiderationAsync(call, registry.Options), parse.GetValue(decideOutput));
        });
        return new Command("reconsider", "Reconsideration (复核) of a refusal: the applicant requests it, an operator decides it.") { request, decide };
    }

    private static Command ListApplications()
    {
        var code = RegistryInput.CreditCode("Only this organisation's applications.", required: false);
        var state = RegistryInput.State();
        var limit = RegistryInput.Limit("applications");
        var output = OutputOption.Create();
        var command = RegistryInput.Subcommand("applications", "List applications, newest first.", code, state, limit, output);
        RegistryInput.SetAction(command, parse =>
        {
            var request = new ListApplicationsRequest { CreditCode = parse.GetValue(code)!, State = parse.GetValue(state), Limit = (uint)parse.GetValue(limit) };
            OutputFormat format = parse.GetValue(output);
            return async call => RegistryOutput.WriteApplications((await call.Registry.ListApplicationsAsync(request, call.Options)).Applications, format);
        });
        return command;
    }

    private static Command ShowApplication()
    {
        var id = RegistryInput.ApplicationId();
        var output = ApplicationOutput("registry application");
        var command = RegistryInput.Subcommand("application",
            "Show an application in full: materials (with SHA-256 prefixes), declared capacity, fee schedule and every stage; "
            + "--output json gives one object: application, materials (whole SHA-256), capacity, verificationParts, fees, stages.", id, output);
        RegistryInput.SetAction(command, parse =>
        {
            var request = new GetApplicationRequest { ApplicationId = parse.GetValue(id) };
            return async call => RegistryOutput.WriteApplicationDetail(await call.Registry.GetApplicationAsync(request, call.Options), DeviceCatalog.LoadEmbedded(), parse.GetValue(output));
        });
        return command;
    }

    /// <summary>`--output` of a command that prints an application: table, or json with a member per section; csv is refused.</summary>
    private static Option<OutputFormat> ApplicationOutput(string command) => OutputOption.Sections(command);

    private static Option<string> Reasons(string description) => RegistryInput.Text("--reasons", description, required: false);
}
