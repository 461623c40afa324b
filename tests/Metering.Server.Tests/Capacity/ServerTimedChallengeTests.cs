using Grpc.Core;
using Metering.Engine.Capacity;
using Metering.Probe.Attestation.Results;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;
using Npgsql;

namespace Metering.Server.Tests.Capacity;

/// <summary>
/// The server's clock is the only clock that counts: the sample stays hidden until every sampled
/// node gets its nonce at one instant, each node commits to its results before a deadline the
/// server measures, and what a cheater does about it is caught. The probe runs on ILGPU's CPU
/// accelerator with the CPU fixture's tiny work; the server's simulated clock plays the slow node.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class ServerTimedChallengeTests(PostgresFixture postgres)
{
    [Fact]
    public async Task The_sample_stays_hidden_until_one_call_issues_every_sampled_nodes_nonce_and_work_at_the_same_instant()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        TestNode[] nodes = await scene.NodesAsync(3);

        FleetValidation declared = await scene.DeclareAsync(nodes);
        FleetValidation read = await scene.Client.GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = scene.Code }, scene.Key);
        Assert.All(new[] { declared, read }, v => Assert.Equal((3u, 0, "", 0L), (v.SampleSize, v.Sample.Count, v.SampleSeedHex, v.ChallengesIssuedUnixMs)));

        scene.Clock.Advance(TimeSpan.FromMinutes(1));
        long issued = scene.Clock.GetUtcNow().ToUnixTimeMilliseconds();
        ChallengeSet set = await scene.StartChallengesAsync();
        scene.Clock.Advance(TimeSpan.FromSeconds(5));
        ChallengeSet again = await scene.StartChallengesAsync();

        Assert.Equal((true, issued, 8_000L, 3), (set.StartedNow, set.IssuedUnixMs, set.AllowanceMs, set.Challenges.Count));
        Assert.Equal(3, set.Challenges.Select(c => c.NonceHex).Distinct().Count());
        foreach (NodeChallenge challenge in set.Challenges)
        {
            Assert.Equal((TestCatalogs.CpuFixtureModel, 1u, 3u), (challenge.DeviceModel, challenge.DeviceCount, challenge.RunsPerKernel));
            Assert.Equal(["tensor-fp16=8:8", "packed-fp16=64:64", "fp32-fma=64:64", "memory-bandwidth=16:2"], challenge.Work.Select(w => $"{w.Kernel}={w.Items}:{w.Iterations}"));
            // The fixture's set work at 0.90 × a reference of 1, four runs of each kernel: 9,321 + 1,166 + 583 + 18,642 ms.
            Assert.Equal(29_712L, challenge.ExpectedMs);
            Assert.Equal(issued + challenge.ExpectedMs + set.AllowanceMs, challenge.DeadlineUnixMs);
        }

        // Asked again, the same challenges come back: the clock started once, for every node.
        Assert.False(again.StartedNow);
        Assert.Equal(set.Challenges, again.Challenges);
        Assert.Equal(set.IssuedUnixMs, again.IssuedUnixMs);
        FleetValidation started = await scene.Client.GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = scene.Code }, scene.Key);
        Assert.Equal((issued, 3, 64), (started.ChallengesIssuedUnixMs, started.Sample.Count, started.SampleSeedHex.Length));
        Assert.Equal(set.Challenges.Select(c => (c.NodeId, c.DeadlineUnixMs)), started.Sample.Select(s => (s.NodeId, s.DeadlineUnixMs)));

        // The instant is evidence: the runtime role cannot move it.
        await Assert.ThrowsAsync<PostgresException>(() => scene.Server.ExecuteAsync("UPDATE capacity_challenges SET issued_at = issued_at + interval '1 minute'"));
    }

    [Fact]
    public async Task A_commitment_after_the_deadline_fails_its_node_is_kept_as_evidence_and_the_bound_takes_the_node_out_of_the_capacity()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        TestNode[] nodes = await scene.NodesAsync(1);
        await scene.DeclareAsync(nodes);
        NodeChallenge challenge = await scene.ChallengeAsync(nodes[0]);
        ProbeReport report = CapacityScene.RunProbe(challenge, nodes[0]);
        // A slow node: its results reach the server 1 ms after the deadline.
        scene.Clock.Advance(DateTimeOffset.FromUnixTimeMilliseconds(challenge.DeadlineUnixMs + 1) - scene.Clock.GetUtcNow());

        var (status, reason, error) = await CapacityScene.RefusalAsync(() => scene.CommitAsync(nodes[0], report));

        Assert.Equal((StatusCode.FailedPrecondition, "COMMITMENT_LATE"), (status, reason));
        // Deadline: 29,712 ms of work at the healthy threshold plus the 8,000 ms allowance.
        Assert.Equal(("37713", "37712"), (IngestCall.Metadata(error, "elapsed_ms"), IngestCall.Metadata(error, "deadline_ms")));
        Assert.True(await scene.Server.ScalarAsync<bool>("SELECT late FROM capacity_commitments"));
        FleetValidation validation = await scene.Client.GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = scene.Code }, scene.Key);
        SampledNode node = Assert.Single(validation.Sample);
        Assert.Equal((NodeOutcome.NodeFailed, 37_713L), (node.Outcome, node.ElapsedMs));
        Assert.Contains("late commitment", node.Detail, StringComparison.Ordinal);
        Assert.Equal((FleetValidationState.ValidationComplete, 1u, 1u, 0L), (validation.State, validation.FailedNodes, validation.NonconformingNodesBound, validation.VerifiedFp16Gflops));
        // The report that follows is no use: the validation is closed.
        Assert.Equal("NO_OPEN_VALIDATION", (await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], report))).Reason);
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_attestations"));
    }

    [Fact]
    public async Task A_node_silent_past_its_deadline_fails_at_the_providers_next_call_and_the_validation_completes()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        TestNode[] nodes = await scene.NodesAsync(1);
        await scene.DeclareAsync(nodes);
        NodeChallenge challenge = await scene.ChallengeAsync(nodes[0]);

        // At the deadline itself the node may still commit; a millisecond later it has failed.
        scene.Clock.Advance(DateTimeOffset.FromUnixTimeMilliseconds(challenge.DeadlineUnixMs) - scene.Clock.GetUtcNow());
        await scene.StartChallengesAsync();
        Assert.Equal(NodeOutcome.NodePending, (await scene.Client.GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = scene.Code }, scene.Key)).Sample.Single().Outcome);
        scene.Clock.Advance(TimeSpan.FromMilliseconds(1));
        await scene.StartChallengesAsync();

        FleetValidation validation = await scene.Client.GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = scene.Code }, scene.Key);
        Assert.Equal((NodeOutcome.NodeFailed, "no commitment by the deadline"), (validation.Sample.Single().Outcome, validation.Sample.Single().Detail));
        Assert.Equal((FleetValidationState.ValidationComplete, 1u), (validation.State, validation.FailedNodes));
    }

    [Fact]
    public async Task One_device_answering_for_two_nodes_misses_the_second_nodes_deadline()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        TestNode[] nodes = await scene.NodesAsync(2);
        await scene.DeclareAsync(nodes);
        ChallengeSet set = await scene.StartChallengesAsync();
        NodeChallenge first = set.Challenges.Single(c => c.NodeId == nodes[0].NodeId);
        NodeChallenge second = set.Challenges.Single(c => c.NodeId == nodes[1].NodeId);

        // One device, exactly at the healthy threshold, does the first node's work, then the second's,
        // reporting each node's registered UUID.
        ProbeReport firstReport = CapacityScene.RunProbe(first, nodes[0]);
        scene.Clock.Advance(TimeSpan.FromMilliseconds(first.ExpectedMs));
        CommitmentReceipt onTime = await scene.CommitAsync(nodes[0], firstReport);
        ProbeReport secondReport = CapacityScene.RunProbe(second, nodes[1]);
        scene.Clock.Advance(TimeSpan.FromMilliseconds(second.ExpectedMs));
        var (status, reason, _) = await CapacityScene.RefusalAsync(() => scene.CommitAsync(nodes[1], secondReport));

        Assert.Equal(first.ExpectedMs, onTime.ElapsedMs);
        Assert.Equal((StatusCode.FailedPrecondition, "COMMITMENT_LATE"), (status, reason));
        AttestationResult passed = await scene.SubmitAsync(nodes[0], firstReport);
        Assert.Equal(NodeOutcome.NodePassed, passed.Node.Outcome);
        // The rate the server judges is the set work over its own time, less the allowance, not the probe's timings.
        KernelResult tensor = passed.Node.Devices.Single().Kernels.Single(k => k.Kernel == "tensor-fp16");
        Assert.True(tensor.Rate * 10 >= tensor.Reference * 9 && tensor.Rate != tensor.ReportedRate, $"server rate {tensor.Rate}, reported {tensor.ReportedRate}");
        Assert.Equal((FleetValidationState.ValidationComplete, 1u, 1u), (passed.Validation.State, passed.Validation.PassedNodes, passed.Validation.FailedNodes));
        Assert.Equal(NodeOutcome.NodeFailed, passed.Validation.Sample.Single(n => n.NodeId == nodes[1].NodeId).Outcome);
    }

    [Fact]
    public async Task One_devices_results_cannot_stand_for_a_second_device_of_the_node()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        TestNode[] nodes = await scene.NodesAsync(1, devicesPerNode: 2);
        await scene.DeclareAsync(nodes, devices: 2);
        ProbeReport single = CapacityScene.RunProbe(await scene.ChallengeAsync(nodes[0]), nodes[0]);
        // The one CPU's results copied as device 1, under the node's second registered UUID: its
        // inputs come from the nonce, its index and its UUID, so they differ.
        DeviceReport copy = single.Devices[0] with { Index = 1, Uuid = nodes[0].DeviceUuids[1] };
        ProbeReport doubled = single with { Devices = [single.Devices[0], copy] };

        var (status, reason, error) = await CapacityScene.RefusalAsync(() => scene.CommitAndSubmitAsync(nodes[0], doubled));

        Assert.Equal((StatusCode.InvalidArgument, "CHECKSUM_INVALID"), (status, reason));
        Assert.Contains(IngestCall.Metadata(error, "verification"), new[] { "LeafMismatch", "UnexpectedLeafIndex" });
        Assert.Contains("device 1", error.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_run_shorter_than_the_physical_floor_of_the_set_work_is_refused_before_the_nonce_is_spent()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        TestNode[] nodes = await scene.NodesAsync(1);
        await scene.DeclareAsync(nodes);
        NodeChallenge challenge = await scene.ChallengeAsync(nodes[0]);
        ProbeReport honest = CapacityScene.RunProbe(challenge, nodes[0]);
        await scene.CommitAsync(nodes[0], honest);
        // One nanosecond per FP32 run: 131,072 FLOPs would need 1.3 × 10^8 MFLOP/s on a fixture whose FP32 peak is 10^6.
        ProbeReport forged = CapacityScene.WithDurations(honest, "fp32-fma", 1);

        var (status, reason, error) = await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], forged));

        Assert.Equal((StatusCode.InvalidArgument, "DURATION_BELOW_FLOOR"), (status, reason));
        // 131,072 FLOPs at 1.10 × 10^12 FLOP/s: 119 ns.
        Assert.Equal(119L, challenge.Work.Single(w => w.Kernel == "fp32-fma").DurationFloorNs);
        Assert.Equal(("fp32-fma", "1", "119"), (IngestCall.Metadata(error, "kernel"), IngestCall.Metadata(error, "duration_ns"), IngestCall.Metadata(error, "floor_ns")));
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_nonces WHERE used_at IS NOT NULL"));
        Assert.Equal(NodeOutcome.NodePassed, (await scene.SubmitAsync(nodes[0], honest)).Node.Outcome);
    }

    [Fact]
    public async Task A_commitment_and_a_report_replayed_into_the_next_validation_are_refused()
    {
        // A provider declares at most once per redeclaration period: a short one here, waited out.
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres, capacity: new CapacitySettings { InventoryRedeclarationInterval = TimeSpan.FromMinutes(1) });
        TestNode[] nodes = await scene.NodesAsync(1);
        await scene.DeclareAsync(nodes);
        ProbeReport old = CapacityScene.RunProbe(await scene.ChallengeAsync(nodes[0]), nodes[0]);
        Assert.Equal(NodeOutcome.NodePassed, (await scene.CommitAndSubmitAsync(nodes[0], old)).Node.Outcome);

        scene.Clock.Advance(TimeSpan.FromMinutes(1));
        await scene.DeclareAsync(nodes);
        NodeChallenge fresh = await scene.ChallengeAsync(nodes[0]);

        Assert.Equal((StatusCode.AlreadyExists, "ATTESTATION_REPLAYED"), Head(await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], old))));
        Assert.Equal("NONCE_USED", (await CapacityScene.RefusalAsync(() => scene.CommitAsync(nodes[0], old))).Reason);
        // The old results relabelled with the fresh nonce: committed in time, but its leaves are not the fresh nonce's arithmetic.
        ProbeReport relabelled = old with { Nonce = Convert.FromHexString(fresh.NonceHex) };
        Assert.Equal("CHECKSUM_INVALID", (await CapacityScene.RefusalAsync(() => scene.CommitAndSubmitAsync(nodes[0], relabelled))).Reason);
    }

    private static (StatusCode, string) Head((StatusCode Status, string Reason, RpcException Error) refusal) => (refusal.Status, refusal.Reason);
}
