using System.Diagnostics;

namespace Metering.Engine.Ingest;

/// <summary>What to do with one heartbeat.</summary>
internal enum HeartbeatDecision
{
    /// <summary>The first heartbeat of its minute: write the minute.</summary>
    Record,

    /// <summary>The minute is on record already: answer without touching the database.</summary>
    AlreadyRecorded,

    /// <summary>The stream has sent its most heartbeats in this minute: refuse.</summary>
    TooFrequent,
}

/// <summary>
/// One stream's heartbeat bookkeeping, by the server's clock: which minute was last written, and
/// how many heartbeats arrived in the current minute. It keeps one database write per stream and
/// minute (on one connection; a reconnect within the minute writes again, and the table's
/// ON CONFLICT DO NOTHING keeps one row) and a bound on heartbeats per minute. A clock stepped
/// back into an earlier minute simply starts counting that minute afresh. Not thread-safe: a
/// stream has a single writer.
/// </summary>
internal sealed class HeartbeatMinutes
{
    public const long MinuteMs = 60_000;

    private readonly int _perMinuteMax;
    private long _currentMinuteMs = long.MinValue;
    private int _inCurrentMinute;
    private long _recordedMinuteMs = long.MinValue;

    public HeartbeatMinutes(int perMinuteMax)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(perMinuteMax, 1);
        _perMinuteMax = perMinuteMax;
    }

    /// <summary>The start of the minute that holds <paramref name="unixMs"/>.</summary>
    public static long MinuteOf(long unixMs)
    {
        Debug.Assert(unixMs >= 0, "The server's clock is after 1970.");
        return unixMs - unixMs % MinuteMs;
    }

    /// <summary>Counts a heartbeat that arrived at <paramref name="serverUnixMs"/> and says what to do with it.</summary>
    public HeartbeatDecision Take(long serverUnixMs, out long minuteMs)
    {
        minuteMs = MinuteOf(serverUnixMs);
        if (minuteMs != _currentMinuteMs)
        {
            _currentMinuteMs = minuteMs;
            _inCurrentMinute = 0;
        }

        if (_inCurrentMinute == _perMinuteMax)
        {
            return HeartbeatDecision.TooFrequent;
        }

        _inCurrentMinute++;
        return minuteMs == _recordedMinuteMs ? HeartbeatDecision.AlreadyRecorded : HeartbeatDecision.Record;
    }

    /// <summary>The minute is durably on record; later heartbeats in it need no write.</summary>
    public void Recorded(long minuteMs) => _recordedMinuteMs = minuteMs;
}
