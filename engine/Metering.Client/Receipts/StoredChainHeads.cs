using Grpc.Core;
using Metering.Protocol.V1;

namespace Metering.Client.Receipts;

/// <summary>What the server's database holds for one stream at the sequences asked for, and the stream's committed mark.</summary>
public sealed record StoredHeads(ulong CommittedSequence, IReadOnlyDictionary<ulong, StoredChainHash> BySequence);

/// <summary>
/// Fetches the chain hashes the database holds at a receipt's sequences (AuditService.GetChainHashes),
/// the other half of checking a receipt after its signature: a rewritten row no longer yields the
/// head the receipt signed.
/// </summary>
public static class StoredChainHeads
{
    /// <summary>Sequences per GetChainHashes call: the server's limit per call (audit.proto).</summary>
    public const int SequencesPerCall = 256;

    /// <summary>The stored hashes of <paramref name="streamId"/> at <paramref name="sequences"/>, asked for in calls of at most <see cref="SequencesPerCall"/>.</summary>
    public static async Task<StoredHeads> FetchAsync(AuditService.AuditServiceClient client, Metadata headers, string providerId, string streamId,
        IEnumerable<ulong> sequences, CancellationToken cancellationToken)
    {
        var hashes = new Dictionary<ulong, StoredChainHash>();
        ulong committed = 0;
        foreach (ulong[] chunk in sequences.Distinct().Order().Chunk(SequencesPerCall))
        {
            var request = new GetChainHashesRequest { CreditCode = providerId, StreamId = streamId, Sequences = { chunk } };
            GetChainHashesResponse answer = await client.GetChainHashesAsync(request, headers, cancellationToken: cancellationToken);
            committed = answer.CommittedSequence;
            foreach (StoredChainHash hash in answer.Hashes)
            {
                hashes[hash.Sequence] = hash;
            }
        }

        return new StoredHeads(committed, hashes);
    }
}
