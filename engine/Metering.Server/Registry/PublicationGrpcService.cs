using System.Collections.Concurrent;
using Grpc.Core;
using Metering.Engine.Registry;
using Metering.Protocol.V1;

namespace Metering.Server.Registry;

/// <summary>
/// The public notice and the admitted list, served without a key (publication.proto). Each list,
/// and the set of batch ids, is cached for <see cref="CacheFor"/>: an anonymous reader costs the
/// database at most one query per list and per 30 seconds, and a made-up batch id none, since it
/// is refused from the cached set.
/// </summary>
internal sealed class PublicationGrpcService(Publication publication, TimeProvider time) : PublicationService.PublicationServiceBase
{
    /// <summary>How long a list is served from memory; the proto promises at most this staleness.</summary>
    public static readonly TimeSpan CacheFor = TimeSpan.FromSeconds(30);

    /// <summary>Most lists cached at once: one per batch and kind, and batch ids are checked before any caching.</summary>
    private const int CachedListsMax = 256;

    private readonly ConcurrentDictionary<string, (long ReadAt, PublishedList List)> _cache = new(StringComparer.Ordinal);

    private readonly SemaphoreSlim _refresh = new(1, 1);

    private (long ReadAt, HashSet<string> Ids)? _batches;

    public override Task<PublishedList> GetPublicNotice(GetPublicNoticeRequest request, ServerCallContext context) =>
        CachedAsync("notice:" + request.BatchId, request.BatchId, ct => publication.NoticeAsync(request.BatchId, ct), context.CancellationToken);

    public override Task<PublishedList> GetAdmittedList(GetAdmittedListRequest request, ServerCallContext context) =>
        CachedAsync("admitted:" + request.BatchId, request.BatchId,
            ct => publication.AdmittedAsync(request.BatchId.Length == 0 ? null : request.BatchId, ct), context.CancellationToken);

    private async Task<PublishedList> CachedAsync(string key, string batchId, Func<CancellationToken, Task<IReadOnlyList<PublishedItem>>> read, CancellationToken cancellationToken)
    {
        long now = time.GetTimestamp();
        if (_cache.TryGetValue(key, out var cached) && time.GetElapsedTime(cached.ReadAt, now) < CacheFor)
        {
            return cached.List;
        }

        IReadOnlyList<PublishedItem> items;
        // One reader refreshes at a time, so that an expired entry costs one query, not one per waiting caller.
        await _refresh.WaitAsync(cancellationToken);
        try
        {
            if (_cache.TryGetValue(key, out cached) && time.GetElapsedTime(cached.ReadAt, time.GetTimestamp()) < CacheFor)
            {
                return cached.List;
            }

            if (batchId.Length > 0)
            {
                Names.CheckBatchId(batchId);
                if (!(await BatchIdsAsync(cancellationToken)).Contains(batchId))
                {
                    throw new RegistryRefusedException(RegistryRefusalReason.BatchUnknown, $"no admission batch '{batchId}'");
                }
            }

            items = await read(cancellationToken);
        }
        catch (RegistryRefusedException refused)
        {
            throw Errors.From(refused);
        }
        finally
        {
            _refresh.Release();
        }

        var list = new PublishedList { AsOfUnixMs = time.GetUtcNow().ToUnixTimeMilliseconds(), BatchId = batchId, Entries = { items.Select(ToMessage) } };
        if (_cache.Count >= CachedListsMax)
        {
            _cache.Clear();
        }

        _cache[key] = (now, list);
        return list;
    }

    private async Task<HashSet<string>> BatchIdsAsync(CancellationToken cancellationToken)
    {
        if (_batches is { } known && time.GetElapsedTime(known.ReadAt) < CacheFor)
        {
            return known.Ids;
        }

        var ids = new HashSet<string>(await publication.BatchIdsAsync(cancellationToken), StringComparer.Ordinal);
        _batches = (time.GetTimestamp(), ids);
        return ids;
    }

    private static PublishedEntry ToMessage(PublishedItem item) => new()
    {
        CreditCode = item.CreditCode,
        Name = item.Name,
        ServiceItem = item.ServiceItem,
        BatchId = item.BatchId,
        DeclaredFp16Gflops = item.DeclaredFp16Gflops,
        VerifiedFp16Gflops = item.VerifiedFp16Gflops ?? 0,
        NoticeEndsUnixMs = item.NoticeEndsAt?.ToUnixTimeMilliseconds() ?? 0,
        NoticeNumber = item.NoticeNumber ?? "",
        ValidFromUnixMs = item.ValidFrom?.ToUnixTimeMilliseconds() ?? 0,
        ValidUntilUnixMs = item.ValidUntil?.ToUnixTimeMilliseconds() ?? 0,
        Suspended = item.Suspended,
    };
}
