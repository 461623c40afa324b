using System.Collections.Concurrent;
using Grpc.Core;
using Metering.Engine.Registry;
using Metering.Protocol.V1;

namespace Metering.Server.Registry;

/// <summary>
/// The public notice and the admitted list, served without a key (publication.proto). Each list
/// is cached for <see cref="CacheFor"/> so that anonymous readers cost the database little.
/// </summary>
internal sealed class PublicationGrpcService(Publication publication, TimeProvider time) : PublicationService.PublicationServiceBase
{
    /// <summary>How long a list is served from memory; the proto promises at most this staleness.</summary>
    public static readonly TimeSpan CacheFor = TimeSpan.FromSeconds(30);

    /// <summary>Most lists cached at once: one per batch and kind, and batch ids are checked before any caching.</summary>
    private const int CachedListsMax = 256;

    private readonly ConcurrentDictionary<string, (long ReadAt, PublishedList List)> _cache = new(StringComparer.Ordinal);

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
        try
        {
            items = await read(cancellationToken);
        }
        catch (RegistryRefusedException refused)
        {
            throw Errors.From(refused);
        }

        var list = new PublishedList { AsOfUnixMs = time.GetUtcNow().ToUnixTimeMilliseconds(), BatchId = batchId, Entries = { items.Select(ToMessage) } };
        if (_cache.Count >= CachedListsMax)
        {
            _cache.Clear();
        }

        _cache[key] = (now, list);
        return list;
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
