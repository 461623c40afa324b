namespace Metering.Engine.Sandbox;

/// <summary>
/// A sandbox's clock: real time plus an offset that only grows. Everything the engine times reads
/// it through <see cref="TimeProvider"/>, so moving it forward moves notice periods, admission
/// windows, the end of a day and the ages of records together. Elapsed-time measurements (timers,
/// timestamps) stay real: a timeout is still five seconds long.
/// </summary>
public sealed class SimulatedClock(long offsetMs) : TimeProvider
{
    private long _offsetMs = offsetMs >= 0 ? offsetMs : throw new ArgumentOutOfRangeException(nameof(offsetMs), offsetMs, "the offset is never negative");

    /// <summary>How far ahead of real time this clock runs, in milliseconds.</summary>
    public long OffsetMs => Volatile.Read(ref _offsetMs);

    public override DateTimeOffset GetUtcNow() => System.GetUtcNow().AddMilliseconds(OffsetMs);

    public override TimeZoneInfo LocalTimeZone => System.LocalTimeZone;

    public override long TimestampFrequency => System.TimestampFrequency;

    public override long GetTimestamp() => System.GetTimestamp();

    /// <summary>Takes a stored offset; one behind the current is ignored, since the clock never goes back.</summary>
    public void MoveTo(long offsetMs)
    {
        long current = Volatile.Read(ref _offsetMs);
        while (offsetMs > current)
        {
            long seen = Interlocked.CompareExchange(ref _offsetMs, offsetMs, current);
            if (seen == current)
            {
                return;
            }

            current = seen;
        }
    }
}
