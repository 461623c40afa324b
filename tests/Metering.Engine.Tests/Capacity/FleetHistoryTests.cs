using Metering.Engine.Capacity;
using Metering.Engine.Ingest;

namespace Metering.Engine.Tests.Capacity;

/// <summary>Which validated fleet is in force when: the rule ingest and the audit share.</summary>
public sealed class FleetHistoryTests
{
    private const long Hour = 3_600_000;

    private static ValidatedFleet Validation(long id, long completedHour, long expiresHour, long h100) =>
        new(id, (int)id, completedHour * Hour, expiresHour * Hour, new Dictionary<string, long> { ["H100-SXM"] = h100 });

    [Fact]
    public void A_validation_is_in_force_from_its_completion_until_just_before_its_expiry()
    {
        FleetHistory history = FleetHistory.Of([Validation(1, 10, 20, 100)]);

        Assert.Null(history.InForceAt(10 * Hour - 1));
        Assert.Equal(1, history.InForceAt(10 * Hour)?.ValidationId);
        Assert.Equal(1, history.InForceAt(20 * Hour - 1)?.ValidationId);
        Assert.Null(history.InForceAt(20 * Hour));
    }

    [Fact]
    public void A_later_completion_replaces_the_validation_in_force_at_once()
    {
        FleetHistory history = FleetHistory.Of([Validation(2, 15, 40, 300), Validation(1, 10, 30, 100)]);

        Assert.Equal(100, history.InForceAt(14 * Hour)!.DevicesOf("H100-SXM"));
        Assert.Equal(300, history.InForceAt(15 * Hour)!.DevicesOf("H100-SXM"));
        Assert.Equal(0, history.InForceAt(15 * Hour)!.DevicesOf("A100-SXM"));
    }

    [Fact]
    public void An_expired_latest_validation_is_not_replaced_by_an_earlier_unexpired_one()
    {
        // Validity was shortened between the two: the earlier runs to hour 50, the later to hour 25.
        FleetHistory history = FleetHistory.Of([Validation(1, 10, 50, 100), Validation(2, 15, 25, 300)]);

        Assert.Equal(2, history.InForceAt(24 * Hour)?.ValidationId);
        Assert.Null(history.InForceAt(25 * Hour));
    }

    [Fact]
    public void Of_two_validations_completed_at_the_same_instant_the_higher_id_is_in_force()
    {
        FleetHistory history = FleetHistory.Of([Validation(8, 10, 20, 300), Validation(7, 10, 20, 100)]);

        Assert.Equal(8, history.InForceAt(10 * Hour)?.ValidationId);
    }

    [Fact]
    public void Stretches_cut_a_span_where_the_validation_in_force_changes_and_cover_it_whole()
    {
        FleetHistory history = FleetHistory.Of([Validation(1, 10, 30, 100), Validation(2, 20, 40, 300), Validation(3, 60, 70, 50)]);

        IReadOnlyList<FleetStretch> stretches = history.Stretches(5 * Hour, 65 * Hour);

        Assert.Equal(
            [(5L, 10L, (long?)null), (10, 20, 1), (20, 40, 2), (40, 60, null), (60, 65, 3)],
            stretches.Select(s => (s.FromUnixMs / Hour, s.UntilUnixMs / Hour, s.Fleet?.ValidationId)));
    }

    [Fact]
    public void A_span_inside_one_validation_is_one_stretch_and_an_empty_history_is_one_stretch_without_a_fleet()
    {
        FleetHistory history = FleetHistory.Of([Validation(1, 10, 30, 100)]);

        Assert.Equal([(12L, 18L, (long?)1)], history.Stretches(12 * Hour, 18 * Hour).Select(s => (s.FromUnixMs / Hour, s.UntilUnixMs / Hour, s.Fleet?.ValidationId)));
        Assert.Equal([(12L, 18L, (long?)null)], FleetHistory.None.Stretches(12 * Hour, 18 * Hour).Select(s => (s.FromUnixMs / Hour, s.UntilUnixMs / Hour, s.Fleet?.ValidationId)));
        Assert.Empty(history.Stretches(18 * Hour, 18 * Hour));
    }

    [Fact]
    public void Ingest_takes_the_validation_in_force_at_the_commit_and_the_declared_devices_without_one()
    {
        var fleet = new FleetSnapshot(FleetHistory.Of([Validation(4, 10, 20, 100)]), new Dictionary<string, long> { ["H100-SXM"] = 320 });

        Assert.Equal((320L, FleetSnapshot.DeclaredSource), fleet.DevicesOf("H100-SXM", 9 * Hour));
        Assert.Equal((100L, "fleet validation 4"), fleet.DevicesOf("H100-SXM", 10 * Hour));
        Assert.Equal((320L, FleetSnapshot.DeclaredSource), fleet.DevicesOf("H100-SXM", 20 * Hour));
    }

    [Fact]
    public void A_model_the_validation_in_force_does_not_hold_is_bounded_by_its_declaration_and_one_declared_nowhere_by_zero()
    {
        var fleet = new FleetSnapshot(FleetHistory.Of([Validation(4, 10, 20, 100)]), new Dictionary<string, long> { ["H100-SXM"] = 320, ["ASCEND-910B"] = 64 });

        Assert.Equal((100L, "fleet validation 4"), fleet.DevicesOf("H100-SXM", 12 * Hour));
        Assert.Equal((64L, FleetSnapshot.DeclaredSource), fleet.DevicesOf("ASCEND-910B", 12 * Hour));
        Assert.Equal((0L, FleetSnapshot.DeclaredSource), fleet.DevicesOf("A100-SXM", 12 * Hour));
    }

    [Fact]
    public void Where_no_validation_covers_a_model_the_devices_the_commissioned_verifier_confirmed_bound_it_before_the_declaration()
    {
        var confirmed = new Dictionary<string, (long, string)>
        {
            ["ASCEND-910B"] = (48, $"{FleetSnapshot.VerifierSource} for application 7"),
            ["H100-SXM"] = (300, $"{FleetSnapshot.VerifierSource} for application 7"),
        };
        var fleet = new FleetSnapshot(FleetHistory.Of([Validation(4, 10, 20, 100)]), new Dictionary<string, long> { ["H100-SXM"] = 320, ["ASCEND-910B"] = 64, ["MI300X"] = 8 }, confirmed);

        // The validation in force wins for the model it holds; the verifier's figure counts only
        // while no validation in force covers the model.
        Assert.Equal((100L, "fleet validation 4"), fleet.DevicesOf("H100-SXM", 12 * Hour));
        Assert.Equal((300L, $"{FleetSnapshot.VerifierSource} for application 7"), fleet.DevicesOf("H100-SXM", 25 * Hour));
        Assert.Equal((48L, $"{FleetSnapshot.VerifierSource} for application 7"), fleet.DevicesOf("ASCEND-910B", 12 * Hour));
        Assert.Equal((8L, FleetSnapshot.DeclaredSource), fleet.DevicesOf("MI300X", 12 * Hour));
    }
}
