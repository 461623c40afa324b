using Grpc.Core;
using Metering.Engine.Capacity;
using Metering.Engine.Ingest;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Capacity;

/// <summary>
/// The fleet that bounds concurrent usage at ingest is always enforced, per model: a validation in
/// force bounds the models its inventory holds, and every other model is bounded by the admitted
/// declaration (0 where none declares it). Played as the provider that wants more usage than its
/// devices can give: 1,001 H100 against 1,000 declared, two overlapping records of 600, an A100
/// it never declared, and, with a validation of its probeable nodes, more devices than either its
/// validation or its declaration holds.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class FleetBoundTests(PostgresFixture postgres)
{
    private const string Ascend = "ASCEND-910B";

    [Fact]
    public async Task Without_a_validation_one_device_over_the_declaration_is_refused_and_exactly_the_declaration_is_taken()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key, _) = await scene.AdmitAsync(DeclareThousandH100);
        DateTimeOffset start = scene.Clock.Now.AddHours(1);
        scene.Clock.Now = start.AddHours(3);

        await using IngestCall cheat = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a", RegistryScene.KeyOf(key));
        RpcException error = await cheat.SendRefusedAsync([At(1, start, TimeSpan.FromHours(1), 1_001)]);

        Assert.Equal((StatusCode.FailedPrecondition, "CONCURRENCY_ABOVE_FLEET"), (error.StatusCode, IngestCall.Reason(error)));
        Assert.Contains("1001.00 H100-SXM devices at once", error.Status.Detail, StringComparison.Ordinal);
        Assert.Contains($"its fleet holds 1000 ({FleetSnapshot.DeclaredSource})", error.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(0L, await UsageRowsAsync(scene, code));

        await using IngestCall honest = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a", RegistryScene.KeyOf(key));
        Assert.Equal(1UL, (await honest.SendAsync([At(1, start, TimeSpan.FromHours(1), 1_000)])).CommittedSequence);
        Assert.Equal(1L, await UsageRowsAsync(scene, code));
    }

    [Fact]
    public async Task Without_a_validation_two_overlapping_records_that_together_exceed_the_declaration_are_refused_in_one_batch_and_across_streams()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key, _) = await scene.AdmitAsync(DeclareThousandH100);
        DateTimeOffset start = scene.Clock.Now.AddHours(1);
        scene.Clock.Now = start.AddHours(3);
        string provider = RegistryScene.KeyOf(key);

        await using IngestCall both = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a", provider);
        RpcException together = await both.SendRefusedAsync([At(1, start, TimeSpan.FromHours(1), 600), At(2, start.AddMinutes(30), TimeSpan.FromHours(1), 600)]);
        Assert.Equal("CONCURRENCY_ABOVE_FLEET", IngestCall.Reason(together));
        Assert.Equal("1", IngestCall.Metadata(together, "sequence"));
        Assert.Contains("1200.00 H100-SXM devices at once", together.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(0L, await UsageRowsAsync(scene, code));

        await using IngestCall a = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a", provider);
        await using IngestCall b = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-b", provider);
        Assert.Equal(1UL, (await a.SendAsync([At(1, start, TimeSpan.FromHours(1), 600)])).CommittedSequence);
        RpcException across = await b.SendRefusedAsync([At(1, start.AddMinutes(30), TimeSpan.FromHours(1), 600)]);
        Assert.Equal("CONCURRENCY_ABOVE_FLEET", IngestCall.Reason(across));
        Assert.Contains($"1200.00 H100-SXM devices at once over all its streams; its fleet holds 1000 ({FleetSnapshot.DeclaredSource})", across.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(1L, await UsageRowsAsync(scene, code));
    }

    [Fact]
    public async Task Without_a_validation_a_model_the_provider_never_declared_is_refused()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key, _) = await scene.AdmitAsync(DeclareThousandH100);
        DateTimeOffset start = scene.Clock.Now.AddHours(1);
        scene.Clock.Now = start.AddHours(3);

        await using IngestCall call = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a", RegistryScene.KeyOf(key));
        RpcException error = await call.SendRefusedAsync([At(1, start, TimeSpan.FromMinutes(5), 1, "A100-SXM")]);

        Assert.Equal("CONCURRENCY_ABOVE_FLEET", IngestCall.Reason(error));
        Assert.Contains($"1.00 A100-SXM devices at once over all its streams; its fleet holds 0 ({FleetSnapshot.DeclaredSource})", error.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(0L, await UsageRowsAsync(scene, code));
    }

    [Fact]
    public async Task With_a_validation_of_its_probeable_nodes_both_kinds_ingest_and_each_is_bounded_by_its_own_figure()
    {
        // The provider declares 4 probeable devices (the CPU fixture model stands for its NVIDIA
        // nodes) and 64 Ascend 910B, which the probe cannot reach; it validates one probeable node.
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres, admitted: true, filing: f =>
        {
            f.Capacity.Add(new DeclaredDevices { Site = "sz-test-dc", DeviceModel = TestCatalogs.CpuFixtureModel, DeviceCount = 4 });
            f.Capacity.Add(new DeclaredDevices { Site = "sz-ascend-dc", DeviceModel = Ascend, DeviceCount = 64 });
        });
        TestNode[] nodes = await scene.NodesAsync(1);
        await scene.DeclareAsync(nodes);
        FleetValidation validation = (await scene.AttestAsync(nodes[0])).Validation;
        Assert.Equal(FleetValidationState.ValidationComplete, validation.State);
        DateTimeOffset start = scene.Clock.Now.AddHours(1);
        scene.Clock.Now = start.AddHours(3);
        string provider = RegistryScene.KeyOf(scene.Key);

        await using IngestCall a = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a", provider);
        Assert.Equal(2UL, (await a.SendAsync([At(1, start, TimeSpan.FromHours(1), 1, TestCatalogs.CpuFixtureModel), At(2, start, TimeSpan.FromHours(1), 64, Ascend)])).CommittedSequence);

        // One probeable device more is over the validated 1, though the declaration says 4.
        await using IngestCall b = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-b", provider);
        RpcException probeable = await b.SendRefusedAsync([At(1, start.AddMinutes(10), TimeSpan.FromMinutes(5), 1, TestCatalogs.CpuFixtureModel)]);
        Assert.Equal("CONCURRENCY_ABOVE_FLEET", IngestCall.Reason(probeable));
        Assert.Contains($"2.00 {TestCatalogs.CpuFixtureModel} devices at once over all its streams; its fleet holds 1 (fleet validation {validation.ValidationId})",
            probeable.Status.Detail, StringComparison.Ordinal);

        // The validation does not cover Ascend: its declaration bounds it, not 0.
        await using IngestCall c = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-b", provider);
        RpcException ascend = await c.SendRefusedAsync([At(1, start.AddMinutes(10), TimeSpan.FromMinutes(5), 1, Ascend)]);
        Assert.Equal("CONCURRENCY_ABOVE_FLEET", IngestCall.Reason(ascend));
        Assert.Contains($"65.00 {Ascend} devices at once over all its streams; its fleet holds 64 ({FleetSnapshot.DeclaredSource})", ascend.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(2L, await UsageRowsAsync(scene.Registry, scene.Code));

        // Ascend usage outside the first hour fits the 64 again.
        await using IngestCall d = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-b", provider);
        Assert.Equal(1UL, (await d.SendAsync([At(1, start.AddHours(1), TimeSpan.FromMinutes(5), 64, Ascend)])).CommittedSequence);
    }

    /// <summary>1,000 H100 over two sites, counted together for the model.</summary>
    private static void DeclareThousandH100(FileApplicationRequest filing)
    {
        filing.Capacity.Clear();
        filing.Capacity.Add(new DeclaredDevices { Site = "sz-nanshan-dc1", DeviceModel = "H100-SXM", DeviceCount = 600 });
        filing.Capacity.Add(new DeclaredDevices { Site = "sz-longgang-dc2", DeviceModel = "H100-SXM", DeviceCount = 400 });
    }

    /// <summary>The provider's usage records outside its metering-log proof stream, which admission wrote.</summary>
    private static Task<long> UsageRowsAsync(RegistryScene scene, string code) =>
        scene.Server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE provider_id = @code AND stream_id NOT LIKE 'proof:%'", new { code });

    private static UsageRecord At(ulong sequence, DateTimeOffset start, TimeSpan duration, uint devices, string model = "H100-SXM") => new()
    {
        Sequence = sequence,
        JobId = $"job-{sequence}",
        HolderCode = TestRecords.Holder,
        DeviceModel = model,
        DeviceCount = devices,
        ShareNumerator = 1,
        ShareDenominator = 1,
        StartUnixMs = start.ToUnixTimeMilliseconds(),
        EndUnixMs = (start + duration).ToUnixTimeMilliseconds(),
        Site = "sz-nanshan-dc1",
    };
}
