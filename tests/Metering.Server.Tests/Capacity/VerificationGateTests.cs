using Grpc.Core;
using Metering.Engine.Capacity;
using Metering.Probe.Attestation.Checksums;
using Metering.Probe.Attestation.Results;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;
using Npgsql;

namespace Metering.Server.Tests.Capacity;

/// <summary>
/// What a report costs the server before it is believed: cheap checks first, the nonce spent
/// before any leaf is recomputed, and one verification per provider at a time. Verifications are
/// counted by the server's gate, not timed.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class VerificationGateTests(PostgresFixture postgres, TemplateReport template) : IClassFixture<TemplateReport>
{
    private const int Copies = 16;

    [Fact]
    public async Task Many_copies_of_one_signed_report_with_garbage_leaves_cost_the_server_one_verification()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        TestNode[] nodes = await scene.NodesAsync(1);
        await scene.DeclareAsync(nodes);
        // Results of another nonce relabelled with the issued one: leaves that are garbage for it, signed by the node.
        ProbeReport garbage = template.For(await scene.ChallengeAsync(nodes[0]), nodes[0]);
        var signature = nodes[0].Sign(garbage);
        await scene.CommitAsync(nodes[0], garbage);
        long before = scene.Verifications.Started;

        var refusals = await Task.WhenAll(Enumerable.Range(0, Copies).Select(_ => CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], garbage, signature))));

        Assert.Equal(1, scene.Verifications.Started - before);
        Assert.Single(refusals, r => r.Reason == "CHECKSUM_INVALID");
        Assert.All(refusals.Where(r => r.Reason != "CHECKSUM_INVALID"), r => Assert.Contains(r.Reason, new[] { "NONCE_USED", "VERIFICATION_BUSY" }));
        Assert.Equal(1L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_attestations"));
        Assert.Equal(1L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_nonces WHERE used_at IS NOT NULL AND attestation_id IS NOT NULL"));

        // The spent nonce is tied to its attestation once; the runtime role cannot rewrite it after that.
        await Assert.ThrowsAsync<PostgresException>(() => scene.Server.ExecuteAsync("UPDATE capacity_nonces SET attestation_id = attestation_id + 1"));
        await Assert.ThrowsAsync<PostgresException>(() => scene.Server.ExecuteAsync("UPDATE capacity_nonces SET used_at = used_at + interval '1 second'"));

        // A copy sent afterwards is a replay of a spent nonce, refused by the cheap checks alone.
        Assert.Equal((StatusCode.FailedPrecondition, "NONCE_USED"), Head(await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], garbage, signature))));
        Assert.Equal(1, scene.Verifications.Started - before);
    }

    [Fact]
    public async Task A_wrong_signature_work_other_than_the_set_one_or_roots_other_than_the_committed_ones_are_refused_before_any_leaf_and_the_nonce_stays_usable()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        TestNode[] nodes = await scene.NodesAsync(1);
        await scene.DeclareAsync(nodes);
        NodeChallenge challenge = await scene.ChallengeAsync(nodes[0]);
        ProbeReport honest = CapacityScene.RunProbe(challenge, nodes[0]);
        using var stranger = new TestNode(nodes[0].NodeId);
        // Tiny work: one warp, one mma, where the server set 8 x 8; and more steps than set.
        ProbeReport tiny = WithWork(honest, "tensor-fp16", items: 1, iterations: 1);
        ProbeReport oversized = WithWork(honest, "packed-fp16", items: 64, iterations: 128);
        long before = scene.Verifications.Started;

        var (status, reason, error) = await CapacityScene.RefusalAsync(() => scene.CommitAsync(nodes[0], tiny));
        Assert.Equal((StatusCode.InvalidArgument, "WORK_SIZE_REFUSED"), (status, reason));
        Assert.Equal("tensor-fp16", IngestCall.Metadata(error, "kernel"));
        Assert.Contains("ran 1x1 with 3 timed run(s); the challenge set 8x8 with 3", error.Status.Detail, StringComparison.Ordinal);
        Assert.Equal("WORK_SIZE_REFUSED", (await CapacityScene.RefusalAsync(() => scene.CommitAsync(nodes[0], oversized))).Reason);
        Assert.Equal((StatusCode.FailedPrecondition, "COMMITMENT_MISSING"), Head(await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], honest))));

        await scene.CommitAsync(nodes[0], honest);
        Assert.Equal((StatusCode.AlreadyExists, "COMMITMENT_REPEATED"), Head(await CapacityScene.RefusalAsync(() => scene.CommitAsync(nodes[0], tiny))));
        Assert.Equal((StatusCode.PermissionDenied, "SIGNATURE_INVALID"), Head(await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], honest, stranger.Sign(honest)))));
        Assert.Equal((StatusCode.InvalidArgument, "COMMITMENT_MISMATCH"), Head(await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], tiny))));
        // Other roots than the committed ones: a report made after the commitment, from other results.
        ProbeReport otherRoots = honest with
        {
            Devices = honest.Devices.Select(d => d with
            {
                Measurements = d.Measurements.Select(m => m with { Checksum = m.Checksum with { Root = new byte[32] } }).ToList(),
            }).ToList(),
        };
        Assert.Equal("COMMITMENT_MISMATCH", (await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], otherRoots))).Reason);

        Assert.Equal(0, scene.Verifications.Started - before);
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_attestations"));
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_nonces WHERE used_at IS NOT NULL"));

        AttestationResult accepted = await scene.SubmitAsync(nodes[0], honest);
        Assert.Equal(NodeOutcome.NodePassed, accepted.Node.Outcome);
        Assert.Equal(1, scene.Verifications.Started - before);
    }

    [Fact]
    public async Task A_providers_second_report_is_refused_as_busy_while_its_first_verifies_and_another_provider_verifies_meanwhile()
    {
        await using CapacityScene first = await CapacityScene.StartAsync(postgres);
        await using CapacityScene second = await first.AnotherProviderAsync();
        TestNode[] firstNodes = await first.NodesAsync(1, "first");
        TestNode[] secondNodes = await second.NodesAsync(1, "second");
        await first.DeclareAsync(firstNodes);
        await second.DeclareAsync(secondNodes);
        ProbeReport firstReport = CapacityScene.RunProbe(await first.ChallengeAsync(firstNodes[0]), firstNodes[0]);
        ProbeReport secondReport = CapacityScene.RunProbe(await second.ChallengeAsync(secondNodes[0]), secondNodes[0]);
        await first.CommitAsync(firstNodes[0], firstReport);
        await second.CommitAsync(secondNodes[0], secondReport);
        VerificationGate gate = first.Verifications;
        long before = gate.Started;

        // The first provider's place is taken, as it is while one of its reports is being verified.
        Assert.True(gate.TryEnter(first.Code));
        try
        {
            Assert.False(gate.TryEnter(first.Code));
            Assert.Equal((StatusCode.ResourceExhausted, "VERIFICATION_BUSY"), Head(await CapacityScene.RefusalAsync(() => first.SubmitAsync(firstNodes[0], firstReport))));
            Assert.Equal(0L, await first.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_nonces WHERE provider_id = @code AND used_at IS NOT NULL", new { code = first.Code }));

            AttestationResult other = await second.SubmitAsync(secondNodes[0], secondReport);
            Assert.Equal(NodeOutcome.NodePassed, other.Node.Outcome);
            Assert.Equal(1, gate.Started - before);
        }
        finally
        {
            gate.Leave(first.Code);
        }

        // The refused report's nonce was not spent: the same signed report goes through once the place is free.
        AttestationResult accepted = await first.SubmitAsync(firstNodes[0], firstReport);
        Assert.Equal(NodeOutcome.NodePassed, accepted.Node.Outcome);
        Assert.Equal(2, gate.Started - before);
        Assert.True(gate.TryEnter(first.Code), "the gate gave the provider's place back after its verification");
        gate.Leave(first.Code);
    }

    private static ProbeReport WithWork(ProbeReport report, string kernel, int items, int iterations) => report with
    {
        Devices = report.Devices.Select(d => d with
        {
            Measurements = d.Measurements.Select(m => m.Kernel != kernel ? m : m with { Items = items, Iterations = iterations }).ToList(),
        }).ToList(),
    };

    private static (StatusCode, string) Head((StatusCode Status, string Reason, RpcException Error) refusal) => (refusal.Status, refusal.Reason);
}
