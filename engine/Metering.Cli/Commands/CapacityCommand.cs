using System.CommandLine;
using System.Globalization;
using Google.Protobuf;
using Grpc.Core;
using Metering.Client.Capacity;
using Metering.Engine.Capacity;
using Metering.Engine.Registry;
using Metering.Protocol.V1;

namespace Metering.Cli.Commands;

/// <summary>
/// `metering capacity …`: the provider's and the operator's side of CapacityService through a
/// running server: node keys, the inventory (which draws the probe sample), the validation's state
/// and the operator's review of devices the catalog does not know. The nodes themselves run
/// `metering-probe run`, which asks for the challenge and submits the signed report.
/// </summary>
internal static class CapacityCommand
{
    /// <summary>A PEM public key is a few hundred bytes; anything far larger is not one.</summary>
    private const long PublicKeyFileBytesMax = 64 * 1024;

    public static Command Create() => new("capacity", """
        Proving a provider's compute capacity with the probe (capacity.proto): register each node's
        public key, declare the inventory (the server then draws the nodes that must run the probe),
        run `metering-probe run` on each sampled node, and follow the validation here. A provider's
        key acts for its own credit code only; operators and auditors read every provider's
        validations, and only operators review devices the catalog does not know. Bad input exits
        with 2 before anything is sent; a refusal prints the status and reason and exits with 4.
        """)
    {
        KeyCommand(), InventoryCommand(), ChallengesCommand(), ValidationCommand(), ReviewCommand(),
    };

    private static Option<string> Code(string description) => new("--code") { Description = description, Required = true };

    private static CapacityService.CapacityServiceClient Client(ServerCall call) => new(call.Channel);

    private static Command KeyCommand()
    {
        var code = Code("The provider's credit code (the key's holder).");
        var node = new Option<string>("--node") { Description = "The node, as the inventory names it: 1 to 64 characters from A-Z a-z 0-9 . _ : -.", Required = true };
        var publicKey = new Option<FileInfo>("--public-key")
        {
            Description = "The node's ECDSA P-256 public key as PEM, as `metering-probe keygen --out node.pem` prints it.",
            Required = true,
        };
        var deviceUuids = new Option<string[]>("--device-uuid")
        {
            Description = $"Required, repeated for each device of the node (1 to {NodeKeyService.DeviceUuidsMax}): a device's UUID, on NVIDIA as `nvidia-smi -L` prints it (GPU-…), "
                + "on the probe's CPU accelerator the --device-uuid that `metering-probe run` is given. A report signed with the key must name exactly these devices.",
            Arity = ArgumentArity.OneOrMore,
            AllowMultipleArgumentsPerToken = false,
        };
        Command register = ClientCommand.Create("register",
            "Register a node's public key with its devices' UUIDs (provider). The key signs nothing until an operator approves it "
            + "(`capacity key approve` with the version and fingerprint printed here, checked with the provider out of band). Registering again for "
            + "the same node rotates its key: the approved key stays in force until the new one is approved.",
            [code, node, publicKey, deviceUuids], async (parse, call, ct) =>
            {
                string[] uuids = CheckDeviceUuids(parse.GetValue(deviceUuids) ?? []);
                string pem = ReadPublicKey(parse.GetValue(publicKey)!);
                NodeKey registered = await Client(call).RegisterNodeKeyAsync(
                    new RegisterNodeKeyRequest { CreditCode = parse.GetValue(code)!, NodeId = parse.GetValue(node)!, PublicKeyPem = pem, DeviceUuids = { uuids } },
                    call.Headers, cancellationToken: ct);
                Console.WriteLine($"Registered key version {registered.KeyVersion} of node {registered.NodeId} for {registered.CreditCode}: SHA-256 {registered.KeySha256}.");
                Console.WriteLine($"Devices: {string.Join(", ", registered.DeviceUuids)}.");
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"It signs nothing until an operator approves it: metering capacity key approve --code {registered.CreditCode} --node {registered.NodeId} --version {registered.KeyVersion} --fingerprint {registered.KeySha256} --reason \"...\""));
                return 0;
            });

        var approveCode = Code("The provider whose node key is approved.");
        var approveNode = new Option<string>("--node") { Description = "The node.", Required = true };
        var version = new Option<uint>("--version") { Description = "The key version to approve: the node's latest, as `capacity key register` or `capacity key list --pending` shows it.", Required = true };
        var fingerprint = new Option<string>("--fingerprint")
        {
            Description = "The key's SHA-256 fingerprint (64 hex digits) as checked with the provider; the server refuses the approval if it is not the registered key's.",
            Required = true,
        };
        var reason = new Option<string>("--reason", "--reasons") { Description = "Why the key is approved, for example how the fingerprint was checked; recorded with the approval.", Required = true };
        var approveOutput = OutputOption("the NodeKey");
        Command approve = ClientCommand.Create("approve",
            "Approve a node's latest registered key (operator): from then on that key, and only it, signs the node's attestations, and its reports must name "
            + "the device UUIDs registered with it. Who and when are recorded; an approval is never changed.",
            [approveCode, approveNode, version, fingerprint, reason, approveOutput], async (parse, call, ct) =>
            {
                string sha256 = parse.GetValue(fingerprint)!.Trim();
                if (sha256.Length != 64 || !sha256.All(char.IsAsciiHexDigit))
                {
                    throw new UsageException($"--fingerprint '{sha256}' is not a SHA-256 fingerprint: 64 hex digits, as `capacity key register` printed it");
                }

                if (string.IsNullOrWhiteSpace(parse.GetValue(reason)))
                {
                    throw new UsageException("--reason needs text: why the key is approved, for example how its fingerprint was checked");
                }

                NodeKey approved = await Client(call).ApproveNodeKeyAsync(new ApproveNodeKeyRequest
                {
                    CreditCode = parse.GetValue(approveCode)!,
                    NodeId = parse.GetValue(approveNode)!,
                    KeyVersion = parse.GetValue(version),
                    KeySha256 = sha256.ToLowerInvariant(),
                    Reasons = parse.GetValue(reason)!,
                }, call.Headers, cancellationToken: ct);
                OutputFormat approveFormat = parse.GetValue(approveOutput);
                if (approveFormat == OutputFormat.Json)
                {
                    Console.Write(Json(approved));
                    return 0;
                }

                if (approveFormat == OutputFormat.Csv)
                {
                    KeyRows([approved]).Write(approveFormat, Console.Out);
                    return 0;
                }

                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"Approved key version {approved.KeyVersion} of node {approved.NodeId} for {approved.CreditCode} (SHA-256 {approved.KeySha256}), by {approved.ApprovedBy} at {LocalTime.Minutes(approved.ApprovedUnixMs)} Asia/Shanghai."));
                Console.WriteLine($"Devices: {string.Join(", ", approved.DeviceUuids)}.");
                return 0;
            });

        var listCode = Code("The provider whose node keys are listed (a provider may list only its own).");
        var pending = new Option<bool>("--pending") { Description = "Only the nodes whose latest key awaits approval, and only that key: what `capacity key approve` takes." };
        var listOutput = OutputOption("the NodeKeyList");
        Command list = ClientCommand.Create("list",
            "List a provider's node keys (operator, auditor, or the provider for itself), node by node: each node's latest key and, where that is not approved, "
            + "its key in force too, with the device UUIDs and who approved each and when.",
            [listCode, pending, listOutput], async (parse, call, ct) =>
            {
                var all = new NodeKeyList();
                string after = "";
                do
                {
                    NodeKeyList page = await Client(call).ListNodeKeysAsync(
                        new ListNodeKeysRequest { CreditCode = parse.GetValue(listCode)!, PendingOnly = parse.GetValue(pending), AfterNodeId = after },
                        call.Headers, cancellationToken: ct);
                    all.Keys.Add(page.Keys);
                    after = page.NextAfterNodeId;
                }
                while (after.Length > 0);

                OutputFormat format = parse.GetValue(listOutput);
                if (format == OutputFormat.Json)
                {
                    Console.Write(Json(all));
                    return 0;
                }

                KeyRows(all.Keys).Write(format, Console.Out);
                return 0;
            });
        return new Command("key", "Node keys: each node signs its probe reports with its own ECDSA P-256 key, bound to its devices' UUIDs and approved by an operator.")
        {
            register, approve, list,
        };
    }

    /// <summary>The proto's rules for a registration's device UUIDs, checked before anything is sent.</summary>
    private static string[] CheckDeviceUuids(string[] uuids)
    {
        if (uuids.Length == 0)
        {
            throw new UsageException("give the node's device UUIDs: --device-uuid UUID for each device (on NVIDIA as `nvidia-smi -L` prints them)");
        }

        if (uuids.Length > NodeKeyService.DeviceUuidsMax)
        {
            throw new UsageException($"a node has at most {NodeKeyService.DeviceUuidsMax} devices (what one probe report holds), not {uuids.Length}");
        }

        foreach (string uuid in uuids)
        {
            if (uuid.Length is 0 or > NodeKeyService.DeviceUuidLengthMax || !uuid.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or ':' or '/' or '-'))
            {
                throw new UsageException($"--device-uuid '{uuid}' is not 1 to {NodeKeyService.DeviceUuidLengthMax} characters from A-Z a-z 0-9 . _ : / -");
            }
        }

        if (uuids.Distinct(StringComparer.Ordinal).Count() != uuids.Length)
        {
            throw new UsageException("--device-uuid names a device twice; each device of the node once");
        }

        return uuids;
    }

    private static Command InventoryCommand()
    {
        var code = Code("The provider's credit code (the key's holder).");
        var file = new Option<FileInfo>("--file")
        {
            Description = "The inventory as JSON: {\"nodes\": [{\"nodeId\", \"site\", \"deviceModel\", \"deviceCount\"}, ...]}, "
                + "deviceModel a catalog key such as H100-SXM. See samples/Capacity/inventory.json and samples/Capacity/README.md.",
            Required = true,
        };
        var output = OutputOption();
        Command declare = ClientCommand.Create("declare",
            "Declare the provider's inventory (provider): a new version that replaces the previous one. The server draws the sample of nodes that must run "
            + "`metering-probe run` and opens a fleet validation; one still collecting reports is superseded.",
            [code, file, output], async (parse, call, ct) =>
            {
                IReadOnlyList<DeclaredNode> nodes = InventoryFile.Read(parse.GetValue(file)!);
                FleetValidation validation = await Client(call).DeclareInventoryAsync(
                    new DeclareInventoryRequest { CreditCode = parse.GetValue(code)!, Nodes = { nodes } }, call.Headers, cancellationToken: ct);
                Write(validation, parse.GetValue(output));
                return 0;
            });
        return new Command("inventory", "The provider's declared nodes, devices and sites.") { declare };
    }

    private static Command ChallengesCommand()
    {
        var code = Code("The provider's credit code (the key's holder).");
        var output = OutputOption("the ChallengeSet");
        Command start = ClientCommand.Create("start",
            "Start the challenges of the open validation (provider): at one instant of the server's clock every sampled node gets its nonce, its work and its "
            + "deadline, and the sample is shown. The first `metering-probe run` of any node does the same; calling again shows the same challenges.",
            [code, output], async (parse, call, ct) =>
            {
                ChallengeSet set = await Client(call).StartChallengesAsync(new StartChallengesRequest { CreditCode = parse.GetValue(code)! }, call.Headers, cancellationToken: ct);
                OutputFormat format = parse.GetValue(output);
                if (format == OutputFormat.Json)
                {
                    Console.Write(Json(set));
                    return 0;
                }

                if (format == OutputFormat.Csv)
                {
                    ChallengeRows(set).Write(format, Console.Out);
                    return 0;
                }

                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"Challenges of validation {set.ValidationId} {(set.StartedNow ? "started now" : "already started")}, issued {LocalTime.Minutes(set.IssuedUnixMs)} Asia/Shanghai; each deadline includes {set.AllowanceMs / 1000.0:0.0} s for network and start-up. Run `metering-probe run` on every node below now."));
                Console.WriteLine();
                ChallengeRows(set).WriteTable(Console.Out);
                return 0;
            });
        return new Command("challenges", "The server-timed challenges of the open validation: every sampled node at one instant.") { start };
    }

    private static Command ValidationCommand()
    {
        var code = Code("The provider's credit code (a provider may read only its own).");
        var id = new Argument<long>("validation-id") { Description = "The validation; leave out for the provider's latest.", DefaultValueFactory = _ => 0 };
        id.Validators.Add(result =>
        {
            if (result.GetValueOrDefault<long>() < 0)
            {
                result.AddError("validation-id must be a positive number.");
            }
        });
        var output = OutputOption();
        Command show = ClientCommand.Create("show",
            "Show a fleet validation: its state, the declared and verified capacity, and each sampled node with its outcome and devices.",
            [id, code, output], async (parse, call, ct) =>
            {
                FleetValidation validation = await Client(call).GetFleetValidationAsync(
                    new GetFleetValidationRequest { CreditCode = parse.GetValue(code)!, ValidationId = parse.GetValue(id) }, call.Headers, cancellationToken: ct);
                Write(validation, parse.GetValue(output));
                return 0;
            });
        return new Command("validation", "Fleet validations: the sample the server drew, and what became of each node.") { show };
    }

    private static Command ReviewCommand()
    {
        var code = Code("The provider whose device is reviewed.");
        var validation = new Option<long>("--validation") { Description = "The validation, as `capacity validation show` lists it.", Required = true };
        var node = new Option<string>("--node") { Description = "The node.", Required = true };
        var device = new Option<uint>("--device") { Description = "The device's index in the node's accepted report.", Required = true };
        var accept = new Option<string>("--accept") { Description = "Accept the device as this catalog model (for example H100-SXM); remembered for later reports of the same device name." };
        var reject = new Option<bool>("--reject") { Description = "Reject the device: its node fails. Needs --reasons." };
        var reasons = new Option<string>("--reasons") { Description = "Why; required to reject.", DefaultValueFactory = _ => "" };
        var output = OutputOption();
        Command review = ClientCommand.Create("review",
            "Decide a device awaiting review (operator): its reported model is not in the catalog, or it reported no rate on its model's reference path.",
            [code, validation, node, device, accept, reject, reasons, output], async (parse, call, ct) =>
            {
                FleetValidation after = await Client(call).ReviewUnknownModelAsync(new ReviewUnknownModelRequest
                {
                    CreditCode = parse.GetValue(code)!,
                    ValidationId = parse.GetValue(validation),
                    NodeId = parse.GetValue(node)!,
                    DeviceIndex = parse.GetValue(device),
                    DeviceModel = parse.GetValue(reject) ? "" : parse.GetValue(accept)!,
                    Reasons = parse.GetValue(reasons)!,
                }, call.Headers, cancellationToken: ct);
                Write(after, parse.GetValue(output));
                return 0;
            });
        review.Validators.Add(result =>
        {
            bool accepting = result.GetResult(accept) is not null;
            bool rejecting = result.GetValue(reject);
            if (accepting == rejecting)
            {
                result.AddError("give either --accept MODEL or --reject, not both and not neither.");
            }
            else if (accepting && string.IsNullOrWhiteSpace(result.GetValue(accept)))
            {
                result.AddError("--accept needs a catalog model, for example H100-SXM.");
            }
            else if (rejecting && string.IsNullOrWhiteSpace(result.GetValue(reasons)))
            {
                result.AddError("--reject needs --reasons: why the device is rejected.");
            }
        });
        return review;
    }

    /// <summary>
    /// The shared `--output`; JSON here stays the message in the protobuf JSON mapping (64-bit
    /// numbers as strings), as it was before the option was shared, so programs that read it keep working.
    /// </summary>
    private static Option<OutputFormat> OutputOption(string message = "the FleetValidation")
    {
        Option<OutputFormat> output = global::Metering.Cli.OutputOption.Create();
        output.Description = $"table (default: a summary and a table), json ({message} in the protobuf JSON mapping) or csv (the table's rows, RFC 4180 with a header row).";
        return output;
    }

    private static Rows KeyRows(IEnumerable<NodeKey> keys)
    {
        var rows = new Rows(("node", "nodeId"), ("version", "keyVersion"), ("fingerprint (SHA-256)", "keySha256"), ("device UUIDs", "deviceUuids"), ("state", "state"),
            ("approved by", "approvedBy"), ("approved (Asia/Shanghai)", "approvedAt"));
        foreach (NodeKey key in keys)
        {
            rows.Add(key.NodeId, Cell.Number(key.KeyVersion, key.KeyVersion.ToString(CultureInfo.InvariantCulture)), key.KeySha256, string.Join(" ", key.DeviceUuids),
                key.Approved ? "approved" : "pending", key.ApprovedBy, key.Approved ? Cell.Instant(key.ApprovedUnixMs) : Cell.Data(null));
        }

        return rows;
    }

    private static Rows ChallengeRows(ChallengeSet set)
    {
        var rows = new Rows(("node", "nodeId"), ("model", "deviceModel"), ("devices", "deviceCount"), ("runs", "runsPerKernel"), ("work", "work"), Column.TableOnly("commit within (s)"),
            Column.DataOnly("deadline"));
        foreach (NodeChallenge challenge in set.Challenges)
        {
            rows.Add(challenge.NodeId, challenge.DeviceModel, Cell.Number(challenge.DeviceCount, challenge.DeviceCount.ToString(CultureInfo.InvariantCulture)),
                Cell.Number(challenge.RunsPerKernel, challenge.RunsPerKernel.ToString(CultureInfo.InvariantCulture)), string.Join(", ", challenge.Work.Select(w => $"{w.Kernel} {w.Items}x{w.Iterations}")),
                ((challenge.DeadlineUnixMs - set.IssuedUnixMs) / 1000.0).ToString("0.0", CultureInfo.InvariantCulture), Cell.Instant(challenge.DeadlineUnixMs));
        }

        return rows;
    }

    private static Rows SampleRows(FleetValidation validation)
    {
        var rows = new Rows(("node", "nodeId"), ("site", "site"), ("model", "deviceModel"), ("devices", "deviceCount"), ("outcome", "outcome"), Column.TableOnly("committed (s)"),
            Column.DataOnly("elapsedMs"), ("attestation", "attestationId"), ("device results", "deviceResults"), Column.DataOnly("detail"));
        foreach (SampledNode node in validation.Sample)
        {
            rows.Add(node.NodeId, node.Site, node.DeviceModel, Cell.Number(node.DeviceCount, node.DeviceCount.ToString(CultureInfo.InvariantCulture)), OutcomeNames.Of(node.Outcome),
                node.CommittedUnixMs == 0 ? "" : (node.ElapsedMs / 1000.0).ToString("0.0", CultureInfo.InvariantCulture),
                node.CommittedUnixMs == 0 ? Cell.Data(null) : Cell.Data(node.ElapsedMs),
                node.AttestationId == 0 ? Cell.Data(null) : Cell.Number(node.AttestationId, node.AttestationId.ToString(CultureInfo.InvariantCulture)),
                string.Join("; ", node.Devices.Select(d => $"{d.DeviceIndex} {OutcomeNames.Of(d.Outcome)}{(d.DeviceModel.Length == 0 ? "" : " " + d.DeviceModel)}")), node.Detail);
        }

        return rows;
    }

    private static string ReadPublicKey(FileInfo file)
    {
        if (!file.Exists)
        {
            throw new UsageException($"no public key file at {file.FullName}");
        }

        if (file.Length > PublicKeyFileBytesMax)
        {
            throw new UsageException($"{file.Name} is {file.Length:N0} bytes, not a PEM public key");
        }

        string pem = File.ReadAllText(file.FullName);
        if (pem.Contains("PRIVATE KEY", StringComparison.Ordinal))
        {
            // The private key never leaves the node; sending it to the server would be the leak.
            throw new UsageException($"{file.Name} holds a private key; give the public key `metering-probe keygen` printed");
        }

        if (!pem.Contains("-----BEGIN PUBLIC KEY-----", StringComparison.Ordinal))
        {
            throw new UsageException($"{file.Name} holds no PEM public key (-----BEGIN PUBLIC KEY-----)");
        }

        return pem;
    }

    private static void Write(FleetValidation validation, OutputFormat output)
    {
        if (output == OutputFormat.Json)
        {
            Console.Write(Json(validation));
            return;
        }

        if (output == OutputFormat.Csv)
        {
            // One row per sampled node; the validation's own figures are in its JSON.
            SampleRows(validation).Write(output, Console.Out);
            return;
        }

        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"Validation {validation.ValidationId} of {validation.CreditCode}, inventory version {validation.InventoryVersion}: {Name(validation.State)}."));
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"Declared: {validation.NodeCount:N0} nodes, {validation.DeviceCount:N0} devices ({string.Join(", ", validation.Models.Select(m => $"{m.DeviceCount:N0} {m.DeviceModel}"))}), {FilingRules.Pflops(validation.DeclaredFp16Gflops)} PFLOPS FP16."));
        if (validation.ChallengesIssuedUnixMs == 0)
        {
            // The server shows the sample only once the challenges start, so that no node can prepare for it.
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"Sample: {validation.SampleSize} of {validation.NodeCount} nodes, shown when the challenges start (`metering capacity challenges start`, or the first `metering-probe run` on any node)."));
        }
        else
        {
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"Sample: {validation.SampleSize} of {validation.NodeCount} nodes (seed {validation.SampleSeedHex}), challenged {LocalTime.Minutes(validation.ChallengesIssuedUnixMs)} Asia/Shanghai; {validation.PassedNodes} passed, {validation.FailedNodes} failed."));
        }
        if (validation.State == FleetValidationState.ValidationComplete)
        {
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"Verified: {FilingRules.Pflops(validation.VerifiedFp16Gflops)} PFLOPS FP16 (at most {validation.NonconformingNodesBound} non-conforming nodes, pass rate at least {validation.PassRateLowerBoundPpm / 10_000m:0.00}%), until {LocalTime.Minutes(validation.ExpiresUnixMs)} Asia/Shanghai; catalog {validation.CatalogVersion}."));
        }

        Console.WriteLine();
        if (validation.Sample.Count == 0)
        {
            return;
        }

        SampleRows(validation).WriteTable(Console.Out);
        foreach (SampledNode node in validation.Sample)
        {
            if (node.Detail.Length > 0)
            {
                Console.WriteLine($"{node.NodeId}: {node.Detail}");
            }

            foreach (DeviceResult device in node.Devices.Where(d => d.Outcome is DeviceOutcome.DeviceAwaitingReview or DeviceOutcome.DeviceUnhealthy or DeviceOutcome.DeviceModelMismatch or DeviceOutcome.DeviceRejected))
            {
                Console.WriteLine($"{node.NodeId} device {device.DeviceIndex} ({device.ReportedName}): {OutcomeNames.Of(device.Outcome)}: {device.Detail}");
            }
        }
    }

    private static string Json(IMessage message) =>
        new JsonFormatter(JsonFormatter.Settings.Default.WithFormatDefaultValues(true).WithIndentation()).Format(message) + "\n";

    private static string Name(FleetValidationState state) => state switch
    {
        FleetValidationState.ValidationCollecting => "collecting reports",
        FleetValidationState.ValidationComplete => "complete",
        FleetValidationState.ValidationSuperseded => "superseded",
        _ => state.ToString(),
    };
}
