using System.CommandLine;
using System.Globalization;
using Metering.Engine.Access;
using Metering.Engine.Audit;
using Metering.Engine.Catalog;
using Metering.Engine.Registry;
using Npgsql;

namespace Metering.Cli.Commands;

/// <summary>
/// `metering audit ...`: the auditor's side on the bureau's database. Every command is written to
/// the audit query log (as the --as auditor, via cli) before it runs, and none writes anything else.
/// </summary>
internal static class AuditCommand
{
    public static Command Create()
    {
        var command = new Command("audit", "Training audit (训力审计): verify chains, Merkle roots and proofs, usage queries and exports, anomalies, the HTML report, the query log; the transparency log's signed heads and proofs (over gRPC).");
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

    private static Option<string> Auditor() => new("--as")
    {
        Description = "Auditor name recorded in the audit query log.",
        DefaultValueFactory = _ => $"{Environment.UserName}@cli",
    };

    private static Option<string> Provider(bool required) => new("--provider") { Description = "The provider's 18-character credit code.", Required = required };

    private static Option<string> Day(string name, string description) => new(name) { Description = description + " (yyyy-MM-dd, Asia/Shanghai).", Required = true };

    /// <summary>A command with the database options, whose action logs the query and then runs.</summary>
    private static Command WithDatabase(string name, string description, Option[] options, Func<ParseResult, Actor, NpgsqlDataSource, CancellationToken, Task<int>> action)
    {
        var connection = CommonOptions.Connection();
        var dataDirectory = CommonOptions.DataDirectory();
        var auditor = Auditor();
        var command = new Command(name, description);
        foreach (Option option in options)
        {
            command.Options.Add(option);
        }

        command.Options.Add(auditor);
        command.Options.Add(connection);
        command.Options.Add(dataDirectory);
        command.SetAction((parse, cancellationToken) => CommonOptions.WithDatabaseAsync(parse.GetValue(connection), parse.GetValue(dataDirectory)!, async dataSource =>
        {
            var actor = new Actor(Role.Auditor, parse.GetValue(auditor)!);
            try
            {
                return await action(parse, actor, dataSource, cancellationToken);
            }
            catch (Exception error) when (error is ArgumentException or RecordNotFoundException or DayNotSettledException or AuditLimitExceededException or FormatException)
            {
                Console.Error.WriteLine($"error: {error.Message}");
                return 1;
            }
        }, cancellationToken));
        return command;
    }

    private static Task LogAsync(NpgsqlDataSource dataSource, Actor actor, string query, string? providerId, ParseResult parse, CancellationToken cancellationToken)
    {
        // The command line as given is what was asked; option values only, never the connection string.
        var parameters = parse.CommandResult.Children.OfType<System.CommandLine.Parsing.OptionResult>()
            .Where(o => o.Option.Name is not "--connection" and not "--data-dir")
            .ToDictionary(o => o.Option.Name.TrimStart('-'), o => string.Join(' ', o.Tokens.Select(t => t.Value)));
        return new AuditQueryLog(dataSource, TimeProvider.System).RecordAsync(actor, AuditChannel.Cli, query, providerId, parameters, cancellationToken);
    }

    private static Command Verify()
    {
        var provider = Provider(required: true);
        var stream = new Option<string?>("--stream") { Description = "One stream; every stream of the provider when left out." };
        var fromSequence = new Option<ulong>("--from-seq") { Description = "First sequence (a later start begins from the stored hash before it).", DefaultValueFactory = _ => 1 };
        var toSequence = new Option<ulong?>("--to-seq") { Description = "Last sequence; the committed mark when left out." };
        return WithDatabase("verify", "Re-verify hash chains from the stored rows and show the first broken link with its evidence.",
            [provider, stream, fromSequence, toSequence], async (parse, actor, dataSource, ct) =>
            {
                string code = parse.GetValue(provider)!;
                await LogAsync(dataSource, actor, "verify", code, parse, ct);
                var range = new VerificationRange(parse.GetValue(fromSequence), parse.GetValue(toSequence));
                var verifier = new ChainVerifier(dataSource);
                var clock = System.Diagnostics.Stopwatch.StartNew();
                IReadOnlyList<ChainVerification> results = parse.GetValue(stream) is { } one
                    ? [await verifier.VerifyStreamAsync(code, one, range, null, ct)]
                    : await verifier.VerifyProviderAsync(code, range, ct);
                double seconds = Math.Max(clock.Elapsed.TotalSeconds, 1e-3);
                var table = new TextTable("stream", "from", "to", "checked", "chain", "head");
                foreach (ChainVerification r in results)
                {
                    table.Add(r.StreamId, N(r.FromSequence), N(r.ToSequence), N(r.RecordsChecked), r.Intact ? "intact" : $"BROKEN at {r.FirstBrokenSequence} ({r.Break!.Kind})", Convert.ToHexStringLower(r.ComputedHead));
                }

                table.Write(Console.Out);
                long bytes = results.Sum(r => r.CanonicalBytes);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{results.Count} stream(s), {N(results.Aggregate(0UL, (sum, r) => sum + r.RecordsChecked))} records, {bytes / 1e6:N1} MB of canonical encoding re-hashed in {seconds:N2} s ({bytes / 1e6 / seconds:N1} MB/s)"));
                foreach (ChainVerification r in results.Where(r => !r.Intact))
                {
                    ChainBreak b = r.Break!;
                    Console.WriteLine();
                    Console.WriteLine($"{r.StreamId}: record {b.Sequence}: {b.Detail}");
                    Console.WriteLine($"  previous hash  {b.PreviousHashHex}");
                    Console.WriteLine($"  stored hash    {b.StoredHashHex}");
                    Console.WriteLine($"  computed hash  {b.ComputedHashHex}");
                    Console.WriteLine($"  canonical      {b.CanonicalHex}");
                }

                return results.All(r => r.Intact) ? 0 : 3;
            });
    }

    private static Command MerkleRoot()
    {
        var provider = Provider(required: true);
        var day = Day("--day", "The day");
        var asOf = AsOf("Only records committed at or before this instant (ISO 8601); committed means when the ingest transaction began.");
        var settled = Settled("The root as settled: the records the settlement of the day counted, the root its provider statement publishes in its merkle_root row.");
        return WithDatabase("merkle-root", "The provider's Merkle root over one day's records (proto/metering/v1/merkle-proofs.md).",
            [provider, day, asOf, settled], async (parse, actor, dataSource, ct) =>
            {
                string code = parse.GetValue(provider)!;
                await LogAsync(dataSource, actor, "merkle-root", code, parse, ct);
                DailyRoot root = await new DailyMerkle(dataSource).RootAsync(code, ParseDay(parse.GetValue(day)!), CutOff(parse, asOf, settled), ct);
                Console.WriteLine($"provider  {root.ProviderId}");
                Console.WriteLine($"day       {root.Day:yyyy-MM-dd}");
                Console.WriteLine($"cut-off   {root.CutOff}");
                Console.WriteLine($"leaves    {root.LeafCount}");
                Console.WriteLine($"root      {Convert.ToHexStringLower(root.Root)}");
                return 0;
            });
    }

    private static Command Proof()
    {
        var provider = Provider(required: true);
        var stream = new Option<string>("--stream") { Description = "The record's stream.", Required = true };
        var sequence = new Option<ulong>("--sequence") { Description = "The record's sequence number.", Required = true };
        var asOf = AsOf("Prove against the root as of this instant (ISO 8601).");
        var settled = Settled("Prove against the root as settled, the one the provider's statement of the record's day publishes.");
        return WithDatabase("proof", "The inclusion proof of one record in its day's Merkle root, with shell lines that check it with sha256sum.",
            [provider, stream, sequence, asOf, settled], async (parse, actor, dataSource, ct) =>
            {
                string code = parse.GetValue(provider)!;
                await LogAsync(dataSource, actor, "proof", code, parse, ct);
                InclusionProof proof = await new DailyMerkle(dataSource).ProveAsync(code, parse.GetValue(stream)!, parse.GetValue(sequence), CutOff(parse, asOf, settled), ct);
                Console.WriteLine($"# {proof.StreamId} #{proof.Sequence}: leaf {proof.LeafIndex} of {proof.LeafCount} on {proof.Day:yyyy-MM-dd} ({proof.CutOff}); check with bash and sha256sum:");
                Console.WriteLine("hex2bin() { printf \"$(printf '%s' \"$1\" | sed 's/../\\\\x&/g')\"; }");
                Console.WriteLine("node() { { printf '\\x01'; hex2bin \"$1\"; hex2bin \"$2\"; } | sha256sum | cut -d' ' -f1; }");
                Console.WriteLine($"PREV={Convert.ToHexStringLower(proof.PreviousHash)}");
                Console.WriteLine($"CANONICAL={Convert.ToHexStringLower(proof.Canonical)}");
                Console.WriteLine("C=$( { hex2bin $PREV; hex2bin $CANONICAL; } | sha256sum | cut -d' ' -f1 )" + $"   # = {Convert.ToHexStringLower(proof.ChainHash)}");
                Console.WriteLine("P=$( { printf '\\x00'; hex2bin $C; } | sha256sum | cut -d' ' -f1 )" + $"   # = {Convert.ToHexStringLower(proof.LeafHash)}");
                foreach (ProofStep step in proof.Steps)
                {
                    string sibling = Convert.ToHexStringLower(step.Sibling);
                    Console.WriteLine(step.Side == ProofSide.Left ? $"P=$(node {sibling} $P)" : $"P=$(node $P {sibling})");
                }

                Console.WriteLine($"echo $P   # = root {Convert.ToHexStringLower(proof.Root)}");
                return 0;
            });
    }

    private static Option<DateTimeOffset?> AsOf(string description) => new("--as-of") { Description = description };

    private static Option<bool> Settled(string description) => new("--settled") { Description = description };

    private static MerkleCutOff CutOff(ParseResult parse, Option<DateTimeOffset?> asOf, Option<bool> settled) => (parse.GetValue(asOf), parse.GetValue(settled)) switch
    {
        (null, true) => MerkleCutOff.AsSettled,
        (var instant, false) => MerkleCutOff.AsOf(instant),
        _ => throw new ArgumentException("--settled and --as-of are two different cut-offs; give at most one"),
    };

    private static (Option<string?>[] Options, Func<ParseResult, UsageFilter> Build) Selection(Option<string> from, Option<string> to)
    {
        var provider = new Option<string?>("--provider") { Description = "A provider's credit code." };
        var holder = new Option<string?>("--holder") { Description = "A voucher holder's credit code." };
        var job = new Option<string?>("--job") { Description = "A job id." };
        var model = new Option<string?>("--model") { Description = "A device model (catalog key)." };
        var site = new Option<string?>("--site") { Description = "A site." };
        var stream = new Option<string?>("--stream") { Description = "A stream." };
        return ([provider, holder, job, model, site, stream], parse => new UsageFilter
        {
            ProviderId = parse.GetValue(provider),
            HolderCode = parse.GetValue(holder),
            JobId = parse.GetValue(job),
            DeviceModel = parse.GetValue(model),
            Site = parse.GetValue(site),
            StreamId = parse.GetValue(stream),
            From = ShanghaiTime.StartOf(ParseDay(parse.GetValue(from)!)),
            Until = ShanghaiTime.StartOf(ParseDay(parse.GetValue(to)!).AddDays(1)),
        });
    }

    private static Command Usage()
    {
        var from = Day("--from", "First day, inclusive");
        var to = Day("--to", "Last day, inclusive");
        var (selection, build) = Selection(from, to);
        var by = new Option<string>("--by") { Description = "Group by provider, holder, job, model, site, stream or day; none for the total only.", DefaultValueFactory = _ => "none" };
        by.AcceptOnlyFromAmong("none", "provider", "holder", "job", "model", "site", "stream", "day");
        return WithDatabase("usage", "Usage totals (records, device-hours, FP16 PFLOPS·h, all exact) by provider, holder, job, device model, site, stream or day.",
            [.. selection, from, to, by], async (parse, actor, dataSource, ct) =>
            {
                UsageFilter filter = build(parse);
                await LogAsync(dataSource, actor, "usage", filter.ProviderId, parse, ct);
                UsageGrouping grouping = parse.GetValue(by) switch
                {
                    "provider" => UsageGrouping.Provider,
                    "holder" => UsageGrouping.Holder,
                    "job" => UsageGrouping.Job,
                    "model" => UsageGrouping.DeviceModel,
                    "site" => UsageGrouping.Site,
                    "stream" => UsageGrouping.Stream,
                    "day" => UsageGrouping.Day,
                    _ => UsageGrouping.None,
                };
                UsageSummary summary = await new UsageQueries(dataSource).SummariseAsync(filter, grouping, 0, ct);
                var table = new TextTable(grouping == UsageGrouping.None ? "" : parse.GetValue(by)!, "records", "device-hours", "FP16 PFLOPS·h");
                foreach (UsageTotals row in summary.Groups.Append(summary.Total))
                {
                    table.Add(row.Key, N((ulong)row.Records), row.DeviceHours, row.PflopsHours);
                }

                table.Write(Console.Out);
                if (summary.Truncated)
                {
                    Console.WriteLine($"(only the largest {summary.Groups.Count:N0} groups are shown; the total covers all)");
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
        var output = new Option<string>("--out") { Description = "The file to write.", Required = true };
        return WithDatabase("export", "Export the selected records, one row per record, to CSV or Parquet.",
            [.. selection, from, to, format, output], async (parse, actor, dataSource, ct) =>
            {
                UsageFilter filter = build(parse);
                await LogAsync(dataSource, actor, "export", filter.ProviderId, parse, ct);
                await using var file = new FileStream(parse.GetValue(output)!, FileMode.Create, FileAccess.ReadWrite);
                long records = await new UsageExport(dataSource).WriteAsync(filter, parse.GetValue(format) == "parquet" ? ExportFormat.Parquet : ExportFormat.Csv, file, ct);
                Console.WriteLine($"Exported {records:N0} records to {parse.GetValue(output)}.");
                return 0;
            });
    }

    private static Command Anomalies()
    {
        var provider = Provider(required: true);
        var from = Day("--from", "First day, inclusive");
        var to = Day("--to", "Last day, inclusive");
        var silence = new Option<int>("--silence-minutes") { Description = "A stream that sent neither records nor heartbeats for longer than this is an anomaly.", DefaultValueFactory = _ => 120 };
        return WithDatabase("anomalies", "Run every anomaly detector over a provider and period and list the anomalies with their evidence.",
            [provider, from, to, silence], async (parse, actor, dataSource, ct) =>
            {
                string code = parse.GetValue(provider)!;
                await LogAsync(dataSource, actor, "anomalies", code, parse, ct);
                var detectors = new AnomalyDetectors(dataSource, TimeProvider.System, new DetectorSettings { Silence = TimeSpan.FromMinutes(parse.GetValue(silence)) });
                IReadOnlyList<Anomaly> found = await detectors.DetectAsync(code, ShanghaiTime.StartOf(ParseDay(parse.GetValue(from)!)), ShanghaiTime.StartOf(ParseDay(parse.GetValue(to)!).AddDays(1)), ct);
                foreach (Anomaly anomaly in found)
                {
                    Console.WriteLine($"{anomaly.Kind}  {Local(anomaly.FromUnixMs)} to {Local(anomaly.UntilUnixMs)}  {anomaly.StreamId}");
                    Console.WriteLine($"  {anomaly.Summary}");
                    foreach (EvidenceRow row in anomaly.Evidence)
                    {
                        Console.WriteLine($"    {row.StreamId} #{row.Sequence} job {row.JobId} {row.DeviceCount}×{row.DeviceModel} {row.ShareNumerator}/{row.ShareDenominator} {Local(row.StartUnixMs)}–{Local(row.EndUnixMs)} {row.Site} {string.Join(' ', row.DeviceUuids)}");
                    }
                }

                Console.WriteLine($"{found.Count} anomal{(found.Count == 1 ? "y" : "ies")}.");
                return 0;
            });
    }

    private static Command Report()
    {
        var provider = Provider(required: true);
        var from = Day("--from", "First day, inclusive");
        var to = Day("--to", "Last day, inclusive");
        var output = new Option<string>("--out") { Description = "The HTML file to write.", Required = true };
        return WithDatabase("report", "Write one self-contained HTML audit report of a provider and period: totals, charts, chains, Merkle roots, anomalies.",
            [provider, from, to, output], async (parse, actor, dataSource, ct) =>
            {
                string code = parse.GetValue(provider)!;
                await LogAsync(dataSource, actor, "report", code, parse, ct);
                RenderedReport report = await new HtmlReport(dataSource, DeviceCatalog.LoadEmbedded(), TimeProvider.System)
                    .RenderAsync(code, ParseDay(parse.GetValue(from)!), ParseDay(parse.GetValue(to)!), ct);
                await File.WriteAllTextAsync(parse.GetValue(output)!, report.Html, ct);
                Console.WriteLine($"Wrote {parse.GetValue(output)}: {report.Total.Records:N0} records, {report.Total.PflopsHours} PFLOPS·h, {report.Anomalies} anomalies, {report.StreamsBroken} broken chain(s).");
                return 0;
            });
    }

    private static Command Log()
    {
        var actorFilter = new Option<string?>("--actor") { Description = "Only queries of this actor." };
        var limit = new Option<int>("--limit") { Description = "Most entries, newest first.", DefaultValueFactory = _ => 50 };
        return WithDatabase("log", "The audit query log: who asked what, and when.", [actorFilter, limit], async (parse, actor, dataSource, ct) =>
        {
            await LogAsync(dataSource, actor, "log", null, parse, ct);
            var table = new TextTable("id", "when", "who", "role", "via", "query", "provider", "parameters");
            foreach (AuditQueryEntry e in await new AuditQueryLog(dataSource, TimeProvider.System).ListAsync(parse.GetValue(actorFilter), parse.GetValue(limit), ct))
            {
                table.Add(e.QueryId.ToString(CultureInfo.InvariantCulture), Local(e.AskedAt.ToUnixTimeMilliseconds()), e.Actor, e.Role, e.Via, e.Query, e.ProviderId ?? "", e.Parameters);
            }

            table.Write(Console.Out);
            return 0;
        });
    }

    private static DateOnly ParseDay(string text) =>
        DateOnly.TryParseExact(text, "yyyy-MM-dd", CultureInfo.InvariantCulture, DateTimeStyles.None, out DateOnly day) ? day : throw new FormatException($"'{text}' is not a date yyyy-MM-dd");

    private static string N(ulong value) => value.ToString("N0", CultureInfo.InvariantCulture);

    private static string Local(long unixMs) => LocalTime.Minutes(unixMs);
}
