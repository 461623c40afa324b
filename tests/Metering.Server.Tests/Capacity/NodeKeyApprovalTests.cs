using System.Security.Cryptography;
using Grpc.Core;
using Metering.Probe.Attestation.Results;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Capacity;

/// <summary>
/// Node keys bound to their devices and approved by an operator, played by a provider that mints
/// keys, rotates them, moves devices between nodes and approves its own keys: each attempt refused
/// with its own reason, before the nonce is spent, changing nothing.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class NodeKeyApprovalTests(PostgresFixture postgres)
{
    [Fact]
    public async Task A_commitment_or_report_signed_by_a_key_no_operator_approved_is_refused_before_its_nonce_is_spent()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        using var node = new TestNode("cpu-00");
        TestNode[] nodes = [node];
        NodeKey key = await scene.Client.RegisterNodeKeyAsync(node.Registration(scene.Code), scene.Key);
        Assert.False(key.Approved);
        await scene.DeclareAsync(nodes);
        ProbeReport report = CapacityScene.RunProbe(await scene.ChallengeAsync(nodes[0]), nodes[0]);

        var (commitStatus, commitReason, commitError) = await CapacityScene.RefusalAsync(() => scene.CommitAsync(nodes[0], report));
        var (status, reason, error) = await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], report));

        Assert.Equal((StatusCode.FailedPrecondition, "NODE_KEY_NOT_APPROVED"), (commitStatus, commitReason));
        Assert.Contains("the commitment is signed with key version 1", commitError.Status.Detail, StringComparison.Ordinal);
        Assert.Equal((StatusCode.FailedPrecondition, "NODE_KEY_NOT_APPROVED"), (status, reason));
        Assert.Contains("the node has no approved key", error.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_commitments"));
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_attestations"));
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_nonces WHERE used_at IS NOT NULL"));

        // Once an operator approves the key, the very same results are committed and taken: the nonce was kept.
        await scene.ApproveAsync(key);
        AttestationResult accepted = await scene.CommitAndSubmitAsync(nodes[0], report);
        Assert.Equal(NodeOutcome.NodePassed, accepted.Node.Outcome);
    }

    [Fact]
    public async Task A_rotated_key_signs_nothing_until_approved_while_the_approved_key_stays_in_force_until_then()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        TestNode[] nodes = await scene.NodesAsync(1);
        await scene.DeclareAsync(nodes);
        using var rotated = new TestNode(nodes[0].NodeId);
        RegisterNodeKeyRequest rotation = rotated.Registration(scene.Code);
        rotation.DeviceUuids[0] = nodes[0].DeviceUuid;
        NodeKey pending = await scene.Client.RegisterNodeKeyAsync(rotation, scene.Key);
        Assert.Equal((2u, false, ""), (pending.KeyVersion, pending.Approved, pending.ApprovedBy));
        ProbeReport report = CapacityScene.RunProbe(await scene.ChallengeAsync(nodes[0]), nodes[0]);

        // The rotated key cannot commit; the approved key still signs, so its commitment is taken.
        var (commitStatus, commitReason, commitError) = await CapacityScene.RefusalAsync(() => scene.CommitAsync(nodes[0], rotated.Commit(report).Commitment, rotated.Commit(report).Signature));
        Assert.Equal((StatusCode.FailedPrecondition, "NODE_KEY_NOT_APPROVED"), (commitStatus, commitReason));
        Assert.Contains("key in force is version 1", commitError.Status.Detail, StringComparison.Ordinal);
        await scene.CommitAsync(nodes[0], report);
        Assert.Equal(1, await scene.Server.ScalarAsync<int>("SELECT key_version FROM capacity_commitments"));

        var (status, reason, error) = await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], report, rotated.Sign(report)));
        Assert.Equal((StatusCode.FailedPrecondition, "NODE_KEY_NOT_APPROVED"), (status, reason));
        Assert.Contains("key in force is version 1", error.Status.Detail, StringComparison.Ordinal);

        scene.Clock.Advance(TimeSpan.FromSeconds(5));
        NodeKey approved = await scene.ApproveAsync(pending, "rotation after a TPM replacement; fingerprint checked on site");

        Assert.Equal((true, "operator:operator-one", scene.Clock.Now.ToUnixTimeMilliseconds()), (approved.Approved, approved.ApprovedBy, approved.ApprovedUnixMs));
        Assert.Equal("rotation after a TPM replacement; fingerprint checked on site", await scene.Server.ScalarAsync<string>(
            "SELECT reasons FROM capacity_node_key_approvals WHERE provider_id = @code AND node_id = @node AND key_version = 2", new { code = scene.Code, node = nodes[0].NodeId }));
        // From the approval on, the old key is retired and the new one signs.
        Assert.Equal("SIGNATURE_INVALID", (await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], report))).Reason);
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_nonces WHERE used_at IS NOT NULL"));
        AttestationResult accepted = await scene.SubmitAsync(nodes[0], report, rotated.Sign(report));
        Assert.Equal(NodeOutcome.NodePassed, accepted.Node.Outcome);
        Assert.Equal(2, await scene.Server.ScalarAsync<int>("SELECT key_version FROM capacity_attestations WHERE accepted"));
    }

    [Fact]
    public async Task A_commitment_or_report_naming_devices_other_than_the_nodes_registered_ones_is_refused_before_its_nonce_is_spent()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        TestNode[] nodes = await scene.NodesAsync(1);
        await scene.DeclareAsync(nodes);
        NodeChallenge challenge = await scene.ChallengeAsync(nodes[0]);
        // The probe run on another machine (another device): its UUID is not the node's.
        ProbeReport elsewhere = CapacityScene.RunProbe(challenge, "CPU-some-other-machine");
        ProbeReport report = CapacityScene.RunProbe(challenge, nodes[0]);
        DeviceReport device = Assert.Single(report.Devices);
        Assert.Equal(nodes[0].DeviceUuid, device.Uuid);
        ProbeReport nameless = report with { Devices = [device with { Uuid = "" }] };
        // One device's results standing for two devices of the node.
        ProbeReport doubled = report with { Devices = [device, device with { Index = 1 }] };

        var (status, reason, error) = await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], elsewhere));
        Assert.Equal((StatusCode.InvalidArgument, "DEVICE_UUID_MISMATCH"), (status, reason));
        Assert.Equal("0", IngestCall.Metadata(error, "device"));
        Assert.Contains("CPU-some-other-machine", error.Status.Detail, StringComparison.Ordinal);
        var (_, namelessReason, namelessError) = await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], nameless));
        Assert.Equal("DEVICE_UUID_MISMATCH", namelessReason);
        Assert.Contains("ILGPU 1.5.3 exposes no NVML UUID", namelessError.Status.Detail, StringComparison.Ordinal);
        var (_, doubledReason, doubledError) = await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], doubled));
        Assert.Equal(("DEVICE_UUID_MISMATCH", "1"), (doubledReason, IngestCall.Metadata(doubledError, "device")));
        // The commitment is held to the same devices, so a foreign device cannot even start its clock.
        var (commitStatus, commitReason, commitError) = await CapacityScene.RefusalAsync(() => scene.CommitAsync(nodes[0], elsewhere));
        Assert.Equal((StatusCode.InvalidArgument, "DEVICE_UUID_MISMATCH"), (commitStatus, commitReason));
        Assert.Contains("device 0 of the commitment", commitError.Status.Detail, StringComparison.Ordinal);
        var (_, doubledCommitReason, doubledCommitError) = await CapacityScene.RefusalAsync(() => scene.CommitAsync(nodes[0], doubled));
        Assert.Equal(("DEVICE_UUID_MISMATCH", "1"), (doubledCommitReason, IngestCall.Metadata(doubledCommitError, "device")));

        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_commitments"));
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_attestations"));
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_nonces WHERE used_at IS NOT NULL"));
        Assert.Equal(NodeOutcome.NodePassed, (await scene.CommitAndSubmitAsync(nodes[0], report)).Node.Outcome);
    }

    [Fact]
    public async Task A_device_UUID_held_by_another_node_of_the_provider_or_of_another_provider_is_refused()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        await using CapacityScene other = await scene.AnotherProviderAsync();
        TestNode[] nodes = await scene.NodesAsync(1);
        string held = nodes[0].DeviceUuid;
        using var sibling = new TestNode("cpu-sibling");
        using var foreign = new TestNode("cpu-foreign");
        RegisterNodeKeyRequest Claiming(TestNode node, CapacityScene owner)
        {
            RegisterNodeKeyRequest request = node.Registration(owner.Code);
            request.DeviceUuids.Add(held);
            return request;
        }

        var (status, reason, error) = await CapacityScene.RefusalAsync(() => scene.Client.RegisterNodeKeyAsync(Claiming(sibling, scene), scene.Key).ResponseAsync);
        Assert.Equal((StatusCode.AlreadyExists, "DEVICE_UUID_TAKEN"), (status, reason));
        Assert.Equal(held, IngestCall.Metadata(error, "device_uuid"));
        Assert.Contains($"node '{nodes[0].NodeId}'", error.Status.Detail, StringComparison.Ordinal);
        var (_, foreignReason, foreignError) = await CapacityScene.RefusalAsync(() => other.Client.RegisterNodeKeyAsync(Claiming(foreign, other), other.Key).ResponseAsync);
        Assert.Equal("DEVICE_UUID_TAKEN", foreignReason);
        Assert.Contains("a node of another provider", foreignError.Status.Detail, StringComparison.Ordinal);
        Assert.DoesNotContain(scene.Code, foreignError.Status.Detail, StringComparison.Ordinal);

        RegisterNodeKeyRequest twice = sibling.Registration(scene.Code);
        twice.DeviceUuids.Add(sibling.DeviceUuid);
        RegisterNodeKeyRequest none = sibling.Registration(scene.Code);
        none.DeviceUuids.Clear();
        RegisterNodeKeyRequest tooMany = sibling.Registration(scene.Code);
        tooMany.DeviceUuids.Add(Enumerable.Range(0, 64).Select(i => $"GPU-extra-{i}"));
        RegisterNodeKeyRequest badCharacters = sibling.Registration(scene.Code);
        badCharacters.DeviceUuids[0] = "GPU 1";
        foreach (RegisterNodeKeyRequest bad in new[] { twice, none, tooMany, badCharacters })
        {
            Assert.Equal((StatusCode.InvalidArgument, "FIELD_INVALID"), Head(await CapacityScene.RefusalAsync(() => scene.Client.RegisterNodeKeyAsync(bad, scene.Key).ResponseAsync)));
        }

        Assert.Equal(1L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_node_keys"));

        // The device moves only when its node lets go of it: a rotation without it, approved.
        using var moved = new TestNode(nodes[0].NodeId);
        NodeKey without = await scene.Client.RegisterNodeKeyAsync(moved.Registration(scene.Code), scene.Key);
        Assert.Equal("DEVICE_UUID_TAKEN", (await CapacityScene.RefusalAsync(() => other.Client.RegisterNodeKeyAsync(Claiming(foreign, other), other.Key).ResponseAsync)).Reason);
        await scene.ApproveAsync(without);
        NodeKey claimed = await other.Client.RegisterNodeKeyAsync(Claiming(foreign, other), other.Key);
        Assert.Contains(held, claimed.DeviceUuids);
    }

    [Fact]
    public async Task Only_an_operator_approves_a_key_and_only_the_nodes_latest_version_with_its_fingerprint_once()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        using var node = new TestNode("cpu-00");
        NodeKey key = await scene.Client.RegisterNodeKeyAsync(node.Registration(scene.Code), scene.Key);
        ApproveNodeKeyRequest Approval(Action<ApproveNodeKeyRequest>? change = null)
        {
            var request = new ApproveNodeKeyRequest { CreditCode = scene.Code, NodeId = key.NodeId, KeyVersion = key.KeyVersion, KeySha256 = key.KeySha256, Reasons = "checked" };
            change?.Invoke(request);
            return request;
        }

        Task<NodeKey> Approve(ApproveNodeKeyRequest request, Metadata caller) => scene.Client.ApproveNodeKeyAsync(request, caller).ResponseAsync;

        // The provider approving its own key, and an auditor, are refused by role.
        Assert.Equal((StatusCode.PermissionDenied, "ROLE_NOT_ALLOWED"), Head(await CapacityScene.RefusalAsync(() => Approve(Approval(), scene.Key))));
        Assert.Equal("ROLE_NOT_ALLOWED", (await CapacityScene.RefusalAsync(() => Approve(Approval(), TestServer.Bearer(TestServer.AuditorKey)))).Reason);
        using ECDsa stranger = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        string otherFingerprint = Convert.ToHexStringLower(SHA256.HashData(stranger.ExportSubjectPublicKeyInfo()));
        Assert.Equal((StatusCode.FailedPrecondition, "NODE_KEY_NOT_PENDING"), Head(await CapacityScene.RefusalAsync(() => Approve(Approval(r => r.KeySha256 = otherFingerprint), RegistryScene.Operator))));
        Assert.Equal("NODE_KEY_NOT_PENDING", (await CapacityScene.RefusalAsync(() => Approve(Approval(r => r.KeyVersion = 2), RegistryScene.Operator))).Reason);
        Assert.Equal("REASON_REQUIRED", (await CapacityScene.RefusalAsync(() => Approve(Approval(r => r.Reasons = "  "), RegistryScene.Operator))).Reason);
        Assert.Equal("NODE_KEY_UNKNOWN", (await CapacityScene.RefusalAsync(() => Approve(Approval(r => r.NodeId = "cpu-none"), RegistryScene.Operator))).Reason);
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_node_key_approvals"));

        NodeKey approved = await Approve(Approval(), RegistryScene.Operator);
        Assert.Equal((true, "checked"), (approved.Approved, approved.ApprovalReasons));
        Assert.Equal([node.DeviceUuid], approved.DeviceUuids);
        Assert.Equal("NODE_KEY_NOT_PENDING", (await CapacityScene.RefusalAsync(() => Approve(Approval(), RegistryScene.SecondOperator))).Reason);
        Assert.Equal("operator:operator-one", await scene.Server.ScalarAsync<string>("SELECT approved_by FROM capacity_node_key_approvals"));
    }

    [Fact]
    public async Task An_operator_lists_the_keys_awaiting_approval_page_by_page_and_a_provider_only_its_own()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        TestNode[] nodes = await scene.NodesAsync(3, approved: false);
        Task<NodeKeyList> List(bool pendingOnly, string after = "", uint limit = 0, Metadata? caller = null) => scene.Client.ListNodeKeysAsync(
            new ListNodeKeysRequest { CreditCode = scene.Code, PendingOnly = pendingOnly, AfterNodeId = after, Limit = limit }, caller ?? RegistryScene.Operator).ResponseAsync;

        NodeKeyList first = await List(pendingOnly: true, limit: 2);
        NodeKeyList second = await List(pendingOnly: true, first.NextAfterNodeId, limit: 2);

        Assert.Equal([nodes[0].NodeId, nodes[1].NodeId], first.Keys.Select(k => k.NodeId));
        Assert.Equal(nodes[1].NodeId, first.NextAfterNodeId);
        Assert.Equal([nodes[2].NodeId], second.Keys.Select(k => k.NodeId));
        Assert.Equal("", second.NextAfterNodeId);
        Assert.All(first.Keys.Concat(second.Keys), k => Assert.False(k.Approved));
        foreach (NodeKey key in first.Keys.Concat(second.Keys))
        {
            await scene.ApproveAsync(key);
        }

        Assert.Empty((await List(pendingOnly: true)).Keys);

        // A rotation awaits approval beside the key in force.
        using var rotated = new TestNode(nodes[0].NodeId);
        await scene.Client.RegisterNodeKeyAsync(rotated.Registration(scene.Code), scene.Key);
        NodeKeyList all = await List(pendingOnly: false, caller: scene.Key);
        Assert.Equal([(nodes[0].NodeId, 1u, true), (nodes[0].NodeId, 2u, false), (nodes[1].NodeId, 1u, true), (nodes[2].NodeId, 1u, true)],
            all.Keys.Select(k => (k.NodeId, k.KeyVersion, k.Approved)));
        Assert.Equal([(nodes[0].NodeId, 2u)], (await List(pendingOnly: true, caller: TestServer.Bearer(TestServer.AuditorKey))).Keys.Select(k => (k.NodeId, k.KeyVersion)));

        Assert.Equal((StatusCode.PermissionDenied, "OTHER_PROVIDER"), Head(await CapacityScene.RefusalAsync(() => List(false, caller: TestServer.Bearer(TestServer.OtherProviderKey)))));
        Assert.Equal("FIELD_INVALID", (await CapacityScene.RefusalAsync(() => List(false, limit: 1_001))).Reason);
    }

    private static (StatusCode, string) Head((StatusCode Status, string Reason, RpcException Error) refusal) => (refusal.Status, refusal.Reason);
}
