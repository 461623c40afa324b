using System.CommandLine;
using System.Globalization;
using Grpc.Core;
using Grpc.Net.Client;
using Metering.Engine.Signing;
using Metering.Engine.Transparency;
using Metering.Protocol.V1;
using EngineTreeHead = Metering.Engine.Transparency.SignedTreeHead;

namespace Metering.Cli.Commands;

/// <summary>
/// `metering audit log-head|consistency|check-log|log-proof`: the transparency log, read from a
/// running server over gRPC and checked here with the server's published public key
/// (transparency-log.md). Exit 0 when everything checks, 3 when a check fails, 4 when the server
/// refuses, 2 for bad usage (a missing key, an unreadable file). `--output json|csv` gives the same
/// values for programs, hashes in lower-case hex; the exit code is the same whatever the format.
/// </summary>
internal static class LogCommands
{
    public static IEnumerable<Command> Create() => [LogHead(), Consistency(), CheckLog(), LogProof()];

    private static Option<string> PublicKey(bool required) => new("--public-key")
    {
        Description = "The server's public key, a PEM file (the output of `metering key signing show`), obtained from the bureau outside this server.",
        Required = required,
    };

    /// <summary>A client command (ClientCommand) whose action gets the transparency client; an unreadable key or head file is bad usage.</summary>
    private static Command Client(string name, string description, Option[] options,
        Func<ParseResult, TransparencyService.TransparencyServiceClient, Metadata, CancellationToken, Task<int>> action) =>
        ClientCommand.Create(name, description, options, async (parse, call, cancellationToken) =>
        {
            try
            {
                return await action(parse, new TransparencyService.TransparencyServiceClient(call.Channel), call.Headers, cancellationToken);
            }
            catch (Exception e) when (e is SigningKeyException or FormatException or IOException or UnauthorizedAccessException)
            {
                throw new UsageException(e.Message);
            }
        });

    private static Command LogHead()
    {
        var size = new Option<ulong>("--size") { Description = "A head the server signed earlier, by its tree size; the latest when left out.", DefaultValueFactory = _ => 0 };
        var output = new Option<string?>("--out") { Description = "Also save the head as JSON, to check later with `metering audit check-log --head FILE`." };
        var publicKey = PublicKey(required: false);
        var format = OutputOption.Create();
        return Client("log-head", "Print the transparency log's signed tree head (size, root, time, key id, signature); save it with --out. "
            + "With --public-key, whether its signature verifies (signatureVerifies in json and csv).", [size, output, publicKey, format],
            async (parse, client, headers, ct) =>
            {
                EngineTreeHead head = FromMessage(await client.GetTreeHeadAsync(new GetTreeHeadRequest { TreeSize = parse.GetValue(size) }, headers, cancellationToken: ct));
                if (parse.GetValue(output) is { } path)
                {
                    await File.WriteAllTextAsync(path, head.ToJson() + "\n", ct);
                    Console.Error.WriteLine($"Saved to {path}.");
                }

                string? problem = parse.GetValue(publicKey) is { } keyPath ? head.SignatureProblem(await ReadKeyAsync(keyPath, ct)) : null;
                if (parse.GetValue(format) is not OutputFormat.Table and var data)
                {
                    var row = new Rows(Column.DataOnly("treeSize"), Column.DataOnly("root"), Column.DataOnly("timestamp"), Column.DataOnly("timestampUnixMs"), Column.DataOnly("keyId"),
                        Column.DataOnly("signature"), Column.DataOnly("signatureVerifies"), Column.DataOnly("problem"));
                    row.Add(Cell.Data(head.TreeSize), head.RootHex, Cell.Instant(head.TimestampUnixMs), Cell.Data(head.TimestampUnixMs), head.KeyId, Convert.ToHexStringLower(head.Signature),
                        parse.GetValue(publicKey) is null ? Cell.Data(null) : Cell.Data(problem is null), Cell.Data(problem));
                    row.WriteOne(data, Console.Out);
                }
                else
                {
                    Print(head);
                    if (parse.GetValue(publicKey) is not null)
                    {
                        Console.WriteLine(problem is null ? "signature:  verifies with the published key" : $"FAILED: {problem}");
                    }
                }

                return problem is null ? ExitCodes.Success : ExitCodes.EvidenceFailed;
            });
    }

    private static Command Consistency()
    {
        var from = new Option<ulong>("--from") { Description = "The smaller tree size (at least 1).", Required = true };
        var to = new Option<ulong>("--to") { Description = "The larger tree size.", Required = true };
        var publicKey = PublicKey(required: true);
        var format = OutputOption.Sections("audit consistency");
        return Client("consistency", "Print the consistency proof between two sizes of the log and whether it verifies against the two heads the server signed; "
            + "--output json gives one object: consistency (sizes, verifies, problem), path (hashes) and heads.", [from, to, publicKey, format],
            async (parse, client, headers, ct) =>
            {
                ServerPublicKey key = await ReadKeyAsync(parse.GetValue(publicKey)!, ct);
                ConsistencyProof proof = await client.GetConsistencyProofAsync(new GetConsistencyProofRequest { FromSize = parse.GetValue(from), ToSize = parse.GetValue(to) }, headers, cancellationToken: ct);
                EngineTreeHead first = FromMessage(await client.GetTreeHeadAsync(new GetTreeHeadRequest { TreeSize = proof.FromSize }, headers, cancellationToken: ct));
                EngineTreeHead second = FromMessage(await client.GetTreeHeadAsync(new GetTreeHeadRequest { TreeSize = proof.ToSize }, headers, cancellationToken: ct));
                string? problem = LogCheck.Extends(first, second, proof.Path.Select(h => h.ToByteArray()).ToList(), key);
                if (parse.GetValue(format) == OutputFormat.Json)
                {
                    var result = new Rows(Column.DataOnly("fromSize"), Column.DataOnly("toSize"), Column.DataOnly("verifies"), Column.DataOnly("problem"));
                    result.Add(Cell.Data(proof.FromSize), Cell.Data(proof.ToSize), Cell.Data(problem is null), Cell.Data(problem));
                    new Sections().One("consistency", result).Many("path", Hashes(proof.Path)).Many("heads", Heads(first, second)).WriteJson(Console.Out);
                    return problem is null ? ExitCodes.Success : ExitCodes.EvidenceFailed;
                }

                Console.WriteLine($"consistency proof from {proof.FromSize} to {proof.ToSize}: {proof.Path.Count} hash(es)");
                foreach (var hash in proof.Path)
                {
                    Console.WriteLine($"  {Convert.ToHexStringLower(hash.Span)}");
                }

                Console.WriteLine($"head {first.TreeSize}: root {first.RootHex}, key {first.KeyId}");
                Console.WriteLine($"head {second.TreeSize}: root {second.RootHex}, key {second.KeyId}");
                Console.WriteLine(problem is null ? "verifies: yes" : $"verifies: no: {problem}");
                return problem is null ? ExitCodes.Success : ExitCodes.EvidenceFailed;
            });
    }

    private static Command CheckLog()
    {
        var saved = new Option<string>("--head") { Description = "A tree head saved earlier with `metering audit log-head --out FILE`.", Required = true };
        var publicKey = PublicKey(required: true);
        var format = OutputOption.Create();
        return Client("check-log", "Check that today's log extends a tree head saved earlier: both heads' signatures and the consistency proof between them. Exits 3 and names the first difference otherwise.",
            [saved, publicKey, format],
            async (parse, client, headers, ct) =>
            {
                ServerPublicKey key = await ReadKeyAsync(parse.GetValue(publicKey)!, ct);
                string savedPath = parse.GetValue(saved)!;
                if (new FileInfo(savedPath) is { Exists: true, Length: > EngineTreeHead.JsonBytesMax })
                {
                    return ClientCommand.Usage($"{savedPath} is larger than a saved tree head ({EngineTreeHead.JsonBytesMax} bytes at most)");
                }

                EngineTreeHead earlier = EngineTreeHead.FromJson(await File.ReadAllTextAsync(savedPath, ct));
                EngineTreeHead current = FromMessage(await client.GetTreeHeadAsync(new GetTreeHeadRequest(), headers, cancellationToken: ct));
                List<byte[]> proof = [];
                if (earlier.TreeSize > 0 && current.TreeSize > earlier.TreeSize && current.SignatureProblem(key) is null && earlier.SignatureProblem(key) is null)
                {
                    ConsistencyProof answer = await client.GetConsistencyProofAsync(new GetConsistencyProofRequest { FromSize = (ulong)earlier.TreeSize, ToSize = (ulong)current.TreeSize },
                        headers, cancellationToken: ct);
                    proof = answer.Path.Select(h => h.ToByteArray()).ToList();
                }

                string? problem = LogCheck.Extends(earlier, current, proof, key);
                if (parse.GetValue(format) is not OutputFormat.Table and var data)
                {
                    var row = new Rows(Column.DataOnly("savedSize"), Column.DataOnly("savedRoot"), Column.DataOnly("currentSize"), Column.DataOnly("currentRoot"), Column.DataOnly("keyId"),
                        Column.DataOnly("extends"), Column.DataOnly("problem"));
                    row.Add(Cell.Data(earlier.TreeSize), earlier.RootHex, Cell.Data(current.TreeSize), current.RootHex, key.KeyId, Cell.Data(problem is null), Cell.Data(problem));
                    row.WriteOne(data, Console.Out);
                    return problem is null ? ExitCodes.Success : ExitCodes.EvidenceFailed;
                }

                Console.WriteLine($"saved head:   size {earlier.TreeSize}, root {earlier.RootHex}, signed {Time(earlier.TimestampUnixMs)}, key {earlier.KeyId}");
                Console.WriteLine($"current head: size {current.TreeSize}, root {current.RootHex}, signed {Time(current.TimestampUnixMs)}, key {current.KeyId}");
                Console.WriteLine(problem is null
                    ? $"OK: the log of size {current.TreeSize} extends the saved head of size {earlier.TreeSize}; both heads are signed by key {key.KeyId}"
                    : $"FAILED: {problem}");
                return problem is null ? ExitCodes.Success : ExitCodes.EvidenceFailed;
            });
    }

    private static Command LogProof()
    {
        var provider = new Option<string?>("--provider") { Description = "The provider's credit code, with --day." };
        var day = new Option<string?>("--day") { Description = "The settled day (yyyy-MM-dd, Asia/Shanghai), with --provider." };
        var index = new Option<ulong?>("--index") { Description = "The leaf's index, instead of --provider and --day." };
        var publicKey = PublicKey(required: true);
        var format = OutputOption.Sections("audit log-proof");
        return Client("log-proof", "Prove that a provider's settled root of a day is in the log under the latest signed head, and print the leaf; "
            + "--output json gives one object: leaf (with included and problem) and auditPath (hashes).", [provider, day, index, publicKey, format],
            async (parse, client, headers, ct) =>
            {
                ServerPublicKey key = await ReadKeyAsync(parse.GetValue(publicKey)!, ct);
                EngineTreeHead head = FromMessage(await client.GetTreeHeadAsync(new GetTreeHeadRequest(), headers, cancellationToken: ct));
                var request = new GetLogInclusionProofRequest { CreditCode = parse.GetValue(provider) ?? "", Day = parse.GetValue(day) ?? "", TreeSize = (ulong)head.TreeSize };
                if (parse.GetValue(index) is { } leafIndex)
                {
                    request.LeafIndex = leafIndex;
                }

                LogInclusionProof proof = await client.GetLogInclusionProofAsync(request, headers, cancellationToken: ct);
                TransparencyLogLeaf leaf = proof.Leaf;
                var engineLeaf = new LogLeaf(DateOnly.ParseExact(leaf.Day, "yyyy-MM-dd", CultureInfo.InvariantCulture), leaf.CreditCode, (long)leaf.LeafCount,
                    leaf.DailyRoot.ToByteArray(), leaf.SettlementSha256.ToByteArray());
                string? problem = engineLeaf.Encode().AsSpan().SequenceEqual(leaf.Encoded.Span)
                    ? LogCheck.Includes(head, (long)proof.LeafIndex, engineLeaf, proof.AuditPath.Select(h => h.ToByteArray()).ToList(), key)
                    : "the leaf's encoded bytes are not the canonical encoding of its fields";
                if (parse.GetValue(format) == OutputFormat.Json)
                {
                    var fields = new Rows(Column.DataOnly("leafIndex"), Column.DataOnly("treeSize"), Column.DataOnly("creditCode"), Column.DataOnly("day"), Column.DataOnly("leafCount"),
                        Column.DataOnly("dailyRoot"), Column.DataOnly("settlementSha256"), Column.DataOnly("headRoot"), Column.DataOnly("keyId"), Column.DataOnly("included"),
                        Column.DataOnly("problem"));
                    fields.Add(Cell.Data(proof.LeafIndex), Cell.Data(proof.TreeSize), leaf.CreditCode, leaf.Day, Cell.Data(leaf.LeafCount), Convert.ToHexStringLower(leaf.DailyRoot.Span),
                        Convert.ToHexStringLower(leaf.SettlementSha256.Span), head.RootHex, key.KeyId, Cell.Data(problem is null), Cell.Data(problem));
                    new Sections().One("leaf", fields).Many("auditPath", Hashes(proof.AuditPath)).WriteJson(Console.Out);
                    return problem is null ? ExitCodes.Success : ExitCodes.EvidenceFailed;
                }

                Console.WriteLine($"leaf {proof.LeafIndex} of {proof.TreeSize}: {leaf.CreditCode} {leaf.Day}, {leaf.LeafCount} records, daily root {Convert.ToHexStringLower(leaf.DailyRoot.Span)}");
                Console.WriteLine($"settlement hash {Convert.ToHexStringLower(leaf.SettlementSha256.Span)}");
                Console.WriteLine($"audit path: {proof.AuditPath.Count} hash(es)");
                foreach (var hash in proof.AuditPath)
                {
                    Console.WriteLine($"  {Convert.ToHexStringLower(hash.Span)}");
                }

                Console.WriteLine(problem is null ? $"OK: included under the head of size {head.TreeSize}, root {head.RootHex}, signed by key {key.KeyId}" : $"FAILED: {problem}");
                return problem is null ? ExitCodes.Success : ExitCodes.EvidenceFailed;
            });
    }

    /// <summary>A proof's hashes as rows of lower-case hex, in order.</summary>
    private static Rows Hashes(IEnumerable<Google.Protobuf.ByteString> hashes)
    {
        var rows = new Rows(Column.DataOnly("hash"));
        foreach (var hash in hashes)
        {
            rows.Add(Convert.ToHexStringLower(hash.Span));
        }

        return rows;
    }

    private static Rows Heads(params EngineTreeHead[] heads)
    {
        var rows = new Rows(Column.DataOnly("treeSize"), Column.DataOnly("root"), Column.DataOnly("timestamp"), Column.DataOnly("keyId"));
        foreach (EngineTreeHead head in heads)
        {
            rows.Add(Cell.Data(head.TreeSize), head.RootHex, Cell.Instant(head.TimestampUnixMs), head.KeyId);
        }

        return rows;
    }

    private static EngineTreeHead FromMessage(Protocol.V1.SignedTreeHead head) =>
        new((long)head.TreeSize, head.Root.ToByteArray(), head.TimestampUnixMs, head.KeyId, head.Signature.ToByteArray());

    private static async Task<ServerPublicKey> ReadKeyAsync(string path, CancellationToken cancellationToken) =>
        ServerPublicKey.FromPem(await File.ReadAllTextAsync(path, cancellationToken));

    private static void Print(EngineTreeHead head)
    {
        Console.WriteLine($"tree size:  {head.TreeSize}");
        Console.WriteLine($"root:       {head.RootHex}");
        Console.WriteLine($"time:       {Time(head.TimestampUnixMs)}");
        Console.WriteLine($"key id:     {head.KeyId}");
        Console.WriteLine($"signature:  {Convert.ToHexStringLower(head.Signature)}");
    }

    private static string Time(long unixMs) =>
        $"{DateTimeOffset.FromUnixTimeMilliseconds(unixMs).UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'", CultureInfo.InvariantCulture)} ({unixMs} ms)";
}
