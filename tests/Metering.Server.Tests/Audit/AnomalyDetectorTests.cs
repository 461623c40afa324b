using Metering.Engine.Audit;
using Metering.Engine.Capacity;
using Metering.Engine.Catalog;
using Metering.Engine.Registry;
using Metering.Engine.Time;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;
using Anomaly = Metering.Engine.Audit.Anomaly;
using AnomalyKind = Metering.Engine.Audit.AnomalyKind;
using ServiceItemAction = Metering.Engine.Registry.ServiceItemAction;
using DeclaredDevices = Metering.Protocol.V1.DeclaredDevices;

namespace Metering.Server.Tests.Audit;

/// <summary>
/// Each detector against an anomaly planted for it, through ingest or the registry as it would
/// happen, or by direct SQL as a tamperer would; and a clean period that raises nothing.
/// The test providers' admitted filing declares 256 H100-SXM at sz-nanshan-dc1, 64 at
/// sz-longgang-dc2 and 250,000 of every model at sz-test-fleet, and they have no fleet
/// validation: the capacity tests plant one (<see cref="AuditScene.PlantValidationAsync"/>) that
/// expired before the records are streamed, so that ingest takes usage the audit then judges
/// against the validation in force when it ran.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class AnomalyDetectorTests(PostgresFixture postgres)
{
    private const string Nanshan = "sz-nanshan-dc1";
    private const string Longgang = "sz-longgang-dc2";
    private const string H100 = "H100-SXM";
    private const long Hour = 3_600_000;

    /// <summary>2026-11-20T00:00Z = 08:00 in Shenzhen.</summary>
    private static readonly long Day0 = TestRecords.BaseStartMs;

    private static DateTimeOffset At(long unixMs) => DateTimeOffset.FromUnixTimeMilliseconds(unixMs);

    private static UsageRecord Record(ulong sequence, long startMs, int minutes, uint devices, params string[] uuids)
    {
        UsageRecord record = TestRecords.Valid(sequence);
        record.StartUnixMs = startMs;
        record.EndUnixMs = startMs + minutes * 60_000L;
        record.DeviceCount = devices;
        record.DeviceUuids.Clear();
        record.DeviceUuids.Add(uuids);
        record.ClearEnergyMwh();
        return record;
    }

    /// <summary>Twelve hours of five-minute records, one after another, 8 devices, each on its own UUIDs.</summary>
    private static List<UsageRecord> Steady(long startMs, int count = 144) =>
        Enumerable.Range(1, count).Select(i => Record((ulong)i, startMs + (i - 1) * 300_000L, 5, 8, $"GPU-{i % 4:D4}")).ToList();

    private static Task<IReadOnlyList<Anomaly>> DetectAsync(AuditScene scene, long fromMs, long untilMs) =>
        new AnomalyDetectors(scene.DataSource, TimeProvider.System).DetectAsync(TestRecords.Provider, At(fromMs), At(untilMs), CancellationToken.None);

    /// <summary>A validation of the test provider in force from a day before Day0 to a day after it (expired when the tests stream).</summary>
    private static Task<long> ValidatedAroundDay0Async(AuditScene scene, params (string Model, int Devices)[] fleet) =>
        scene.PlantValidationAsync(TestRecords.Provider, At(Day0 - 24 * Hour), At(Day0 + 24 * Hour), fleet);

    private static string Fact(Anomaly anomaly, string name) => Assert.Single(anomaly.Facts, f => f.Name == name).Value;

    [Fact]
    public async Task A_clean_period_raises_nothing()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await ValidatedAroundDay0Async(scene, (H100, 320));
        await scene.StreamAsync("cluster-a", Steady(Day0));
        await scene.StreamAsync("cluster-b", Steady(Day0).Select(r => { r.Site = "sz-longgang-dc2"; r.DeviceUuids[0] = r.DeviceUuids[0] + "-b"; return r; }).ToList());

        IReadOnlyList<Anomaly> anomalies = await DetectAsync(scene, Day0, Day0 + 12 * 3_600_000L);

        Assert.Empty(anomalies);
    }

    [Fact]
    public async Task Concurrent_devices_above_the_validated_fleet_are_caught_with_the_records_at_the_peak()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        long validation = await ValidatedAroundDay0Async(scene, (H100, 256));
        // 200 + 100 H100 at once against a validated 256; an hour later 200 alone is fine.
        await scene.StreamAsync("cap-a", [Record(1, Day0, 60, 200), Record(2, Day0 + 3_600_000, 60, 200)]);
        await scene.StreamAsync("cap-b", [Record(1, Day0 + 1_800_000, 20, 100)]);
        // A100s, which the validation holds none of (the filing declares 250,000).
        UsageRecord a100 = Record(1, Day0, 30, 1);
        a100.DeviceModel = "A100-SXM";
        a100.ShareNumerator = 3;
        a100.ShareDenominator = 7;
        await scene.StreamAsync("cap-c", [a100]);

        IReadOnlyList<Anomaly> anomalies = await DetectAsync(scene, Day0, Day0 + 3 * 3_600_000L);

        Anomaly h100 = Assert.Single(anomalies, a => a.Kind == AnomalyKind.CapacityExceeded && a.Facts.Contains(new Fact("device_model", H100)));
        Assert.Equal((Day0 + 1_800_000, Day0 + 3_000_000), (h100.FromUnixMs, h100.UntilUnixMs));
        Assert.Contains(new Fact("peak_devices", "300"), h100.Facts);
        Assert.Contains(new Fact("verified_devices", "256"), h100.Facts);
        Assert.Contains(new Fact("validation_id", validation.ToString(System.Globalization.CultureInfo.InvariantCulture)), h100.Facts);
        Assert.StartsWith($"fleet validation {validation} (inventory version 1)", Fact(h100, "capacity_source"), StringComparison.Ordinal);
        Assert.Equal($"300 H100-SXM devices in use at once, above the 256 validated by fleet validation {validation}", h100.Summary);
        Assert.Equal([("cap-a", 1UL), ("cap-b", 1UL)], h100.Evidence.Select(e => (e.StreamId, e.Sequence)).Order());
        // The validation bounds only the H100 it holds: the A100s are judged against the
        // declaration, as ingest judges them, and reported apart, not as above a fleet of 0.
        Assert.DoesNotContain(anomalies, a => a.Kind == AnomalyKind.CapacityExceeded && a.Facts.Contains(new Fact("device_model", "A100-SXM")));
        Anomaly none = Assert.Single(anomalies, a => a.Kind == AnomalyKind.CapacityUnvalidated);
        Assert.Equal(("A100-SXM", "0 3/7", "250000", "false"), (Fact(none, "device_model"), Fact(none, "peak_devices"), Fact(none, "declared_devices"), Fact(none, "above_declared")));
        Assert.StartsWith($"fleet validation {validation} (inventory version 1)", Fact(none, "validation_in_force"), StringComparison.Ordinal);
        Assert.Equal($"A100-SXM in use while fleet validation {validation}, in force, holds none: at most 0 3/7 device(s) at once, within the 250000 its admitted applications declare", none.Summary);
    }

    [Fact]
    public async Task Usage_within_the_declared_devices_but_above_the_validated_fleet_is_caught_over_all_sites()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await ValidatedAroundDay0Async(scene, (H100, 100));
        // 60 at Nanshan (256 declared there) and 60 at Longgang (64 declared there) for the same
        // hour: each site within its filing, 120 over the 100 the validation found.
        await scene.StreamAsync("nanshan", [Record(1, Day0, 60, 60)]);
        UsageRecord longgang = Record(1, Day0, 60, 60);
        longgang.Site = Longgang;
        await scene.StreamAsync("longgang", [longgang]);

        IReadOnlyList<Anomaly> anomalies = await DetectAsync(scene, Day0, Day0 + 2 * Hour);

        Anomaly exceeded = Assert.Single(anomalies, a => a.Kind == AnomalyKind.CapacityExceeded);
        Assert.Equal((Day0, Day0 + Hour), (exceeded.FromUnixMs, exceeded.UntilUnixMs));
        Assert.Contains(new Fact("peak_devices", "120"), exceeded.Facts);
        Assert.Contains(new Fact("verified_devices", "100"), exceeded.Facts);
        Assert.Contains(new Fact("sites", $"{Longgang}, {Nanshan}"), exceeded.Facts);
        Assert.Equal(["longgang", "nanshan"], exceeded.Evidence.Select(e => e.StreamId).Order());
    }

    [Fact]
    public async Task Usage_at_exactly_the_validated_fleet_is_not_flagged_and_a_seventh_of_a_device_more_is()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await ValidatedAroundDay0Async(scene, (H100, 100));
        await scene.StreamAsync("a", [Record(1, Day0, 60, 60)]);
        await scene.StreamAsync("b", [Record(1, Day0 + 10 * 60_000L, 30, 40)]);

        IReadOnlyList<Anomaly> atFleet = await DetectAsync(scene, Day0, Day0 + 2 * Hour);

        Assert.DoesNotContain(atFleet, a => a.Kind is AnomalyKind.CapacityExceeded or AnomalyKind.CapacityUnvalidated);

        UsageRecord slice = Record(1, Day0 + 20 * 60_000L, 5, 1);
        slice.ShareDenominator = 7;
        await scene.StreamAsync("c", [slice]);

        IReadOnlyList<Anomaly> above = await DetectAsync(scene, Day0, Day0 + 2 * Hour);

        Anomaly exceeded = Assert.Single(above, a => a.Kind == AnomalyKind.CapacityExceeded);
        Assert.Contains(new Fact("peak_devices", "100 1/7"), exceeded.Facts);
        Assert.Equal((Day0 + 20 * 60_000L, Day0 + 25 * 60_000L), (exceeded.FromUnixMs, exceeded.UntilUnixMs));
        Assert.Equal(["a", "b", "c"], exceeded.Evidence.Select(e => e.StreamId).Order());
    }

    [Fact]
    public async Task Each_instant_is_judged_against_the_validation_in_force_then_not_the_latest()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        // 100 H100 from a day before Day0 to 03:00; 300 from 02:00 (replacing the first) to
        // 04:00; none in force after; and a later validation of 10 that must not matter.
        long first = await scene.PlantValidationAsync(TestRecords.Provider, At(Day0 - 24 * Hour), At(Day0 + 3 * Hour), (H100, 100));
        long second = await scene.PlantValidationAsync(TestRecords.Provider, At(Day0 + 2 * Hour), At(Day0 + 4 * Hour), (H100, 300));
        await scene.PlantValidationAsync(TestRecords.Provider, At(Day0 + 6 * Hour), At(Day0 + 7 * Hour), (H100, 10));
        // 200 H100 from 01:00 to 03:00, across the change at 02:00; 50 from 04:30 to 05:00.
        await scene.StreamAsync("t", [Record(1, Day0 + Hour, 120, 200), Record(2, Day0 + 4 * Hour + 30 * 60_000L, 30, 50)]);

        IReadOnlyList<Anomaly> anomalies = await DetectAsync(scene, Day0, Day0 + 6 * Hour);

        Anomaly exceeded = Assert.Single(anomalies, a => a.Kind == AnomalyKind.CapacityExceeded);
        Assert.Equal((Day0 + Hour, Day0 + 2 * Hour), (exceeded.FromUnixMs, exceeded.UntilUnixMs));
        Assert.Contains(new Fact("verified_devices", "100"), exceeded.Facts);
        Assert.Contains(new Fact("validation_id", first.ToString(System.Globalization.CultureInfo.InvariantCulture)), exceeded.Facts);
        Assert.Equal([1UL], exceeded.Evidence.Select(e => e.Sequence));
        Anomaly unvalidated = Assert.Single(anomalies, a => a.Kind == AnomalyKind.CapacityUnvalidated);
        Assert.Equal((Day0 + 4 * Hour + 30 * 60_000L, Day0 + 5 * Hour), (unvalidated.FromUnixMs, unvalidated.UntilUnixMs));
        Assert.Contains(new Fact("peak_devices", "50"), unvalidated.Facts);
        Assert.StartsWith($"fleet validation {second} ", Fact(unvalidated, "previous_validation"), StringComparison.Ordinal);
        Assert.Equal([2UL], unvalidated.Evidence.Select(e => e.Sequence));
    }

    [Fact]
    public async Task Usage_while_no_validation_was_in_force_is_reported_apart_once_per_model_with_the_declared_devices()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        // No validation at all: twelve hours of 8 H100 at a time, and one A100 that SQL later
        // inflates past the 250,000 A100 the filing declares.
        await scene.StreamAsync("cluster-a", Steady(Day0));
        UsageRecord a100 = Record(1, Day0 + 2 * Hour, 30, 1);
        a100.DeviceModel = "A100-SXM";
        await scene.StreamAsync("cluster-c", [a100]);
        await scene.TamperAsync($"UPDATE usage_records SET device_count = 250001 WHERE provider_id = '{TestRecords.Provider}' AND stream_id = 'cluster-c' AND sequence = 1");

        IReadOnlyList<Anomaly> anomalies = await DetectAsync(scene, Day0, Day0 + 12 * Hour);

        Assert.DoesNotContain(anomalies, a => a.Kind == AnomalyKind.CapacityExceeded);
        var unvalidated = anomalies.Where(a => a.Kind == AnomalyKind.CapacityUnvalidated).ToList();
        Assert.Equal(["A100-SXM", H100], unvalidated.Select(a => Fact(a, "device_model")));
        Anomaly a100s = unvalidated[0];
        Assert.Equal(("250001", "250000", "true", "none"), (Fact(a100s, "peak_devices"), Fact(a100s, "declared_devices"), Fact(a100s, "above_declared"), Fact(a100s, "previous_validation")));
        Assert.Equal("A100-SXM in use with no fleet validation in force: at most 250001 device(s) at once, above the 250000 its admitted applications declare", a100s.Summary);
        Anomaly h100s = unvalidated[1];
        Assert.Equal((Day0, Day0 + 12 * Hour), (h100s.FromUnixMs, h100s.UntilUnixMs));
        Assert.Equal(("8", "250320", "false"), (Fact(h100s, "peak_devices"), Fact(h100s, "declared_devices"), Fact(h100s, "above_declared")));
        Assert.Equal([1UL], h100s.Evidence.Select(e => e.Sequence));
    }

    [Fact]
    public async Task A_validation_made_through_the_capacity_service_bounds_the_usage_that_ran_while_it_was_in_force()
    {
        // The filing declares 8 CPU fixture devices beside its 320 H100; the validated inventory
        // is one CPU fixture node, one device.
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres, capacity: new CapacitySettings { ValidationValidity = TimeSpan.FromDays(1) }, admitted: true,
            filing: f => f.Capacity.Add(new DeclaredDevices { Site = "sz-test-dc", DeviceModel = TestCatalogs.CpuFixtureModel, DeviceCount = 8 }));
        TestNode[] nodes = await scene.NodesAsync(1);
        await scene.DeclareAsync(nodes);
        FleetValidation validation = (await scene.AttestAsync(nodes[0])).Validation;
        Assert.Equal(FleetValidationState.ValidationComplete, validation.State);
        long completed = validation.CompletedUnixMs;
        // Thirty hours on the validation has expired, and ingest takes records backfilled from
        // while it was in force, judging them against the declared devices.
        scene.Clock.Advance(TimeSpan.FromHours(30));
        UsageRecord during = Record(1, completed + Hour, 60, 8);
        UsageRecord after = Record(2, completed + 26 * Hour, 60, 8);
        during.DeviceModel = after.DeviceModel = TestCatalogs.CpuFixtureModel;
        await using (IngestCall call = await IngestCall.OpenAsync(scene.Server.Client(), "backfill", RegistryScene.KeyOf(scene.Key)))
        {
            Assert.Equal(2UL, (await call.SendAsync([during, after])).CommittedSequence);
        }

        IReadOnlyList<Anomaly> anomalies = await new AnomalyDetectors(scene.Registry.DataSource, scene.Clock)
            .DetectAsync(scene.Code, At(completed), At(completed + 30 * Hour), CancellationToken.None);

        Anomaly exceeded = Assert.Single(anomalies, a => a.Kind == AnomalyKind.CapacityExceeded);
        Assert.Equal($"8 {TestCatalogs.CpuFixtureModel} devices in use at once, above the 1 validated by fleet validation {validation.ValidationId}", exceeded.Summary);
        Assert.Equal([1UL], exceeded.Evidence.Select(e => e.Sequence));
        Anomaly unvalidated = Assert.Single(anomalies, a => a.Kind == AnomalyKind.CapacityUnvalidated);
        Assert.Equal([2UL], unvalidated.Evidence.Select(e => e.Sequence));
        Assert.Contains(new Fact("declared_devices", "8"), unvalidated.Facts);
        Assert.Contains(new Fact("validation_in_force", "none"), unvalidated.Facts);
        Assert.StartsWith($"fleet validation {validation.ValidationId} ", Fact(unvalidated, "previous_validation"), StringComparison.Ordinal);
    }

    [Fact]
    public async Task One_device_uuid_in_overlapping_whole_device_records_is_caught_but_mig_slices_that_fit_are_not()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync("uuid-a", [Record(1, Day0, 60, 2, "GPU-AAAA", "GPU-BBBB"), Record(2, Day0 + 3_600_000, 60, 1, "GPU-CCCC")]);
        await scene.StreamAsync("uuid-b", [Record(1, Day0 + 600_000, 30, 2, "GPU-BBBB", "GPU-AAAA")]);
        // Three 2/7 slices of one A100 at once: 6/7 of the device, which it has.
        var slices = Enumerable.Range(1, 3).Select(i =>
        {
            UsageRecord r = Record((ulong)i, Day0, 60, 1, "GPU-MIG0");
            r.DeviceModel = "A100-SXM";
            r.ShareNumerator = 2;
            r.ShareDenominator = 7;
            r.JobId = $"mig-{i}";
            return r;
        }).ToList();
        for (int i = 0; i < slices.Count; i++)
        {
            slices[i].Sequence = 1;
            await scene.StreamAsync($"mig-{i}", [slices[i]]);
        }

        IReadOnlyList<Anomaly> anomalies = await DetectAsync(scene, Day0, Day0 + 3 * 3_600_000L);

        Anomaly booked = Assert.Single(anomalies, a => a.Kind == AnomalyKind.DeviceDoubleBooked);
        Assert.Contains("GPU-AAAA, GPU-BBBB", booked.Summary, StringComparison.Ordinal);
        Assert.Equal((Day0 + 600_000, Day0 + 2_400_000), (booked.FromUnixMs, booked.UntilUnixMs));
        Assert.Equal([("uuid-a", 1UL), ("uuid-b", 1UL)], booked.Evidence.Select(e => (e.StreamId, e.Sequence)).Order());
    }

    [Fact]
    public async Task Usage_during_a_suspension_dated_back_and_after_a_revocation_dated_back_is_caught()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync("cluster-a", Steady(Day0, 48));
        // The operator suspends from 01:00 to 02:00 UTC, after the usage was committed.
        var clock = new ManualClock(At(Day0 + 3_600_000));
        var registry = new ProviderRegistry(scene.DataSource, DeviceCatalog.LoadEmbedded(), clock, new RegistryFleetEvidence(), new RegistryProofEvidence(scene.DataSource));
        var change = new ServiceItemStatusChange(TestRecords.Provider, Admissions.ServiceItem, ServiceItemAction.Suspend, "metering review");
        await registry.ChangeServiceItemStatusAsync(Admissions.Operator, change, CancellationToken.None);
        clock.Now = At(Day0 + 2 * 3_600_000);
        await registry.ChangeServiceItemStatusAsync(Admissions.Operator, new ServiceItemStatusChange(TestRecords.Provider, Admissions.ServiceItem, ServiceItemAction.Reinstate), CancellationToken.None);

        IReadOnlyList<Anomaly> suspended = await DetectAsync(scene, Day0, Day0 + 4 * 3_600_000L);

        Anomaly during = Assert.Single(suspended, a => a.Kind == AnomalyKind.OutsideAdmission);
        Assert.Contains(new Fact("reason", "PROVIDER_SUSPENDED"), during.Facts);
        // Records 13 to 24 run from 01:00 to 02:00.
        Assert.Equal(12, during.EvidenceTotal);
        Assert.Equal(Enumerable.Range(13, 12).Select(i => (ulong)i), during.Evidence.Select(e => e.Sequence));

        // Revoked at 03:00: everything after is outside admission too.
        clock.Now = At(Day0 + 3 * 3_600_000);
        await registry.ChangeServiceItemStatusAsync(Admissions.Operator, new ServiceItemStatusChange(TestRecords.Provider, Admissions.ServiceItem, ServiceItemAction.Revoke, "false materials"), CancellationToken.None);
        IReadOnlyList<Anomaly> revoked = await DetectAsync(scene, Day0, Day0 + 4 * 3_600_000L);
        Anomaly after = Assert.Single(revoked, a => a.Kind == AnomalyKind.OutsideAdmission && a.Facts.Contains(new Fact("reason", "ADMISSION_REVOKED")));
        Assert.Equal(12, after.EvidenceTotal);
        Assert.Equal(37UL, after.Evidence[0].Sequence);
    }

    [Fact]
    public async Task A_tamper_conflict_and_a_row_changed_by_sql_are_each_caught_with_their_evidence()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync("cluster-a", Steady(Day0, 20));
        await using (IngestCall call = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a"))
        {
            UsageRecord forged = Steady(Day0, 20)[4];
            forged.DeviceCount = 7;
            await call.SendRefusedAsync([forged]);
        }

        await scene.TamperAsync($"UPDATE usage_records SET holder_code = '91440300MA5G2XK3P1' WHERE provider_id = '{TestRecords.Provider}' AND stream_id = 'cluster-a' AND sequence = 9");
        long now = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();

        IReadOnlyList<Anomaly> anomalies = await DetectAsync(scene, Day0, now + 60_000);

        Anomaly conflict = Assert.Single(anomalies, a => a.Kind == AnomalyKind.TamperConflict);
        Assert.Equal(("cluster-a", 5UL), (conflict.Evidence.Single().StreamId, conflict.Evidence.Single().Sequence));
        Assert.Contains(conflict.Facts, f => f.Name == "offered_canonical" && f.Value.Length > 100);
        Anomaly broken = Assert.Single(anomalies, a => a.Kind == AnomalyKind.ChainBroken);
        Assert.Equal(9UL, broken.Evidence.Single().Sequence);
        Assert.Contains(new Fact("kind", "HashMismatch"), broken.Facts);
    }

    [Fact]
    public async Task A_stream_silent_for_longer_than_the_threshold_is_caught_between_its_records_and_at_the_end()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        // Ten records, then three hours of nothing, then ten more, then nothing to the period's end.
        List<UsageRecord> records = Steady(Day0, 10);
        records.AddRange(Steady(Day0 + 50 * 60_000L + 3 * 3_600_000L, 10).Select(r => { r.Sequence += 10; return r; }));
        await scene.StreamAsync("cluster-a", records);

        IReadOnlyList<Anomaly> anomalies = await DetectAsync(scene, Day0, Day0 + 8 * 3_600_000L);

        var silences = anomalies.Where(a => a.Kind == AnomalyKind.SilentStream).ToList();
        Assert.Equal(2, silences.Count);
        Assert.Equal((Day0 + 50 * 60_000L, Day0 + 50 * 60_000L + 3 * 3_600_000L), (silences[0].FromUnixMs, silences[0].UntilUnixMs));
        Assert.Equal([10UL, 11UL], silences[0].Evidence.Select(e => e.Sequence));
        Assert.Equal(Day0 + 8 * 3_600_000L, silences[1].UntilUnixMs);
        Assert.Equal([20UL], silences[1].Evidence.Select(e => e.Sequence));

        // A threshold above the gaps raises nothing.
        IReadOnlyList<Anomaly> relaxed = await new AnomalyDetectors(scene.DataSource, TimeProvider.System, new DetectorSettings { Silence = TimeSpan.FromHours(5) })
            .DetectAsync(TestRecords.Provider, At(Day0), At(Day0 + 8 * 3_600_000L), CancellationToken.None);
        Assert.DoesNotContain(relaxed, a => a.Kind == AnomalyKind.SilentStream);
    }

    /// <summary>Sends a heartbeat on <paramref name="call"/> at every <paramref name="everyMs"/> of server time in [fromMs, untilMs].</summary>
    private static async Task HeartbeatsAsync(ManualClock clock, long fromMs, long untilMs, long everyMs, params IngestCall[] calls)
    {
        for (long t = fromMs; t <= untilMs; t += everyMs)
        {
            clock.Now = At(t);
            foreach (IngestCall call in calls)
            {
                Assert.True((await call.HeartbeatAsync(t)).Recorded);
            }
        }
    }

    [Fact]
    public async Task A_stream_that_sends_heartbeats_through_a_long_stretch_without_records_is_not_silent_and_one_without_them_is()
    {
        var clock = new ManualClock(At(Day0 + 50 * 60_000L));
        await using AuditScene scene = await AuditScene.StartAsync(postgres, clock);
        await using IngestCall idle = await IngestCall.OpenAsync(scene.Server.Client(), "idle");
        await using IngestCall dead = await IngestCall.OpenAsync(scene.Server.Client(), "dead");
        // Both send ten records to 00:50, nothing for six hours, then ten more; only "idle" sends
        // a heartbeat every ten minutes meanwhile.
        await idle.SendAsync(Steady(Day0, 10));
        await dead.SendAsync(Steady(Day0, 10));
        long resumeMs = Day0 + 50 * 60_000L + 6 * Hour;
        await HeartbeatsAsync(clock, Day0 + 60 * 60_000L, resumeMs - 10 * 60_000L, 10 * 60_000L, idle);
        clock.Now = At(resumeMs + 50 * 60_000L);
        await idle.SendAsync(Steady(resumeMs, 10).Select(r => { r.Sequence += 10; return r; }));
        await dead.SendAsync(Steady(resumeMs, 10).Select(r => { r.Sequence += 10; return r; }));

        IReadOnlyList<Anomaly> anomalies = await new AnomalyDetectors(scene.DataSource, clock).DetectAsync(TestRecords.Provider, At(Day0), At(resumeMs + 50 * 60_000L), CancellationToken.None);

        Anomaly silence = Assert.Single(anomalies, a => a.Kind == AnomalyKind.SilentStream);
        Assert.Equal("dead", silence.StreamId);
        Assert.Equal((Day0 + 50 * 60_000L, resumeMs), (silence.FromUnixMs, silence.UntilUnixMs));
        Assert.Equal([10UL, 11UL], silence.Evidence.Select(e => e.Sequence));
        Assert.Equal(("360", "none", "none"), (Fact(silence, "silent_minutes"), Fact(silence, "last_heartbeat_before"), Fact(silence, "first_heartbeat_after")));
        Assert.Equal("dead sent no records or heartbeats for 6 h 0 min", silence.Summary);
    }

    [Fact]
    public async Task A_gap_between_heartbeats_longer_than_the_threshold_is_a_silence_with_the_heartbeats_around_it()
    {
        var clock = new ManualClock(At(Day0 + 3 * Hour));
        await using AuditScene scene = await AuditScene.StartAsync(postgres, clock);
        await using IngestCall beats = await IngestCall.OpenAsync(scene.Server.Client(), "beats");
        await using IngestCall mixed = await IngestCall.OpenAsync(scene.Server.Client(), "mixed");
        // "beats" only ever sends heartbeats; "mixed" sends one record, from 02:50 to 02:55, first.
        // Both send heartbeats every ten minutes from 03:00 to 04:00 and from 07:00 to 08:00.
        await mixed.SendAsync([Record(1, Day0 + 170 * 60_000L, 5, 8)]);
        await HeartbeatsAsync(clock, Day0 + 3 * Hour, Day0 + 4 * Hour, 10 * 60_000L, beats, mixed);
        await HeartbeatsAsync(clock, Day0 + 7 * Hour, Day0 + 8 * Hour, 10 * 60_000L, beats, mixed);
        clock.Now = At(Day0 + 8 * Hour + 30 * 60_000L);
        Assert.Equal(28L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM stream_heartbeats"));
        var detectors = new AnomalyDetectors(scene.DataSource, clock);

        IReadOnlyList<Anomaly> anomalies = await detectors.DetectAsync(TestRecords.Provider, At(Day0), clock.Now, CancellationToken.None);

        // Nothing before 03:00 is judged for "beats": a stream is judged from its first heartbeat.
        var silences = anomalies.Where(a => a.Kind == AnomalyKind.SilentStream).ToList();
        Assert.Equal(["beats", "mixed"], silences.Select(a => a.StreamId));
        foreach (Anomaly silence in silences)
        {
            // The minute of 04:00 is covered to 04:01.
            Assert.Equal((Day0 + 4 * Hour + 60_000L, Day0 + 7 * Hour), (silence.FromUnixMs, silence.UntilUnixMs));
            Assert.Equal(("179", "2026-11-20 12:00:00 Asia/Shanghai", "2026-11-20 15:00:00 Asia/Shanghai"),
                (Fact(silence, "silent_minutes"), Fact(silence, "last_heartbeat_before"), Fact(silence, "first_heartbeat_after")));
            Assert.Equal($"{silence.StreamId} sent no records or heartbeats for 2 h 59 min", silence.Summary);
        }

        Assert.Empty(silences[0].Evidence);
        Assert.Equal([("mixed", 1UL)], silences[1].Evidence.Select(e => (e.StreamId, e.Sequence)));

        // A period that ends inside the gap ends with the silence; no heartbeat follows in it.
        IReadOnlyList<Anomaly> cut = await detectors.DetectAsync(TestRecords.Provider, At(Day0 + 3 * Hour), At(Day0 + 6 * Hour + 30 * 60_000L), CancellationToken.None);
        Anomaly toTheEnd = Assert.Single(cut, a => a.Kind == AnomalyKind.SilentStream && a.StreamId == "beats");
        Assert.Equal((Day0 + 4 * Hour + 60_000L, Day0 + 6 * Hour + 30 * 60_000L), (toTheEnd.FromUnixMs, toTheEnd.UntilUnixMs));
        Assert.Equal(("2026-11-20 12:00:00 Asia/Shanghai", "none"), (Fact(toTheEnd, "last_heartbeat_before"), Fact(toTheEnd, "first_heartbeat_after")));
        Assert.EndsWith(", to the end of the period", toTheEnd.Summary, StringComparison.Ordinal);

        // A period that starts inside the gap counts from the last heartbeat before it.
        IReadOnlyList<Anomaly> late = await detectors.DetectAsync(TestRecords.Provider, At(Day0 + 5 * Hour), At(Day0 + 8 * Hour), CancellationToken.None);
        Assert.DoesNotContain(late, a => a.Kind == AnomalyKind.SilentStream);
        IReadOnlyList<Anomaly> early = await detectors.DetectAsync(TestRecords.Provider, At(Day0 + 4 * Hour + 30 * 60_000L), At(Day0 + 8 * Hour), CancellationToken.None);
        Anomaly fromBefore = Assert.Single(early, a => a.Kind == AnomalyKind.SilentStream && a.StreamId == "beats");
        Assert.Equal((Day0 + 4 * Hour + 30 * 60_000L, Day0 + 7 * Hour), (fromBefore.FromUnixMs, fromBefore.UntilUnixMs));
        Assert.Equal("2026-11-20 12:00:00 Asia/Shanghai", Fact(fromBefore, "last_heartbeat_before"));

        // A threshold above the gap raises nothing.
        IReadOnlyList<Anomaly> relaxed = await new AnomalyDetectors(scene.DataSource, clock, new DetectorSettings { Silence = TimeSpan.FromHours(3) })
            .DetectAsync(TestRecords.Provider, At(Day0), clock.Now, CancellationToken.None);
        Assert.DoesNotContain(relaxed, a => a.Kind == AnomalyKind.SilentStream);
    }

    [Fact]
    public async Task A_day_far_above_the_providers_own_median_is_a_spike_and_an_ordinary_day_is_not()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        // Eight days with one hour of 8 H100 each (about 7.9 PFLOPS·h), then a day with 200 H100
        // for an hour (about 197.9 PFLOPS·h), then an ordinary day again.
        long first = Day0 - 9 * 86_400_000L;
        var records = new List<UsageRecord>();
        for (int day = 0; day < 10; day++)
        {
            records.Add(Record((ulong)day + 1, first + day * 86_400_000L, 60, day == 8 ? 200u : 8u));
        }

        await scene.StreamAsync("cluster-a", records);
        DateOnly spikeDay = ShanghaiTime.DateOf(At(first + 8 * 86_400_000L));

        IReadOnlyList<Anomaly> anomalies = await DetectAsync(scene, ShanghaiTime.StartOf(spikeDay).ToUnixTimeMilliseconds(), ShanghaiTime.StartOf(spikeDay.AddDays(2)).ToUnixTimeMilliseconds());

        Anomaly spike = Assert.Single(anomalies, a => a.Kind == AnomalyKind.UsageSpike);
        Assert.Contains(new Fact("day", spikeDay.ToString("yyyy-MM-dd", System.Globalization.CultureInfo.InvariantCulture)), spike.Facts);
        Assert.Contains(new Fact("baseline_days", "8"), spike.Facts);
        Assert.Equal(9UL, spike.Evidence[0].Sequence);
    }

    [Fact]
    public async Task Rows_tampered_by_sql_are_caught_by_the_chain_check_and_by_the_detector_of_what_they_fake()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await ValidatedAroundDay0Async(scene, (H100, 256));
        await scene.StreamAsync("cluster-a", Steady(Day0, 24));
        await scene.StreamAsync("cluster-b", Steady(Day0, 24).Select(r => { r.DeviceUuids[0] = "GPU-B" + r.Sequence; return r; }).ToList());
        string where = $"provider_id = '{TestRecords.Provider}' AND stream_id = 'cluster-b'";
        // Inflated devices, and a device UUID moved onto another stream's running device.
        await scene.TamperAsync($"UPDATE usage_records SET device_count = 300 WHERE {where} AND sequence = 3");
        await scene.TamperAsync($"UPDATE usage_records SET device_uuids = ARRAY['GPU-0002'] WHERE {where} AND sequence = 10");

        IReadOnlyList<Anomaly> anomalies = await DetectAsync(scene, Day0, Day0 + 2 * 3_600_000L);

        Assert.Equal(3UL, Assert.Single(anomalies, a => a.Kind == AnomalyKind.ChainBroken).Evidence.Single().Sequence);
        Assert.Contains(("cluster-b", 3UL), Assert.Single(anomalies, a => a.Kind == AnomalyKind.CapacityExceeded).Evidence.Select(e => (e.StreamId, e.Sequence)));
        Assert.Equal([("cluster-a", 10UL), ("cluster-b", 10UL)], Assert.Single(anomalies, a => a.Kind == AnomalyKind.DeviceDoubleBooked).Evidence.Select(e => (e.StreamId, e.Sequence)).Order());
    }
}
