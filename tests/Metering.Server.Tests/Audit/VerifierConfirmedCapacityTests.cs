using System.Globalization;
using Dapper;
using Metering.Engine.Audit;
using Metering.Engine.Capacity;
using Metering.Engine.Ingest;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;
using Npgsql;
using Anomaly = Metering.Engine.Audit.Anomaly;
using AnomalyKind = Metering.Engine.Audit.AnomalyKind;

namespace Metering.Server.Tests.Audit;

/// <summary>
/// The audit's capacity detectors take the fleet as ingest does, per model: where no validation
/// in force covers a model, the devices the commissioned verifier confirmed for it bound it, and
/// the anomaly names that source. The test provider's filing declares 250,000 Ascend 910B, so
/// ingest takes 100 at once before the verifier's figure is recorded; the figure (64) then
/// judges them.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class VerifierConfirmedCapacityTests(PostgresFixture postgres)
{
    private const string Ascend = "ASCEND-910B";
    private static readonly long Day0 = TestRecords.BaseStartMs;

    [Fact]
    public async Task Usage_above_the_devices_the_commissioned_verifier_confirmed_is_caught_naming_the_verifier_as_its_source()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync("ascend-a", [Ascend910B(1, Day0, 60, 100), Ascend910B(2, Day0 + 2 * 3_600_000L, 60, 64)]);
        long applicationId = await RecordVerifierPartAsync(scene.DataSource, TestRecords.Provider, devices: 64);

        IReadOnlyList<Anomaly> anomalies = await new AnomalyDetectors(scene.DataSource, TimeProvider.System)
            .DetectAsync(TestRecords.Provider, DateTimeOffset.FromUnixTimeMilliseconds(Day0), DateTimeOffset.FromUnixTimeMilliseconds(Day0 + 4 * 3_600_000L), CancellationToken.None);

        // The first hour's 100 are above the 64 confirmed; the later 64 are exactly the figure.
        Anomaly above = Assert.Single(anomalies, a => a.Kind == AnomalyKind.CapacityExceeded);
        Assert.Equal((Day0, Day0 + 3_600_000L), (above.FromUnixMs, above.UntilUnixMs));
        string source = $"{FleetSnapshot.VerifierSource} for application {applicationId.ToString(CultureInfo.InvariantCulture)}";
        Assert.Equal((Ascend, "100", "64", source, "none"),
            (Fact(above, "device_model"), Fact(above, "peak_devices"), Fact(above, "verified_devices"), Fact(above, "capacity_source"), Fact(above, "validation_in_force")));
        Assert.Equal($"100 {Ascend} devices in use at once, above the 64 confirmed by the commissioned verifier ({source})", above.Summary);
        // Judged against the verifier's figure, not reported as unvalidated against the declaration.
        Assert.DoesNotContain(anomalies, a => a.Kind == AnomalyKind.CapacityUnvalidated);
    }

    [Fact]
    public async Task Without_a_verifier_part_the_unvalidated_anomaly_names_the_declaration_as_its_source()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await scene.StreamAsync("ascend-a", [Ascend910B(1, Day0, 60, 100)]);

        IReadOnlyList<Anomaly> anomalies = await new AnomalyDetectors(scene.DataSource, TimeProvider.System)
            .DetectAsync(TestRecords.Provider, DateTimeOffset.FromUnixTimeMilliseconds(Day0), DateTimeOffset.FromUnixTimeMilliseconds(Day0 + 2 * 3_600_000L), CancellationToken.None);

        Anomaly unvalidated = Assert.Single(anomalies, a => a.Kind == AnomalyKind.CapacityUnvalidated);
        Assert.Equal(FleetSnapshot.DeclaredSource, Fact(unvalidated, "capacity_source"));
        Assert.DoesNotContain(anomalies, a => a.Kind == AnomalyKind.CapacityExceeded);
    }

    /// <summary>
    /// Records the commissioned verifier's part for Ascend 910B on the provider's admitted
    /// application, under its latest verification stage, as the verification stage writes it.
    /// </summary>
    private static async Task<long> RecordVerifierPartAsync(NpgsqlDataSource dataSource, string provider, long devices)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync();
        return await connection.ExecuteScalarAsync<long>("""
            INSERT INTO verification_parts (provider_id, application_id, stage_no, part_no, source, device_model, devices, fp16_gflops)
            SELECT s.provider_id, s.application_id, max(s.stage_no), 1, 'verifier', @model, @devices, @devices * 320000
            FROM application_stages s JOIN applications a USING (provider_id, application_id)
            WHERE s.provider_id = @provider AND a.state = 'admitted' AND s.stage = 'verification'
            GROUP BY s.provider_id, s.application_id
            RETURNING application_id
            """, new { provider, model = Ascend, devices });
    }

    private static UsageRecord Ascend910B(ulong sequence, long startMs, int minutes, uint devices)
    {
        UsageRecord record = TestRecords.Valid(sequence);
        record.DeviceModel = Ascend;
        record.StartUnixMs = startMs;
        record.EndUnixMs = startMs + minutes * 60_000L;
        record.DeviceCount = devices;
        record.DeviceUuids.Clear();
        record.ClearEnergyMwh();
        return record;
    }

    private static string Fact(Anomaly anomaly, string name) => Assert.Single(anomaly.Facts, f => f.Name == name).Value;
}
