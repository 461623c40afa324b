using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Grpc.Core;
using Metering.Engine.Audit;
using Metering.Engine.Identity;
using Metering.Engine.Registry;
using Metering.Engine.Time;
using Metering.Protocol.V1;

namespace Metering.Cli.Commands;

/// <summary>
/// `metering audit ...`: the auditor's side, as a client of a running server's AuditService
/// (proto/metering/v1/audit.proto). The server's role policy decides what the key may ask, and
/// its audit query log records the key's subject before each query runs; nothing here opens the
/// database. Exit codes are <see cref="ExitCodes"/>'s: 3 (verify) a chain is broken; 6 nothing to
/// examine (the provider or period holds no records), so that an auditor's empty answer never
/// reads as "all clean".
/// </summary>
internal static class AuditCommand
{
    /// <summary>`audit verify` found a broken chain.</summary>
    public const int ChainBrokenExit = ExitCodes.EvidenceFailed;

    /// <summary>The provider or period asked about holds no records: nothing was examined.</summary>
    public const int NothingToExamineExit = ExitCodes.NothingToExamine;

    public static Command Create()
    {
        var command = new Command("audit", "Training audit (训力审计) through a running server: verify chains, Merkle roots and proofs, usage queries and exports, anomalies, the HTML report, the query log; receipts and the transparency log's signed heads and proofs.");
        command.Subcommands.Add(Verify());
        command.Subcommands.Add(MerkleRoot());
        command.Subcommands.Add(Proof());
        command.Subcommands.Add(Usage());
        command.Subcommands.Add(Export());
        command.Subcommands.Add(Anomalies());
        command.Subcommands.Add(Report());
        command.Subcommands.Add(Log());
        command.Subcommands.Add(CheckReceiptsCommand.Create());
        foreach (Command log in LogCommands.Create())
        {
            command.Subcommands.Add(log);
        }

        return command;
    }

    /// <summary>A client command (ClientCommand) whose action gets the audit client and the caller's key as headers.</summary>
    private static Command Client(string name, string description, Option[] options,
        Func<ParseResult, AuditService.AuditServiceClient, Metadata, CancellationToken, Task<int>> action) =>
        ClientCommand.Create(name, description, options,
            (parse, call, cancellationToken) => action(parse, new AuditService.AuditServiceClient(call.Channel), call.Headers, cancellationToken));

    private static Option<string> Provider() => new("--provider") { Description = "The provider's 18-character credit code.", Required = true };

    private static Option<string> Day(string name, string description) => new(name) { Description = description + " (yyyy-MM-dd, Asia/Shanghai).", Required = true };

    private static Command Verify()
    {
        var provider = Provider();
        var stream = new Option<string?>("--stream") { Description = "One stream; every stream of the provider when left out." };
        var fromSequence = new Option<ulong>("--from-seq") { Description = "First sequence (a later start begins from the stored hash before it).", DefaultValueFactory = _ => 1 };
        var toSequence = new Option<ulong?>("--to-seq") { Description = "Last sequence; the committed mark when left out." };
        var output = OutputOption.Create();
        return Client("verify", "Re-verify hash chains from the stored rows and show the first broken link with its evidence. Exits 3 when a chain is broken, 6 when there was nothing to verify.",
            [provider, stream, fromSequence, toSequence, output], async (parse, client, headers, ct) =>
            {
                string code = CodeOf(parse, provider);
                var request = new VerifyChainRequest
                {
                    CreditCode = code,
                    StreamId = parse.GetValue(stream) ?? "",
                    FromSequence = parse.GetValue(fromSequence),
                    ToSequence = parse.GetValue(toSequence) ?? 0,
                };
                var clock = Stopwatch.StartNew();
                VerifyChainResponse response = await client.VerifyChainAsync(request, headers, cancellationToken: ct);
                double seconds = Math.Max(clock.Elapsed.TotalSeconds, 1e-3);
                ulong records = response.Streams.Aggregate(0UL, (sum, r) => sum + r.RecordsChecked);
                if (records == 0 && response.Streams.All(r => r.Intact))
                {
                    Console.Error.WriteLine(response.Streams.Count == 0
                        ? $"{code} has no streams: nothing was verified."
                        : $"{code} has no records in the range asked for ({response.Streams.Count} stream(s)): nothing was verified.");
                    return NothingToExamineExit;
                }

                var rows = new Rows(("stream", "streamId"), ("from", "fromSequence"), ("to", "toSequence"), ("checked", "recordsChecked"), Column.TableOnly("chain"), Column.DataOnly("intact"),
                    Column.DataOnly("breakSequence"), Column.DataOnly("breakKind"), Column.DataOnly("breakDetail"), ("head", "computedHead"));
                foreach (StreamVerification r in response.Streams)
                {
                    rows.Add(r.StreamId, Cell.Number(r.FromSequence, N(r.FromSequence)), Cell.Number(r.ToSequence, N(r.ToSequence)), Cell.Number(r.RecordsChecked, N(r.RecordsChecked)),
                        r.Intact ? Labels.Of("intact") : Labels.Format("BROKEN at {0} ({1})", r.Break.Sequence, r.Break.Kind), Cell.Flag(r.Intact, ""),
                        r.Intact ? Cell.Data(null) : Cell.Data(r.Break.Sequence), r.Intact ? Cell.Data(null) : Cell.Data(r.Break.Kind.ToString()), r.Intact ? Cell.Data(null) : Cell.Data(r.Break.Detail),
                        Convert.ToHexStringLower(r.ComputedHead.Span));
                }

                OutputFormat format = parse.GetValue(output);
                if (format != OutputFormat.Table)
                {
                    // The rows carry each break's sequence, kind and detail; the hashes of a break are the table's evidence block.
                    rows.Write(format, Console.Out);
                    return response.Streams.All(r => r.Intact) ? 0 : ChainBrokenExit;
                }

                rows.WriteTable(Console.Out);
                ulong bytes = response.Streams.Aggregate(0UL, (sum, r) => sum + r.CanonicalBytes);
                Console.WriteLine(Labels.Format("{0} stream(s), {1} records, {2:N1} MB of canonical encoding re-hashed in {3:N2} s ({4:N1} MB/s)",
                    response.Streams.Count, N(records), bytes / 1e6, seconds, bytes / 1e6 / seconds));
                foreach (StreamVerification r in response.Streams.Where(r => !r.Intact))
                {
                    Protocol.V1.ChainBreak b = r.Break;
                    Console.WriteLine();
                    Console.WriteLine($"{r.StreamId}: record {b.Sequence}: {b.Detail}");
                    Console.WriteLine($"  previous hash  {b.PreviousHashHex}");
                    Console.WriteLine($"  stored hash    {b.StoredHashHex}");
                    Console.WriteLine($"  computed hash  {b.ComputedHashHex}");
                    Console.WriteLine($"  canonical      {b.CanonicalHex}");
                }

                return response.Streams.All(r => r.Intact) ? 0 : ChainBrokenExit;
            });
    }

    private static Command MerkleRoot()
    {
        var provider = Provider();
        var day = Day("--day", "The day");
        var asOf = AsOf("Only records committed at or before this instant (ISO 8601); committed means when the ingest transaction began.");
        var settled = Settled("The root as settled: the records the settlement of the day counted, the root its provider statement publishes in its merkle_root row.");
        var output = OutputOption.Create();
        return Client("merkle-root", "The provider's Merkle root over one day's records (proto/metering/v1/merkle-proofs.md).",
            [provider, day, asOf, settled, output], async (parse, client, headers, ct) =>
            {
                var request = new GetMerkleRootRequest { CreditCode = CodeOf(parse, provider), Day = DayText(parse, day) };
                (request.AsOfUnixMs, request.Settled) = CutOff(parse, asOf, settled);
                Protocol.V1.MerkleRoot root = await client.GetMerkleRootAsync(request, headers, cancellationToken: ct);
                if (parse.GetValue(output) is not OutputFormat.Table and var format)
                {
                    var rows = new Rows(Column.DataOnly("provider"), Column.DataOnly("day"), Column.DataOnly("settled"), Column.DataOnly("asOf"), Column.DataOnly("leaves"), Column.DataOnly("root"));
                    rows.Add(root.CreditCode, root.Day, Cell.Data(root.Settled), Cell.Instant(root.AsOfUnixMs), Cell.Data(root.LeafCount), Convert.ToHexStringLower(root.Root.Span));
                    rows.WriteOne(format, Console.Out);
                    return 0;
                }

                Console.WriteLine($"provider  {root.CreditCode}");
                Console.WriteLine($"day       {root.Day}");
                Console.WriteLine($"cut-off   {CutOffText(root.Settled, root.AsOfUnixMs)}");
                Console.WriteLine($"leaves    {root.LeafCount}");
                Console.WriteLine($"root      {Convert.ToHexStringLower(root.Root.Span)}");
                return 0;
            });
    }

    private static Command Proof()
    {
        var provider = Provider();
        var stream = new Option<string>("--stream") { Description = "The record's stream.", Required = true };
        var sequence = new Option<ulong>("--sequence") { Description = "The record's sequence number.", Required = true };
        var asOf = AsOf("Prove against the root as of this instant (ISO 8601).");
        var settled = Settled("Prove against the root as settled, the one the provider's statement of the record's day publishes.");
        var output = OutputOption.Sections("audit proof");
        return Client("proof", "The inclusion proof of one record in its day's Merkle root, with shell lines that check it with sha256sum; --output json gives one object: proof (hashes in hex) and steps (side, sibling).",
            [provider, stream, sequence, asOf, settled, output], async (parse, client, headers, ct) =>
            {
                var request = new GetInclusionProofRequest { CreditCode = CodeOf(parse, provider), StreamId = parse.GetValue(stream)!, Sequence = parse.GetValue(sequence) };
                (request.AsOfUnixMs, request.Settled) = CutOff(parse, asOf, settled);
                Protocol.V1.InclusionProof proof = await client.GetInclusionProofAsync(request, headers, cancellationToken: ct);
                if (parse.GetValue(output) == OutputFormat.Json)
                {
                    WriteProofJson(proof);
                    return 0;
                }

                Console.WriteLine($"# {proof.StreamId} #{proof.Sequence}: leaf {proof.LeafIndex} of {proof.LeafCount} on {proof.Day} ({CutOffText(proof.Settled, proof.AsOfUnixMs)}); check with bash and sha256sum:");
                Console.WriteLine("hex2bin() { printf \"$(printf '%s' \"$1\" | sed 's/../\\\\x&/g')\"; }");
                Console.WriteLine("node() { { printf '\\x01'; hex2bin \"$1\"; hex2bin \"$2\"; } | sha256sum | cut -d' ' -f1; }");
                Console.WriteLine($"PREV={Convert.ToHexStringLower(proof.PreviousHash.Span)}");
                Console.WriteLine($"CANONICAL={Convert.ToHexStringLower(proof.Canonical.Span)}");
                Console.WriteLine("C=$( { hex2bin $PREV; hex2bin $CANONICAL; } | sha256sum | cut -d' ' -f1 )" + $"   # = {Convert.ToHexStringLower(proof.ChainHash.Span)}");
                Console.WriteLine("P=$( { printf '\\x00'; hex2bin $C; } | sha256sum | cut -d' ' -f1 )" + $"   # = {Convert.ToHexStringLower(proof.LeafHash.Span)}");
                foreach (Protocol.V1.ProofStep step in proof.Steps)
                {
                    string sibling = Convert.ToHexStringLower(step.Sibling.Span);
                    Console.WriteLine(step.Side == Protocol.V1.ProofSide.Left ? $"P=$(node {sibling} $P)" : $"P=$(node $P {sibling})");
                }

                Console.WriteLine($"echo $P   # = root {Convert.ToHexStringLower(proof.Root.Span)}");
                return 0;
            });
    }

    /// <summary>The proof as data: the record and its hashes in hex, then the steps from the leaf up, each sibling with the side it stands on.</summary>
    private static void WriteProofJson(Protocol.V1.InclusionProof proof)
    {
        var fields = new Rows(Column.DataOnly("provider"), Column.DataOnly("day"), Column.DataOnly("settled"), Column.DataOnly("asOf"), Column.DataOnly("streamId"), Column.DataOnly("sequence"),
            Column.DataOnly("leafIndex"), Column.DataOnly("leafCount"), Column.DataOnly("previousHash"), Column.DataOnly("canonical"), Column.DataOnly("chainHash"),
            Column.DataOnly("leafHash"), Column.DataOnly("root"));
        fields.Add(proof.CreditCode, proof.Day, Cell.Data(proof.Settled), Cell.Instant(proof.AsOfUnixMs), proof.StreamId, Cell.Data(proof.Sequence), Cell.Data(proof.LeafIndex),
            Cell.Data(proof.LeafCount), Convert.ToHexStringLower(proof.PreviousHash.Span), Convert.ToHexStringLower(proof.Canonical.Span), Convert.ToHexStringLower(proof.ChainHash.Span),
            Convert.ToHexStringLower(proof.LeafHash.Span), Convert.ToHexStringLower(proof.Root.Span));
        var steps = new Rows(Column.DataOnly("side"), Column.DataOnly("sibling"));
        foreach (Protocol.V1.ProofStep step in proof.Steps)
        {
            steps.Add(step.Side == Protocol.V1.ProofSide.Left ? "left" : "right", Convert.ToHexStringLower(step.Sibling.Span));
        }

        new Sections().One("proof", fields).Many("steps", steps).WriteJson(Console.Out);
    }

    private static Option<DateTimeOffset?> AsOf(string description) => new("--as-of") { Description = description };

    private static Option<bool> Settled(string description) => new("--settled") { Description = description };

    private static (long AsOfUnixMs, bool Settled) CutOff(ParseResult parse, Option<DateTimeOffset?> asOf, Option<bool> settled) => (parse.GetValue(asOf), parse.GetValue(settled)) switch
    {
        (null, var isSettled) => (0, isSettled),
        ({ } instant, false) => (instant.ToUnixTimeMilliseconds(), false),
        _ => throw new UsageException("--settled and --as-of are two different cut-offs; give at most one"),
    };

    /// <summary>The cut-off as the engine names it, so that the output reads as it always has.</summary>
    private static string CutOffText(bool settled, long asOfUnixMs) =>
        (settled ? MerkleCutOff.AsSettled : MerkleCutOff.AsOf(asOfUnixMs == 0 ? null : DateTimeOffset.FromUnixTimeMilliseconds(asOfUnixMs))).ToString();

    private static (Option<string?>[] Options, Func<ParseResult, UsageSelection> Build) Selection(Option<string> from, Option<string> to)
    {
        var provider = new Option<string?>("--provider") { Description = "A provider's credit code." };
        var holder = new Option<string?>("--holder") { Description = "A voucher holder's credit code." };
        var job = new Option<string?>("--job") { Description = "A job id." };
        var model = new Option<string?>("--model") { Description = "A device model (catalog key)." };
        var site = new Option<string?>("--site") { Description = "A site." };
        var stream = new Option<string?>("--stream") { Description = "A stream." };
        return ([provider, holder, job, model, site, stream], parse => new UsageSelection
        {
            CreditCode = parse.GetValue(provider) is { } code ? CheckedCode(code, "--provider") : "",
            HolderCode = parse.GetValue(holder) is { } holderCode ? CheckedCode(holderCode, "--holder") : "",
            JobId = parse.GetValue(job) ?? "",
            DeviceModel = parse.GetValue(model) ?? "",
            Site = parse.GetValue(site) ?? "",
            StreamId = parse.GetValue(stream) ?? "",
            FromUnixMs = ShanghaiTime.StartOf(ParseDay(parse.GetValue(from)!, "--from")).ToUnixTimeMilliseconds(),
            UntilUnixMs = ShanghaiTime.StartOf(ParseDay(parse.GetValue(to)!, "--to").AddDays(1)).ToUnixTimeMilliseconds(),
        });
    }

    private static Command Usage()
    {
        var from = Day("--from", "First day, inclusive");
        var to = Day("--to", "Last day, inclusive");
        var (selection, build) = Selection(from, to);
        var by = new Option<string>("--by") { Description = "Group by provider, holder, job, model, site, stream or day; none for the total only.", DefaultValueFactory = _ => "none" };
        by.AcceptOnlyFromAmong("none", "provider", "holder", "job", "model", "site", "stream", "day");
        var output = OutputOption.Create();
        return Client("usage", "Usage totals (records, device-hours, FP16 PFLOPS·h, all exact) by provider, holder, job, device model, site, stream or day. Exits 6 when no record matches.",
            [.. selection, from, to, by, output], async (parse, client, headers, ct) =>
            {
                UsageSelection chosen = build(parse);
                UsageGroupBy grouping = parse.GetValue(by) switch
                {
                    "provider" => UsageGroupBy.GroupByProvider,
                    "holder" => UsageGroupBy.GroupByHolder,
                    "job" => UsageGroupBy.GroupByJob,
                    "model" => UsageGroupBy.GroupByDeviceModel,
                    "site" => UsageGroupBy.GroupBySite,
                    "stream" => UsageGroupBy.GroupByStream,
                    "day" => UsageGroupBy.GroupByDay,
                    _ => UsageGroupBy.GroupByNone,
                };
                QueryUsageResponse summary = await client.QueryUsageAsync(new QueryUsageRequest { Selection = chosen, GroupBy = grouping }, headers, cancellationToken: ct);
                if (summary.Total.Records == 0)
                {
                    Console.Error.WriteLine($"No usage records of {(chosen.CreditCode.Length > 0 ? chosen.CreditCode : "any provider")} match from {parse.GetValue(from)} to {parse.GetValue(to)} with the filters given.");
                    return NothingToExamineExit;
                }

                // Device-hours and PFLOPS·h stay the exact decimal strings the server computed, never a floating number.
                var rows = new Rows((grouping == UsageGroupBy.GroupByNone ? "" : parse.GetValue(by)!, "group"), Column.DataOnly("total"), ("records", "records"),
                    ("device-hours", "deviceHours"), ("FP16 PFLOPS·h", "pflopsHours"));
                foreach (Protocol.V1.UsageTotals row in summary.Groups.Append(summary.Total))
                {
                    bool total = row == summary.Total;
                    rows.Add(new Cell(total ? Labels.Of(row.Key) : row.Key, total ? null : row.Key), Cell.Flag(total, ""), Cell.Number(row.Records, N(row.Records)), row.DeviceHours, row.PflopsHours);
                }

                OutputFormat format = parse.GetValue(output);
                rows.Write(format, Console.Out);
                if (summary.Truncated)
                {
                    (format == OutputFormat.Table ? Console.Out : Console.Error).WriteLine(Labels.Format("(only the largest {0:N0} groups are shown; the total covers all)", summary.Groups.Count));
                }

                return 0;
            });
    }

    private static Command Export()
    {
        var from = Day("--from", "First day, inclusive");
        var to = Day("--to", "Last day, inclusive");
        var (selection, build) = Selection(from, to);
        var format = new Option<string>("--format") { Description = "csv or parquet.", Required = true };
        format.AcceptOnlyFromAmong("csv", "parquet");
        var output = new Option<string>("--out") { Description = "The file to write, or - for standard output.", Required = true };
        return Client("export", "Export the selected records, one row per record, to CSV or Parquet, written as the server streams it.",
            [.. selection, from, to, format, output], async (parse, client, headers, ct) =>
            {
                var request = new ExportUsageRequest
                {
                    Selection = build(parse),
                    Format = parse.GetValue(format) == "parquet" ? Protocol.V1.ExportFormat.Parquet : Protocol.V1.ExportFormat.Csv,
                };
                string path = parse.GetValue(output)!;
                using AsyncServerStreamingCall<ExportChunk> call = client.ExportUsage(request, headers, cancellationToken: ct);
                ulong records = path == "-"
                    ? await ExportToAsync(call.ResponseStream, Console.OpenStandardOutput(), ct)
                    : await ExportToFileAsync(call.ResponseStream, path, ct);
                (path == "-" ? Console.Error : Console.Out).WriteLine($"Exported {records:N0} records to {(path == "-" ? "standard output" : path)}.");
                return 0;
            });
    }

    /// <summary>
    /// Writes the export beside <paramref name="path"/> and moves it there once the last chunk
    /// arrived: a refusal or a broken connection leaves no half file that looks like an export.
    /// The first chunk is awaited before anything is created, so a refused call creates nothing.
    /// </summary>
    private static async Task<ulong> ExportToFileAsync(IAsyncStreamReader<ExportChunk> chunks, string path, CancellationToken cancellationToken)
    {
        bool more = await chunks.MoveNext(cancellationToken);
        string partial = path + ".partial";
        try
        {
            ulong records;
            await using (var file = new FileStream(partial, FileMode.Create, FileAccess.Write, FileShare.None, 64 * 1024, FileOptions.Asynchronous))
            {
                records = await CopyChunksAsync(chunks, more, file, cancellationToken);
            }

            File.Move(partial, path, overwrite: true);
            return records;
        }
        catch
        {
            File.Delete(partial);
            throw;
        }
    }

    private static async Task<ulong> ExportToAsync(IAsyncStreamReader<ExportChunk> chunks, Stream target, CancellationToken cancellationToken)
    {
        await using (target)
        {
            return await CopyChunksAsync(chunks, await chunks.MoveNext(cancellationToken), target, cancellationToken);
        }
    }

    /// <summary>Each chunk goes to <paramref name="target"/> as it arrives; the last one carries the record count.</summary>
    private static async Task<ulong> CopyChunksAsync(IAsyncStreamReader<ExportChunk> chunks, bool more, Stream target, CancellationToken cancellationToken)
    {
        ulong records = 0;
        while (more)
        {
            ExportChunk chunk = chunks.Current;
            await target.WriteAsync(chunk.Data.Memory, cancellationToken);
            records = Math.Max(records, chunk.Records);
            more = await chunks.MoveNext(cancellationToken);
        }

        await target.FlushAsync(cancellationToken);
        return records;
    }

    private static Command Anomalies()
    {
        var provider = Provider();
        var from = Day("--from", "First day, inclusive");
        var to = Day("--to", "Last day, inclusive");
        var silence = new Option<int?>("--silence-minutes")
        {
            Description = "A stream that sent neither records nor heartbeats for longer than this is an anomaly; without it, the server's threshold (120 unless its operator set Anomalies:Silence).",
        };
        var kind = new Option<string[]>("--kind")
        {
            Description = $"Only this kind (repeat for several): {string.Join(", ", AnomalyOutput.Kinds.Select(k => k.Name))}. Every kind when left out.",
        };
        // `text` is what the option took before every command shared it; scripts that say it keep working.
        Option<OutputFormat> output = OutputOption.Create(aliasForTable: "text");
        output.Description = "table (the summary by kind, then each anomaly; `text` says the same), json (the DetectAnomaliesResponse in the protobuf JSON mapping, "
            + "64-bit counts as strings) or csv (one row per anomaly, its evidence counted, not listed).";
        return Client("anomalies", "Run the anomaly detectors over a provider and period: a count per kind first (saying where the per-kind cap, 500 unless the operator set Anomalies:AnomaliesPerKindMax, cut a list), then the anomalies with their evidence. Exits 6 when the period holds no records to judge.",
            [provider, from, to, silence, kind, output], async (parse, client, headers, ct) =>
            {
                string code = CodeOf(parse, provider);
                if (parse.GetValue(silence) is < 1 or > 100_000)
                {
                    throw new UsageException("--silence-minutes is 1 to 100000");
                }

                var request = new DetectAnomaliesRequest
                {
                    CreditCode = code,
                    FromUnixMs = ShanghaiTime.StartOf(ParseDay(parse.GetValue(from)!, "--from")).ToUnixTimeMilliseconds(),
                    UntilUnixMs = ShanghaiTime.StartOf(ParseDay(parse.GetValue(to)!, "--to").AddDays(1)).ToUnixTimeMilliseconds(),
                    SilenceMinutes = (uint)(parse.GetValue(silence) ?? 0),
                    Kinds = { (parse.GetValue(kind) ?? []).Select(AnomalyOutput.Parse).Distinct() },
                };
                DetectAnomaliesResponse found = await client.DetectAnomaliesAsync(request, headers, cancellationToken: ct);
                OutputFormat format = parse.GetValue(output);
                if (format == OutputFormat.Json)
                {
                    Console.Write(AnomalyOutput.Json(found));
                }
                else if (format == OutputFormat.Csv)
                {
                    AnomalyOutput.CsvRows(found).Write(format, Console.Out);
                }

                if (found.RecordsExamined == 0 && found.Anomalies.Count == 0)
                {
                    Console.Error.WriteLine($"{code} has no usage records from {parse.GetValue(from)} to {parse.GetValue(to)}: there was nothing to judge, which is not a clean period.");
                    return NothingToExamineExit;
                }

                if (format == OutputFormat.Table)
                {
                    Console.Write(AnomalyOutput.Text(found, code, parse.GetValue(from)!, parse.GetValue(to)!));
                }

                return 0;
            });
    }

    private static Command Report()
    {
        var provider = Provider();
        var from = Day("--from", "First day, inclusive");
        var to = Day("--to", "Last day, inclusive");
        var output = new Option<string>("--out") { Description = "The HTML file to write.", Required = true };
        return Client("report", "Write one self-contained HTML audit report of a provider and period: totals, charts, chains, Merkle roots, anomalies.",
            [provider, from, to, output], async (parse, client, headers, ct) =>
            {
                var request = new RenderReportRequest { CreditCode = CodeOf(parse, provider), FromDay = DayText(parse, from), ToDay = DayText(parse, to) };
                AuditReport report = await client.RenderReportAsync(request, headers, cancellationToken: ct);
                string path = parse.GetValue(output)!;
                await using (var file = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 64 * 1024, FileOptions.Asynchronous))
                {
                    await file.WriteAsync(report.Html.Memory, ct);
                }

                Console.WriteLine($"Wrote {path}: {report.Total.Records:N0} records, {report.Total.PflopsHours} PFLOPS·h, {report.Anomalies} anomalies, {report.StreamsBroken} broken chain(s).");
                return 0;
            });
    }

    private static Command Log()
    {
        var actorFilter = new Option<string?>("--actor") { Description = "Only queries of this actor (a key's subject)." };
        var limit = new Option<uint>("--limit") { Description = $"Most entries, newest first (at most {AuditQueryLog.ListLimitMax:N0}).", DefaultValueFactory = _ => 50 };
        var output = OutputOption.Create();
        return Client("log", "The audit query log: who asked what, and when.", [actorFilter, limit, output], async (parse, client, headers, ct) =>
        {
            if (parse.GetValue(limit) is 0 or > AuditQueryLog.ListLimitMax)
            {
                throw new UsageException($"--limit is 1 to {AuditQueryLog.ListLimitMax}");
            }

            ListAuditQueriesResponse response = await client.ListAuditQueriesAsync(
                new ListAuditQueriesRequest { Actor = parse.GetValue(actorFilter) ?? "", Limit = parse.GetValue(limit) }, headers, cancellationToken: ct);
            var rows = new Rows(("id", "queryId"), ("when", "askedAt"), ("who", "actor"), ("role", "role"), ("via", "via"), ("query", "query"), ("provider", "creditCode"), ("parameters", "parametersJson"));
            foreach (AuditQuery e in response.Queries)
            {
                rows.Add(Cell.Number(e.QueryId, e.QueryId.ToString(CultureInfo.InvariantCulture)), Cell.Instant(e.AskedAtUnixMs) with { Text = Local(e.AskedAtUnixMs) }, e.Actor, e.Role, e.Via, e.Query,
                    e.CreditCode, e.ParametersJson);
            }

            rows.Write(parse.GetValue(output), Console.Out);
            return 0;
        });
    }

    private static string CodeOf(ParseResult parse, Option<string> option) => CheckedCode(parse.GetValue(option)!, option.Name);

    /// <summary>A malformed code names nobody: refused here, before any call, as the server would refuse it.</summary>
    private static string CheckedCode(string code, string option) => CreditCode.IsValid(code)
        ? code
        : throw new UsageException($"{option} '{code}' is not a unified social credit code: 18 characters of [0-9A-HJ-NP-RTUW-Y] ending in the GB 32100-2015 check character");

    private static string DayText(ParseResult parse, Option<string> option) =>
        ParseDay(parse.GetValue(option)!, option.Name).ToString("yyyy-MM-dd", CultureInfo.InvariantCulture);

    private static DateOnly ParseDay(string text, string option) =>
        DateOnly.TryParseExact(text, "yyyy-MM-dd", CultureInfo.InvariantCulture, DateTimeStyles.None, out DateOnly day)
            ? day
            : throw new UsageException($"{option} '{text}' is not a date yyyy-MM-dd");

    private static string N(ulong value) => value.ToString("N0", CultureInfo.InvariantCulture);

    private static string Local(long unixMs) => LocalTime.Minutes(unixMs);
}
