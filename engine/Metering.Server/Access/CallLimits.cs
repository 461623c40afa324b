using System.Globalization;
using System.Net;
using System.Threading.RateLimiting;
using Grpc.Core;
using Metering.Engine.Registry;
using Metering.Engine.Time;
using Metering.Protocol.V1;
using Microsoft.Extensions.Logging;

namespace Metering.Server.Access;

/// <summary>
/// Limits on what one caller may hold or do, checked at start-up. A caller is a key's subject:
/// a provider's keys share its limits, so issuing it more keys does not raise them. Defaults
/// suit a large provider (hundreds of streams, all reconnecting at once after a restart) while
/// keeping one key from growing the stream table or taking the database's connections.
/// proto/metering/v1/limits.md documents each, with its refusal reason.
/// </summary>
public sealed record CallLimits
{
    /// <summary>Ingest streams one caller holds open at once.</summary>
    public int StreamsPerKeyMax { get; init; } = 512;

    /// <summary>Distinct stream ids one caller opens in one day (Asia/Shanghai); reopening an id opened that day is free.</summary>
    public int StreamIdsPerDayMax { get; init; } = 4_096;

    /// <summary>Stream opens one caller makes per minute, as a token bucket of this size refilled over the minute.</summary>
    public int StreamOpensPerMinuteMax { get; init; } = 1_200;

    /// <summary>Audit calls one caller has running at once.</summary>
    public int AuditCallsInFlightMax { get; init; } = 4;

    /// <summary>Keys that turn out not to be valid, per peer (client IP) per minute, as a token bucket; past it the peer's calls are refused without a look-up.</summary>
    public int UnknownKeysPerPeerPerMinuteMax { get; init; } = 30;

    /// <summary>How long a key's look-up result (valid or not) is reused; revocation reaches new calls within this.</summary>
    public int AuthenticationCacheMs { get; init; } = 2_000;

    /// <summary>Most look-up results the cache holds; past it the cache is emptied and refilled.</summary>
    public int AuthenticationCacheEntriesMax { get; init; } = 10_000;

    public void Validate()
    {
        Check(StreamsPerKeyMax, 1, 100_000, nameof(StreamsPerKeyMax));
        Check(StreamIdsPerDayMax, 1, 10_000_000, nameof(StreamIdsPerDayMax));
        Check(StreamOpensPerMinuteMax, 1, 1_000_000, nameof(StreamOpensPerMinuteMax));
        Check(AuditCallsInFlightMax, 1, 1_024, nameof(AuditCallsInFlightMax));
        Check(UnknownKeysPerPeerPerMinuteMax, 1, 1_000_000, nameof(UnknownKeysPerPeerPerMinuteMax));
        Check(AuthenticationCacheMs, 0, 60_000, nameof(AuthenticationCacheMs));
        Check(AuthenticationCacheEntriesMax, 1, 10_000_000, nameof(AuthenticationCacheEntriesMax));
    }

    private static void Check(int value, int min, int max, string name)
    {
        if (value < min || value > max)
        {
            throw new ArgumentOutOfRangeException(name, value, $"{name} must be between {min.ToString("N0", CultureInfo.InvariantCulture)} and {max.ToString("N0", CultureInfo.InvariantCulture)}.");
        }
    }
}

/// <summary>
/// Enforces <see cref="CallLimits"/> with the framework's rate limiters, one partition per caller
/// or peer (idle partitions are dropped by the limiter itself). A refusal is RESOURCE_EXHAUSTED
/// with the limit's reason and changes nothing.
/// </summary>
internal sealed partial class CallLimiter : IDisposable
{
    private readonly CallLimits _limits;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;
    private readonly PartitionedRateLimiter<string> _streams;
    private readonly PartitionedRateLimiter<string> _opens;
    private readonly PartitionedRateLimiter<string> _audits;
    private readonly PartitionedRateLimiter<string> _unknownKeys;
    private readonly Lock _streamIdsLock = new();
    private readonly Dictionary<string, (DateOnly Day, HashSet<string> Ids)> _streamIds = new(StringComparer.Ordinal);

    public CallLimiter(CallLimits limits, TimeProvider time, ILogger<CallLimiter> logger)
    {
        limits.Validate();
        _limits = limits;
        _time = time;
        _logger = logger;
        _streams = PartitionedRateLimiter.Create<string, string>(caller => RateLimitPartition.GetConcurrencyLimiter(caller,
            _ => new ConcurrencyLimiterOptions { PermitLimit = limits.StreamsPerKeyMax, QueueLimit = 0 }));
        _audits = PartitionedRateLimiter.Create<string, string>(caller => RateLimitPartition.GetConcurrencyLimiter(caller,
            _ => new ConcurrencyLimiterOptions { PermitLimit = limits.AuditCallsInFlightMax, QueueLimit = 0 }));
        _opens = PartitionedRateLimiter.Create<string, string>(caller => RateLimitPartition.GetTokenBucketLimiter(caller, _ => PerMinute(limits.StreamOpensPerMinuteMax)));
        _unknownKeys = PartitionedRateLimiter.Create<string, string>(peer => RateLimitPartition.GetTokenBucketLimiter(peer, _ => PerMinute(limits.UnknownKeysPerPeerPerMinuteMax)));
    }

    public CallLimits Limits => _limits;

    /// <summary>
    /// Admits one more stream of <paramref name="caller"/> named <paramref name="streamId"/>:
    /// the open counts against the minute's bucket, the id against the day's, and the returned
    /// lease holds one of the caller's concurrent streams until it is disposed.
    /// </summary>
    public IDisposable AdmitStream(string caller, string streamId)
    {
        using (RateLimitLease open = _opens.AttemptAcquire(caller))
        {
            if (!open.IsAcquired)
            {
                throw Refused(LimitRefusal.StreamOpensPerMinuteExceeded, _limits.StreamOpensPerMinuteMax, "opens per minute",
                    $"{caller} opened {_limits.StreamOpensPerMinuteMax} streams within a minute; wait before reconnecting");
            }
        }

        RateLimitLease stream = _streams.AttemptAcquire(caller);
        if (!stream.IsAcquired)
        {
            stream.Dispose();
            throw Refused(LimitRefusal.StreamsPerKeyExceeded, _limits.StreamsPerKeyMax, "streams",
                $"{caller} already holds {_limits.StreamsPerKeyMax} streams open; close one before opening another");
        }

        if (!CountStreamId(caller, streamId))
        {
            stream.Dispose();
            throw Refused(LimitRefusal.StreamIdsPerDayExceeded, _limits.StreamIdsPerDayMax, "stream ids per day",
                $"{caller} opened {_limits.StreamIdsPerDayMax} distinct stream ids today (Asia/Shanghai); reuse a stream id or wait for the next day");
        }

        return stream;
    }

    /// <summary>Holds one of the caller's audit calls in flight until disposed.</summary>
    public IDisposable AdmitAuditCall(string caller)
    {
        RateLimitLease lease = _audits.AttemptAcquire(caller);
        if (!lease.IsAcquired)
        {
            lease.Dispose();
            throw Refused(LimitRefusal.AuditCallsInFlightExceeded, _limits.AuditCallsInFlightMax, "calls",
                $"{caller} already has {_limits.AuditCallsInFlightMax} audit calls running; wait for one to finish");
        }

        return lease;
    }

    /// <summary>Takes a token from <paramref name="peer"/>'s bucket for looking up a key not seen valid lately; false when the bucket is empty.</summary>
    public bool TakeUnknownKeyToken(string peer)
    {
        using RateLimitLease lease = _unknownKeys.AttemptAcquire(peer);
        return lease.IsAcquired;
    }

    public RpcException UnknownKeysRefusal(string peer) =>
        Refused(LimitRefusal.UnknownKeysPerPeerExceeded, _limits.UnknownKeysPerPeerPerMinuteMax, "unknown keys per minute",
            $"{peer} had {_limits.UnknownKeysPerPeerPerMinuteMax} keys not seen valid looked up within a minute; keys not seen valid are refused from it for a while",
            log: false);

    /// <summary>The client's IP address, or gRPC's peer string when the transport has none.</summary>
    public static string PeerOf(ServerCallContext context) =>
        context.GetHttpContext().Connection.RemoteIpAddress is IPAddress address ? address.ToString() : context.Peer;

    private bool CountStreamId(string caller, string streamId)
    {
        DateOnly today = ShanghaiTime.DateOf(_time.GetUtcNow());
        lock (_streamIdsLock)
        {
            if (!_streamIds.TryGetValue(caller, out var opened) || opened.Day != today)
            {
                opened = (today, new HashSet<string>(StringComparer.Ordinal));
                _streamIds[caller] = opened;
            }

            return opened.Ids.Contains(streamId) || (opened.Ids.Count < _limits.StreamIdsPerDayMax && opened.Ids.Add(streamId));
        }
    }

    /// <summary>
    /// A bucket of <paramref name="perMinute"/> tokens refilled over a minute. The period stays at
    /// a second or more, as the partitioned limiter refills on a timer of its own, a period at a
    /// time; a rate that is not a multiple of 60 refills slightly faster (rounded up per second).
    /// </summary>
    private static TokenBucketRateLimiterOptions PerMinute(int perMinute) => new()
    {
        TokenLimit = perMinute,
        TokensPerPeriod = perMinute >= 60 ? (perMinute + 59) / 60 : 1,
        ReplenishmentPeriod = perMinute >= 60 ? TimeSpan.FromSeconds(1) : TimeSpan.FromMinutes(1) / perMinute,
        QueueLimit = 0,
        AutoReplenishment = true,
    };

    /// <param name="log">
    /// False for the unknown-key refusal: a peer cycling through bogus keys would otherwise turn
    /// each refused call into a log line, the flood the limit is there to stop.
    /// </param>
    private RpcException Refused(LimitRefusal reason, int limit, string unit, string message, bool log = true)
    {
        if (log)
        {
            LogRefused(_logger, ProtocolNames.Of(reason), message);
        }

        return Errors.Refused(StatusCode.ResourceExhausted, ProtocolNames.Of(reason), message, new Dictionary<string, string>
        {
            ["limit"] = limit.ToString(CultureInfo.InvariantCulture),
            ["unit"] = unit,
        });
    }

    [LoggerMessage(EventId = 7001, Level = LogLevel.Warning, Message = "Limit refused a call: {Reason}: {Detail}")]
    private static partial void LogRefused(ILogger logger, string reason, string detail);

    public void Dispose()
    {
        _streams.Dispose();
        _opens.Dispose();
        _audits.Dispose();
        _unknownKeys.Dispose();
    }
}
