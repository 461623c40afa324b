using Grpc.Core;
using Metering.Engine.Capacity;
using Metering.Engine.Catalog;
using Metering.Probe.Attestation.Results;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Capacity;

/// <summary>
/// The capacity probe end to end on ILGPU's CPU accelerator: nonce, probe run in-process, signed
/// attestation, verified fleet, and the registry's verification stage taking the figure; and the
/// attestations a server must not take.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class FleetValidationTests(PostgresFixture postgres)
{
    [Fact]
    public async Task A_fleet_of_CPU_nodes_is_validated_end_to_end_and_verification_with_figure_0_takes_it()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        long application = await scene.ApplicationAwaitingVerificationAsync();
        TestNode[] nodes = await scene.NodesAsync(3);

        FleetValidation declared = await scene.DeclareAsync(nodes);
        // Under 20 nodes one bad node already breaks 95%, so every node is probed.
        Assert.Equal((3u, 3u, FleetValidationState.ValidationCollecting), (declared.NodeCount, declared.SampleSize, declared.State));
        Assert.Equal(300_000_000, declared.DeclaredFp16Gflops);
        ChallengeSet challenges = await scene.StartChallengesAsync();
        FleetValidation started = await scene.Client.GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = scene.Code }, scene.Key);
        Assert.Equal(
            SamplingPlan.Draw(nodes.Select(n => n.NodeId), 3, Convert.FromHexString(started.SampleSeedHex)),
            started.Sample.Select(s => s.NodeId));
        Assert.Equal(started.Sample.Select(s => s.NodeId), challenges.Challenges.Select(c => c.NodeId));

        AttestationResult last = null!;
        foreach (TestNode node in nodes)
        {
            last = await scene.AttestAsync(node);
            Assert.True(last.Node.Outcome == NodeOutcome.NodePassed, string.Join("; ", last.Node.Devices.Select(d => d.Detail)));
            DeviceResult device = Assert.Single(last.Node.Devices);
            Assert.Equal((DeviceOutcome.DeviceHealthy, TestCatalogs.CpuFixtureModel, "CPUAccelerator"), (device.Outcome, device.DeviceModel, device.ReportedName));
            Assert.All(device.Kernels, k => Assert.True(k.Judged && k.ArithmeticPath == "portable" && k.Rate * 10 >= k.Reference * 9 && k.ReportedRate > 0));
        }

        FleetValidation complete = last.Validation;
        Assert.Equal(FleetValidationState.ValidationComplete, complete.State);
        Assert.Equal((3u, 0u, 0u, 1_000_000u), (complete.PassedNodes, complete.FailedNodes, complete.NonconformingNodesBound, complete.PassRateLowerBoundPpm));
        Assert.Equal(300_000_000, complete.VerifiedFp16Gflops);
        Assert.Equal(TimeSpan.FromDays(90), TimeSpan.FromMilliseconds(complete.ExpiresUnixMs - complete.CompletedUnixMs));
        FleetValidation audited = await scene.Client.GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = scene.Code }, TestServer.Bearer(TestServer.AuditorKey));
        Assert.Equal(complete, audited);

        Application verified = await scene.Registry.Client.RecordVerificationAsync(
            new VerificationDecision { ApplicationId = application, Pass = true, VerifiedFp16Gflops = 0 }, RegistryScene.Operator);
        Assert.Equal((ApplicationState.AwaitingPublicNotice, 300_000_000L), (verified.State, verified.VerifiedFp16Gflops));
        Assert.Contains($"fleet validation {complete.ValidationId}", verified.Stages.Last().Reasons, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_same_attestation_submitted_again_is_refused_as_a_replay_and_changes_nothing()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        TestNode[] nodes = await scene.NodesAsync(2);
        await scene.DeclareAsync(nodes);
        ProbeReport report = CapacityScene.RunProbe(await scene.ChallengeAsync(nodes[0]), nodes[0]);
        var signature = nodes[0].Sign(report);
        await scene.CommitAsync(nodes[0], report);
        AttestationResult accepted = await scene.SubmitAsync(nodes[0], report, signature);

        var (status, reason, error) = await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], report, signature));
        var (_, again, _) = await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], report));

        Assert.Equal((StatusCode.AlreadyExists, "ATTESTATION_REPLAYED"), (status, reason));
        Assert.Equal(accepted.AttestationId.ToString(System.Globalization.CultureInfo.InvariantCulture), IngestCall.Metadata(error, "attestation_id"));
        Assert.Equal("ATTESTATION_REPLAYED", again);
        Assert.Equal(1L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_attestations"));
    }

    [Fact]
    public async Task A_report_accepted_for_one_provider_and_copied_by_another_is_refused_and_changes_nothing()
    {
        // "A report is accepted once" holds per provider (migration 0027, for Citus); what stops a
        // second provider from passing its own gate with the first one's accepted report is that
        // the report answers a nonce the server issued to the first provider only, and carries
        // the first provider's node signature.
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        TestNode[] nodes = await scene.NodesAsync(2);
        await scene.DeclareAsync(nodes);
        ProbeReport report = CapacityScene.RunProbe(await scene.ChallengeAsync(nodes[0]), nodes[0]);
        await scene.CommitAndSubmitAsync(nodes[0], report);

        await using CapacityScene cheater = await scene.AnotherProviderAsync();
        TestNode[] theirs = await cheater.NodesAsync(2);
        await cheater.DeclareAsync(theirs);
        await cheater.StartChallengesAsync();
        Assert.Equal(nodes[0].NodeId, theirs[0].NodeId);

        var resigned = await CapacityScene.RefusalAsync(() => cheater.CommitAndSubmitAsync(theirs[0], report));
        var asSigned = await CapacityScene.RefusalAsync(() => cheater.SubmitAsync(theirs[0], report, nodes[0].Sign(report)));

        // Signed again with the cheater's own approved node key, the copy answers a nonce the
        // cheater was never issued; sent with the first provider's signature, it fails the
        // cheater's node key before that.
        Assert.Equal(("NONCE_UNKNOWN", "SIGNATURE_INVALID"), (resigned.Reason, asSigned.Reason));
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_attestations WHERE provider_id = @code", new { code = cheater.Code }));
        Assert.Equal(1L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_attestations"));
    }

    [Fact]
    public async Task A_device_model_the_catalog_does_not_know_awaits_an_operators_review_whose_decision_completes_the_validation()
    {
        // The catalog has no CPU model: the provider says its nodes hold a GPU whose probe names the CPU does not match.
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres, TestCatalogs.WithUnnamedGpu());
        TestNode[] nodes = await scene.NodesAsync(2);
        FleetValidation declared = await scene.DeclareAsync(nodes, UnnamedGpu);
        foreach (TestNode node in nodes)
        {
            AttestationResult result = await scene.AttestAsync(node);
            Assert.Equal(NodeOutcome.NodeAwaitingReview, result.Node.Outcome);
            Assert.Equal(DeviceOutcome.DeviceAwaitingReview, result.Node.Devices.Single().Outcome);
            Assert.Contains("CPUAccelerator", result.Node.Devices.Single().Detail, StringComparison.Ordinal);
        }

        Assert.Equal("ROLE_NOT_ALLOWED", (await CapacityScene.RefusalAsync(() => scene.Client.ReviewUnknownModelAsync(Review(scene, declared, nodes[0], UnnamedGpu), scene.Key).ResponseAsync)).Reason);
        FleetValidation afterAccept = await scene.Client.ReviewUnknownModelAsync(Review(scene, declared, nodes[0], UnnamedGpu), RegistryScene.Operator);
        Assert.Equal(FleetValidationState.ValidationCollecting, afterAccept.State);
        var (_, again, _) = await CapacityScene.RefusalAsync(() => scene.Client.ReviewUnknownModelAsync(Review(scene, declared, nodes[0], UnnamedGpu), RegistryScene.Operator).ResponseAsync);
        Assert.Equal("REVIEW_NOT_PENDING", again);
        var (_, noReasons, _) = await CapacityScene.RefusalAsync(() => scene.Client.ReviewUnknownModelAsync(Review(scene, declared, nodes[1], ""), RegistryScene.Operator).ResponseAsync);
        Assert.Equal("REASON_REQUIRED", noReasons);
        FleetValidation complete = await scene.Client.ReviewUnknownModelAsync(Review(scene, declared, nodes[1], "", "Not that GPU: the probe saw a CPU."), RegistryScene.Operator);

        SampledNode accepted = complete.Sample.Single(n => n.NodeId == nodes[0].NodeId);
        SampledNode rejected = complete.Sample.Single(n => n.NodeId == nodes[1].NodeId);
        Assert.Equal((NodeOutcome.NodePassed, DeviceOutcome.DeviceHealthy, UnnamedGpu), (accepted.Outcome, accepted.Devices.Single().Outcome, accepted.Devices.Single().DeviceModel));
        Assert.Equal((NodeOutcome.NodeFailed, DeviceOutcome.DeviceRejected), (rejected.Outcome, rejected.Devices.Single().Outcome));
        // Two nodes, both probed, one failed: the bound is exactly one bad node.
        Assert.Equal((FleetValidationState.ValidationComplete, 1u, 989_400L), (complete.State, complete.NonconformingNodesBound, complete.VerifiedFp16Gflops));
        Assert.Equal(UnnamedGpu, await scene.Server.ScalarAsync<string>("SELECT device_model FROM capacity_model_aliases WHERE reported_name = 'CPUAccelerator'"));
    }

    [Fact]
    public async Task Verification_with_figure_0_refuses_without_a_current_validation_and_after_one_expires()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        long application = await scene.ApplicationAwaitingVerificationAsync();
        var takeFleet = new VerificationDecision { ApplicationId = application, Pass = true, VerifiedFp16Gflops = 0 };

        var (status, reason, _) = await CapacityScene.RefusalAsync(() => scene.Registry.Client.RecordVerificationAsync(takeFleet, RegistryScene.Operator).ResponseAsync);
        Assert.Equal((StatusCode.FailedPrecondition, "CAPACITY_UNVERIFIED"), (status, reason));

        TestNode[] nodes = await scene.NodesAsync(1);
        await scene.DeclareAsync(nodes);
        Assert.Equal(100_000_000, (await scene.AttestAsync(nodes[0])).Validation.VerifiedFp16Gflops);
        // One fixture node is 100 PFLOPS: taken, and below the bar.
        var (_, below, belowError) = await CapacityScene.RefusalAsync(() => scene.Registry.Client.RecordVerificationAsync(takeFleet, RegistryScene.Operator).ResponseAsync);
        Assert.Equal("CAPACITY_BELOW_MINIMUM", below);
        Assert.Contains("fleet validation", belowError.Status.Detail, StringComparison.Ordinal);

        scene.Clock.Advance(TimeSpan.FromDays(90));
        Assert.Equal("CAPACITY_UNVERIFIED", (await CapacityScene.RefusalAsync(() => scene.Registry.Client.RecordVerificationAsync(takeFleet, RegistryScene.Operator).ResponseAsync)).Reason);
        // The commissioned verifier's own figure is still taken, once a second operator approves it.
        Application proposed = await scene.Registry.Client.RecordVerificationAsync(
            new VerificationDecision { ApplicationId = application, Pass = true, VerifiedFp16Gflops = 316_608_000, Reasons = "commissioned verifier's site report" }, RegistryScene.Operator);
        Application verified = await scene.Registry.Client.ApproveProposalAsync(
            new ApproveProposalRequest { ApplicationId = application, ProposalNo = proposed.PendingProposal.ProposalNo }, RegistryScene.SecondOperator);
        Assert.Equal(316_608_000, verified.VerifiedFp16Gflops);
    }

    private const string UnnamedGpu = TestCatalogs.UnnamedGpuModel;

    private static ReviewUnknownModelRequest Review(CapacityScene scene, FleetValidation validation, TestNode node, string model, string reasons = "") => new()
    {
        CreditCode = scene.Code,
        ValidationId = validation.ValidationId,
        NodeId = node.NodeId,
        DeviceIndex = 0,
        DeviceModel = model,
        Reasons = reasons,
    };
}
