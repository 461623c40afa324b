using Grpc.Core;
using Metering.Engine.Capacity;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Capacity;

/// <summary>
/// Ingest refuses usage that more devices of a model than the provider's fleet would be needed
/// for, counted over all its streams, second by second, in exact fractions; and takes everything
/// that fits. The scene's provider declared 320 H100 SXM and nothing else.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class FleetPlausibilityTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Usage_up_to_the_fleet_over_all_streams_is_taken_and_one_device_more_is_refused()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (_, key, _) = await scene.AdmitAsync();
        DateTimeOffset ten = scene.Clock.Now.AddHours(10);
        scene.Clock.Now = ten.AddHours(3);
        string provider = RegistryScene.KeyOf(key);
        await using IngestCall a = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a", provider);
        await using IngestCall b = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-b", provider);
        await using IngestCall c = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-c", provider);

        await a.SendAsync([At(1, ten, TimeSpan.FromHours(1), 200)]);
        await b.SendAsync([At(1, ten.AddMinutes(30), TimeSpan.FromMinutes(15), 120)]);
        RpcException error = await c.SendRefusedAsync([At(1, ten.AddMinutes(40), TimeSpan.FromMinutes(20), 1), At(2, ten.AddMinutes(44), TimeSpan.FromMinutes(10), 1)]);

        Assert.Equal((StatusCode.FailedPrecondition, "CONCURRENCY_ABOVE_FLEET"), (error.StatusCode, IngestCall.Reason(error)));
        Assert.Equal("1", IngestCall.Metadata(error, "sequence"));
        Assert.Contains("321.00 H100-SXM devices at once", error.Status.Detail, StringComparison.Ordinal);
        Assert.Contains("fleet holds 320 (the devices its admitted applications declared)", error.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT committed_sequence FROM ingest_streams WHERE stream_id = 'cluster-c'"));

        // The moment cluster-b's record ends (its end is exclusive), the device is free.
        await using IngestCall again = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-c", provider);
        Assert.Equal(1UL, (await again.SendAsync([At(1, ten.AddMinutes(45), TimeSpan.FromMinutes(15), 120)])).CommittedSequence);
    }

    [Fact]
    public async Task Streams_that_race_for_the_last_devices_are_ordered_and_together_never_exceed_the_fleet()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (_, key, _) = await scene.AdmitAsync();
        DateTimeOffset start = scene.Clock.Now.AddHours(1);
        scene.Clock.Now = start.AddHours(2);
        string provider = RegistryScene.KeyOf(key);
        var calls = new List<IngestCall>();
        for (int i = 0; i < 8; i++)
        {
            calls.Add(await IngestCall.OpenAsync(scene.Server.Client(), $"race-{i}", provider));
        }

        // Eight commits of 50 devices each at once against a fleet of 320: each reads the sums,
        // adds its own and writes them back, so two that read the same sums would both pass.
        bool[] taken = await Task.WhenAll(calls.Select(async call =>
        {
            try
            {
                await call.SendAsync([At(1, start, TimeSpan.FromHours(1), 50)]);
                return true;
            }
            catch (RpcException refused)
            {
                Assert.Equal("CONCURRENCY_ABOVE_FLEET", IngestCall.Reason(refused));
                return false;
            }
        }));

        Assert.Equal(6, taken.Count(t => t));
        Assert.Equal(300L, await scene.Server.ScalarAsync<long>("SELECT max(l) FROM usage_concurrency, unnest(levels) AS l"));
        foreach (IngestCall call in calls)
        {
            await call.DisposeAsync();
        }
    }

    [Fact]
    public async Task Shares_add_up_exactly_in_fractions_over_all_their_denominators()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (_, key, _) = await scene.AdmitAsync();
        DateTimeOffset start = scene.Clock.Now.AddHours(1);
        scene.Clock.Now = start.AddHours(2);
        await using IngestCall call = await IngestCall.OpenAsync(scene.Server.Client(), "mig", RegistryScene.KeyOf(key));
        var records = new List<UsageRecord> { At(1, start, TimeSpan.FromHours(1), 318) };
        // Three thirds and seven sevenths of a device: exactly two more, 320 in all.
        for (ulong i = 0; i < 3; i++)
        {
            records.Add(At(2 + i, start, TimeSpan.FromHours(1), 1, 1, 3));
        }

        for (ulong i = 0; i < 7; i++)
        {
            records.Add(At(5 + i, start, TimeSpan.FromHours(1), 1, 1, 7));
        }

        Assert.Equal(11UL, (await call.SendAsync(records)).CommittedSequence);
        RpcException error = await call.SendRefusedAsync([At(12, start.AddMinutes(59), TimeSpan.FromMinutes(5), 1, 1, 1000)]);

        Assert.Equal("CONCURRENCY_ABOVE_FLEET", IngestCall.Reason(error));
        Assert.Contains("320.00 H100-SXM", error.Status.Detail, StringComparison.Ordinal);
        await using IngestCall later = await IngestCall.OpenAsync(scene.Server.Client(), "mig", RegistryScene.KeyOf(key));
        Assert.Equal(12UL, (await later.SendAsync([At(12, start.AddHours(1), TimeSpan.FromMinutes(5), 1, 1, 1000)])).CommittedSequence);
    }

    [Fact]
    public async Task A_whole_fleet_handed_from_one_job_to_the_next_within_a_second_is_not_counted_twice()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (_, key, _) = await scene.AdmitAsync();
        DateTimeOffset start = scene.Clock.Now.AddHours(1);
        scene.Clock.Now = start.AddHours(2);
        await using IngestCall a = await IngestCall.OpenAsync(scene.Server.Client(), "a", RegistryScene.KeyOf(key));
        await using IngestCall b = await IngestCall.OpenAsync(scene.Server.Client(), "b", RegistryScene.KeyOf(key));

        await a.SendAsync([At(1, start, TimeSpan.FromMilliseconds(300_400), 320)]);
        await b.SendAsync([At(1, start.AddMilliseconds(300_400), TimeSpan.FromMinutes(5), 320)]);

        Assert.Equal(2L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id IN ('a', 'b')"));
    }

    [Fact]
    public async Task A_model_the_provider_has_none_of_is_refused()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (_, key, _) = await scene.AdmitAsync();
        DateTimeOffset start = scene.Clock.Now.AddHours(1);
        scene.Clock.Now = start.AddHours(2);
        await using IngestCall call = await IngestCall.OpenAsync(scene.Server.Client(), "a100", RegistryScene.KeyOf(key));

        RpcException error = await call.SendRefusedAsync([At(1, start, TimeSpan.FromMinutes(5), 1, model: "A100-SXM")]);

        Assert.Equal("CONCURRENCY_ABOVE_FLEET", IngestCall.Reason(error));
        Assert.Contains("its fleet holds 0", error.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_completed_fleet_validation_bounds_the_models_it_holds_until_it_expires_and_an_open_stream_sees_it_at_once()
    {
        var capacity = new CapacitySettings { ValidationValidity = TimeSpan.FromDays(1) };
        // The filing declares 4 CPU fixture devices beside its 320 H100.
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres, capacity: capacity, admitted: true,
            filing: f => f.Capacity.Add(new DeclaredDevices { Site = "sz-test-dc", DeviceModel = TestCatalogs.CpuFixtureModel, DeviceCount = 4 }));
        DateTimeOffset start = scene.Clock.Now.AddHours(1);
        scene.Clock.Now = start.AddHours(2);
        string provider = RegistryScene.KeyOf(scene.Key);
        await using IngestCall open = await IngestCall.OpenAsync(scene.Server.Client(), "before", provider);
        Assert.Equal(1UL, (await open.SendAsync([At(1, start, TimeSpan.FromMinutes(5), 3, model: TestCatalogs.CpuFixtureModel)])).CommittedSequence);

        // The validated inventory is one CPU fixture node: one device of that model, and no H100.
        TestNode[] nodes = await scene.NodesAsync(1);
        await scene.DeclareAsync(nodes);
        FleetValidation validation = (await scene.AttestAsync(nodes[0])).Validation;
        Assert.Equal(FleetValidationState.ValidationComplete, validation.State);

        RpcException error = await open.SendRefusedAsync([At(2, start.AddMinutes(10), TimeSpan.FromMinutes(5), 2, model: TestCatalogs.CpuFixtureModel)]);
        Assert.Equal("CONCURRENCY_ABOVE_FLEET", IngestCall.Reason(error));
        Assert.Contains($"its fleet holds 1 (fleet validation {validation.ValidationId})", error.Status.Detail, StringComparison.Ordinal);

        // The model the validation does not hold stays bounded by the declaration, not by 0.
        await using IngestCall h100 = await IngestCall.OpenAsync(scene.Server.Client(), "h100", provider);
        Assert.Equal(1UL, (await h100.SendAsync([At(1, start.AddMinutes(10), TimeSpan.FromMinutes(5), 320)])).CommittedSequence);

        scene.Clock.Advance(TimeSpan.FromDays(1));
        await using IngestCall after = await IngestCall.OpenAsync(scene.Server.Client(), "before", provider);
        Assert.Equal(2UL, (await after.SendAsync([At(2, start.AddMinutes(10), TimeSpan.FromMinutes(5), 2, model: TestCatalogs.CpuFixtureModel)])).CommittedSequence);
    }

    private static UsageRecord At(ulong sequence, DateTimeOffset start, TimeSpan duration, uint devices, uint numerator = 1, uint denominator = 1, string model = "H100-SXM") => new()
    {
        Sequence = sequence,
        JobId = $"job-{sequence}",
        HolderCode = TestRecords.Holder,
        DeviceModel = model,
        DeviceCount = devices,
        ShareNumerator = numerator,
        ShareDenominator = denominator,
        StartUnixMs = start.ToUnixTimeMilliseconds(),
        EndUnixMs = (start + duration).ToUnixTimeMilliseconds(),
        Site = "sz-nanshan-dc1",
    };
}
