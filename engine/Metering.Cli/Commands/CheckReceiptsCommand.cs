using System.CommandLine;
using System.Globalization;
using Grpc.Core;
using Grpc.Net.Client;
using Metering.Client.Receipts;
using Metering.Engine.Signing;
using Metering.Protocol.V1;
using Receipt = Metering.Engine.Signing.Receipt;

namespace Metering.Cli.Commands;

/// <summary>
/// `metering audit check-receipts FILE`: a provider's or an auditor's check that the server's
/// signed receipts still hold. Each receipt's signature must verify under a trusted public key,
/// and the database must still hold exactly the receipt's chain head at its sequence. A talk with
/// a running server over gRPC, as the caller its key names; the checker trusts the server for
/// nothing but the stored hashes it reports, which the signatures then hold to account.
/// </summary>
internal static class CheckReceiptsCommand
{
    /// <summary>Receipts one run reads; a file past it is split or checked in parts.</summary>
    private const int ReceiptsMax = 10_000_000;

    public static Command Create()
    {
        var file = new Argument<FileInfo>("file") { Description = "The receipts, JSON Lines, one receipt per line (as the provider agent's --receipts keeps them)." };
        var connection = new ServerConnection();
        var publicKeys = new Option<FileInfo[]>("--public-key")
        {
            Description = "PEM file with a public key the receipts may be signed with, as the bureau publishes it; repeat for several. "
                + "Without it, the server's current key is fetched, which trusts the server for the key.",
        };
        var command = new Command("check-receipts", "Check saved receipts: every signature against the server's published key, every chain head against what the database holds now at that sequence. Exits 0 when all hold, 3 naming the first that does not.\n\n" + ExitCodes.Table)
        {
            file, publicKeys,
        };
        connection.AddTo(command);
        command.SetAction(async (parse, cancellationToken) =>
        {
            string? key = connection.ResolveApiKey(parse);
            if (key is null)
            {
                return Fail($"give --api-key or set {ServerConnection.ApiKeyVariable}");
            }

            List<SavedReceipt> saved;
            List<ServerPublicKey>? trusted = null;
            try
            {
                saved = await SavedReceipts.ReadAsync(parse.GetValue(file)!.FullName, ReceiptsMax, cancellationToken);
                if (parse.GetValue(publicKeys) is { Length: > 0 } pems)
                {
                    trusted = [.. pems.Select(pem => ServerPublicKey.FromPem(File.ReadAllText(pem.FullName)))];
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or SigningKeyException or FormatException)
            {
                return Fail(e.Message);
            }

            if (!connection.TryOpen(parse, out GrpcChannel? opened, out string? error))
            {
                return Fail(error);
            }

            using GrpcChannel channel = opened;
            var client = new AuditService.AuditServiceClient(channel);
            Metadata headers = ServerConnection.Bearer(key);
            try
            {
                if (trusted is null)
                {
                    SigningKey published = await client.GetSigningKeyAsync(new GetSigningKeyRequest(), headers, cancellationToken: cancellationToken);
                    trusted = [ServerPublicKey.FromPem(published.PublicKeyPem)];
                    Console.Error.WriteLine($"Checking against the server's current key {published.KeyId}; pin the bureau's published key with --public-key.");
                }

                return await CheckAsync(client, headers, saved, new ReceiptVerifier(trusted), cancellationToken);
            }
            catch (RpcException e)
            {
                return ClientCommand.Refused(e, parse.GetValue(connection.Server)!);
            }
            catch (SigningKeyException e)
            {
                return Fail($"the server's published key: {e.Message}");
            }
        });
        return command;
    }

    private static async Task<int> CheckAsync(AuditService.AuditServiceClient client, Metadata headers, List<SavedReceipt> saved, ReceiptVerifier verifier, CancellationToken cancellationToken)
    {
        // First every signature, so that only receipts the server really signed are looked up.
        var decoded = new Receipt?[saved.Count];
        var failures = new string?[saved.Count];
        for (int i = 0; i < saved.Count; i++)
        {
            ReceiptSignatureCheck check = verifier.Check(new SignedReceipt(saved[i].Signed, saved[i].Signature, saved[i].KeyId), out decoded[i], out string detail);
            failures[i] = check switch
            {
                ReceiptSignatureCheck.Valid => Disagreement(saved[i], decoded[i]!),
                ReceiptSignatureCheck.Malformed => $"not a receipt: {detail}",
                _ => detail,
            };
        }

        // Two genuine receipts that name different heads at one sequence prove a rewrite between
        // them on their own, whatever the database holds now: the later one is reported.
        var firstSeen = new Dictionary<(string Provider, string Stream, ulong Sequence), int>();
        for (int i = 0; i < saved.Count; i++)
        {
            if (failures[i] is not null)
            {
                continue;
            }

            Receipt receipt = decoded[i]!;
            if (!firstSeen.TryAdd((receipt.ProviderId, receipt.StreamId, receipt.Sequence), i)
                && decoded[firstSeen[(receipt.ProviderId, receipt.StreamId, receipt.Sequence)]]!.ChainHead is byte[] earlier
                && !earlier.AsSpan().SequenceEqual(receipt.ChainHead))
            {
                failures[i] = $"receipts disagree at sequence {receipt.Sequence}: line {saved[firstSeen[(receipt.ProviderId, receipt.StreamId, receipt.Sequence)]].Line} says {Convert.ToHexStringLower(earlier)}, this one says {Convert.ToHexStringLower(receipt.ChainHead)}";
            }
        }

        // Then the stored hashes, per stream, in calls of at most the server's limit.
        var stored = new Dictionary<(string Provider, string Stream), StoredHeads>();
        foreach (var stream in Enumerable.Range(0, saved.Count).Where(i => failures[i] is null).GroupBy(i => (decoded[i]!.ProviderId, decoded[i]!.StreamId)))
        {
            stored[stream.Key] = await StoredChainHeads.FetchAsync(client, headers, stream.Key.ProviderId, stream.Key.StreamId, stream.Select(i => decoded[i]!.Sequence), cancellationToken);
        }

        for (int i = 0; i < saved.Count; i++)
        {
            if (failures[i] is not null)
            {
                continue;
            }

            Receipt receipt = decoded[i]!;
            StoredHeads heads = stored[(receipt.ProviderId, receipt.StreamId)];
            StoredChainHash? hash = heads.BySequence.GetValueOrDefault(receipt.Sequence);
            failures[i] = ReceiptVerifier.StoredHeadProblem(receipt, hash?.Stored == true, hash?.Duplicated == true,
                hash is null ? default : hash.ChainHash.Span, heads.CommittedSequence);
        }

        int failed = failures.Count(f => f is not null);
        if (failed > 0)
        {
            int first = Array.FindIndex(failures, f => f is not null);
            Console.WriteLine($"FAILED: receipt at line {saved[first].Line} ({Describe(saved[first], decoded[first])}): {failures[first]}");
            Console.WriteLine($"{failed:N0} of {saved.Count:N0} receipts fail; the first is shown.");
            return ExitCodes.EvidenceFailed;
        }

        var streams = decoded.GroupBy(r => (r!.ProviderId, r.StreamId)).Select(g => $"{g.Key.ProviderId}/{g.Key.StreamId} up to {g.Max(r => r!.Sequence):N0}");
        Console.WriteLine($"{saved.Count:N0} receipts hold: every signature verifies and the database holds every head ({string.Join(", ", streams)}).");
        return 0;
    }

    /// <summary>The readable fields beside the signed bytes must say what the bytes say: a reader of the file trusts them.</summary>
    private static string? Disagreement(SavedReceipt saved, Receipt receipt)
    {
        if (saved.StreamId is not null && saved.StreamId != receipt.StreamId)
        {
            return $"the file says stream '{saved.StreamId}' beside signed bytes for stream '{receipt.StreamId}'";
        }

        if (saved.Sequence is ulong sequence && sequence != receipt.Sequence)
        {
            return $"the file says sequence {sequence} beside signed bytes for sequence {receipt.Sequence}";
        }

        string head = Convert.ToHexStringLower(receipt.ChainHead);
        return saved.ChainHeadHex is not null && !string.Equals(saved.ChainHeadHex, head, StringComparison.OrdinalIgnoreCase)
            ? $"the file says chain head {saved.ChainHeadHex} beside signed bytes for head {head}"
            : null;
    }

    private static string Describe(SavedReceipt saved, Receipt? receipt) => receipt is not null
        ? $"{receipt.ProviderId}/{receipt.StreamId} #{receipt.Sequence}"
        : $"{saved.StreamId ?? "?"} #{saved.Sequence?.ToString(CultureInfo.InvariantCulture) ?? "?"}";

    private static int Fail(string message)
    {
        Console.Error.WriteLine($"error: {message}");
        return 2;
    }
}
