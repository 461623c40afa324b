using Metering.Engine.Ingest;
using Metering.Protocol.V1;

namespace Metering.Engine.Tests.Registry;

public sealed class AdmissionSnapshotTests
{
    private const long Hour = 3_600_000;
    private const string Provider = "914403001922038216";

    // Admitted from hour 10 to hour 100 (expiry), suspended from hour 40 to hour 50.
    private static AdmissionSnapshot Snapshot(IngestRefusalReason end = IngestRefusalReason.AdmissionExpired, long untilHours = 100, bool openSuspension = false) => new(
        Provider, registered: true, epoch: 3,
        [new AdmissionSnapshot.Interval(10 * Hour, untilHours * Hour, end, "gpu-training", 7)],
        [new AdmissionSnapshot.Suspension(40 * Hour, openSuspension ? long.MaxValue : 50 * Hour, "late logs", 7)]);

    [Theory]
    [InlineData(10, 11)]
    [InlineData(39, 40)]
    [InlineData(50, 51)]
    [InlineData(99, 100)]
    public void A_record_inside_the_admission_and_outside_the_suspension_is_taken(long startHour, long endHour)
    {
        Assert.False(Snapshot().Check(1, startHour * Hour, endHour * Hour).IsRefused);
    }

    [Theory]
    [InlineData(39, 41)]
    [InlineData(45, 46)]
    [InlineData(49, 51)]
    public void A_record_touching_the_suspension_is_refused_as_suspended(long startHour, long endHour)
    {
        var refusal = Snapshot().Check(5, startHour * Hour, endHour * Hour);
        Assert.Equal(IngestRefusalReason.ProviderSuspended, refusal.Reason);
        Assert.StartsWith("record 5: ", refusal.Message, StringComparison.Ordinal);
        Assert.Contains("late logs", refusal.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(IngestRefusalReason.AdmissionExpired)]
    [InlineData(IngestRefusalReason.AdmissionWithdrawn)]
    [InlineData(IngestRefusalReason.AdmissionRevoked)]
    public void A_record_running_past_the_end_names_how_the_admission_ended(IngestRefusalReason end)
    {
        Assert.Equal(end, Snapshot(end).Check(1, 99 * Hour, 101 * Hour).Reason);
        Assert.Equal(end, Snapshot(end).Check(1, 120 * Hour, 121 * Hour).Reason);
    }

    [Fact]
    public void A_record_before_the_admission_or_from_an_unadmitted_provider_is_not_admitted()
    {
        Assert.Equal(IngestRefusalReason.ProviderNotAdmitted, Snapshot().Check(1, 9 * Hour, 11 * Hour).Reason);
        var none = new AdmissionSnapshot(Provider, registered: true, epoch: 0, [], []);
        Assert.Equal(IngestRefusalReason.ProviderNotAdmitted, none.Check(1, 0, Hour).Reason);
    }

    [Fact]
    public void An_open_suspension_refuses_everything_after_its_start()
    {
        Assert.Equal(IngestRefusalReason.ProviderSuspended, Snapshot(openSuspension: true).Check(1, 80 * Hour, 81 * Hour).Reason);
        Assert.False(Snapshot(openSuspension: true).Check(1, 30 * Hour, 31 * Hour).IsRefused);
    }

    [Fact]
    public void A_suspension_of_one_item_does_not_stop_usage_another_item_covers()
    {
        var snapshot = new AdmissionSnapshot(Provider, registered: true, epoch: 1,
            [
                new AdmissionSnapshot.Interval(0, 100 * Hour, IngestRefusalReason.AdmissionExpired, "gpu-training", 1),
                new AdmissionSnapshot.Interval(0, 100 * Hour, IngestRefusalReason.AdmissionExpired, "inference", 2),
            ],
            [new AdmissionSnapshot.Suspension(10 * Hour, long.MaxValue, "training only", 1)]);

        Assert.False(snapshot.Check(1, 20 * Hour, 21 * Hour).IsRefused);
    }
}
