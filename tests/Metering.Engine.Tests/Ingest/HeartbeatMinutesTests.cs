using Metering.Engine.Ingest;

namespace Metering.Engine.Tests.Ingest;

public sealed class HeartbeatMinutesTests
{
    /// <summary>2026-11-20T00:00Z, a minute boundary.</summary>
    private const long Minute0 = 1_795_132_800_000;

    [Fact]
    public void Only_the_first_heartbeat_of_a_minute_is_written()
    {
        var minutes = new HeartbeatMinutes(perMinuteMax: 60);

        Assert.Equal(HeartbeatDecision.Record, minutes.Take(Minute0 + 1_000, out long first));
        minutes.Recorded(first);
        Assert.Equal(Minute0, first);
        for (int second = 2; second < 60; second++)
        {
            Assert.Equal(HeartbeatDecision.AlreadyRecorded, minutes.Take(Minute0 + second * 1_000L, out long same));
            Assert.Equal(Minute0, same);
        }

        Assert.Equal(HeartbeatDecision.Record, minutes.Take(Minute0 + 60_000, out long next));
        Assert.Equal(Minute0 + 60_000, next);
    }

    [Fact]
    public void A_minute_whose_write_did_not_complete_is_written_by_the_next_heartbeat()
    {
        var minutes = new HeartbeatMinutes(perMinuteMax: 60);

        Assert.Equal(HeartbeatDecision.Record, minutes.Take(Minute0, out _));
        Assert.Equal(HeartbeatDecision.Record, minutes.Take(Minute0 + 500, out _));
    }

    [Fact]
    public void Heartbeats_past_the_per_minute_bound_are_refused_until_the_next_minute()
    {
        var minutes = new HeartbeatMinutes(perMinuteMax: 3);
        minutes.Recorded(Minute0);

        Assert.Equal(HeartbeatDecision.AlreadyRecorded, minutes.Take(Minute0 + 1, out _));
        Assert.Equal(HeartbeatDecision.AlreadyRecorded, minutes.Take(Minute0 + 2, out _));
        Assert.Equal(HeartbeatDecision.AlreadyRecorded, minutes.Take(Minute0 + 3, out _));
        Assert.Equal(HeartbeatDecision.TooFrequent, minutes.Take(Minute0 + 4, out _));
        Assert.Equal(HeartbeatDecision.TooFrequent, minutes.Take(Minute0 + 59_999, out _));
        Assert.Equal(HeartbeatDecision.Record, minutes.Take(Minute0 + 60_000, out _));
    }

    [Fact]
    public void A_clock_stepped_back_into_an_earlier_minute_counts_that_minute_afresh()
    {
        var minutes = new HeartbeatMinutes(perMinuteMax: 2);
        Assert.Equal(HeartbeatDecision.Record, minutes.Take(Minute0 + 60_000, out long later));
        minutes.Recorded(later);

        // The earlier minute may be on record already; the table's ON CONFLICT DO NOTHING keeps one row.
        Assert.Equal(HeartbeatDecision.Record, minutes.Take(Minute0 + 59_000, out long earlier));
        Assert.Equal(Minute0, earlier);
    }

    [Theory]
    [InlineData(Minute0, Minute0)]
    [InlineData(Minute0 + 59_999, Minute0)]
    [InlineData(Minute0 + 60_000, Minute0 + 60_000)]
    public void A_minute_starts_on_a_whole_minute_since_the_epoch(long unixMs, long minuteMs)
    {
        Assert.Equal(minuteMs, HeartbeatMinutes.MinuteOf(unixMs));
    }

    [Fact]
    public void The_bound_must_allow_at_least_one_heartbeat()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new HeartbeatMinutes(perMinuteMax: 0));
    }
}
