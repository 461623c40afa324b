using System.Security.Cryptography;
using Google.Protobuf;
using Grpc.Core;
using Metering.Engine.Capacity;
using Metering.Probe.Attestation.Checksums;
using Metering.Probe.Attestation.Results;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Capacity;

/// <summary>One real CPU probe report on a nonce no server issued: the raw material of the refusal tests.</summary>
public sealed class TemplateReport
{
    public ProbeReport Report { get; } = CapacityScene.RunProbe(RandomNumberGenerator.GetBytes(32));

    /// <summary>The template claiming another nonce and the node's device: parsed and signed like any report, its checksums belong to the template's nonce and device.</summary>
    internal ProbeReport For(NodeChallenge challenge, TestNode node) => As(node) with { Nonce = Convert.FromHexString(challenge.NonceHex) };

    /// <summary>The template naming the node's registered device, so that the checks after the device's get their turn.</summary>
    internal ProbeReport As(TestNode node) => Report with { Devices = [.. Report.Devices.Select(d => d with { Uuid = node.DeviceUuid })] };
}

/// <summary>Every way an attestation, an inventory or a key is refused, each with its own reason, changing nothing.</summary>
[Collection(PostgresCollection.Name)]
public sealed class AttestationRefusalTests(PostgresFixture postgres, TemplateReport template) : IClassFixture<TemplateReport>
{
    [Fact]
    public async Task A_nonce_never_issued_or_issued_for_another_node_is_unknown()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        TestNode[] nodes = await scene.NodesAsync(2);
        await scene.DeclareAsync(nodes);
        NodeChallenge forFirst = await scene.ChallengeAsync(nodes[0]);

        Assert.Equal((StatusCode.FailedPrecondition, "NONCE_UNKNOWN"), Head(await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], template.As(nodes[0])))));
        Assert.Equal("NONCE_UNKNOWN", (await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[1], template.For(forFirst, nodes[1])))).Reason);
        Assert.Equal("NONCE_UNKNOWN", (await CapacityScene.RefusalAsync(() => scene.CommitAsync(nodes[0], template.As(nodes[0])))).Reason);
        Assert.Equal("NONCE_UNKNOWN", (await CapacityScene.RefusalAsync(() => scene.CommitAsync(nodes[1], template.For(forFirst, nodes[1])))).Reason);
        await AssertNothingStoredAsync(scene);
    }

    [Fact]
    public async Task A_nonce_past_its_time_to_live_is_expired()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        TestNode[] nodes = await scene.NodesAsync(1);
        await scene.DeclareAsync(nodes);
        NodeChallenge nonce = await scene.ChallengeAsync(nodes[0]);
        Assert.Equal(TimeSpan.FromMinutes(30), TimeSpan.FromMilliseconds(nonce.ExpiresUnixMs - nonce.DeadlineUnixMs));

        scene.Clock.Advance(DateTimeOffset.FromUnixTimeMilliseconds(nonce.ExpiresUnixMs) - scene.Clock.Now);

        Assert.Equal((StatusCode.FailedPrecondition, "NONCE_EXPIRED"), Head(await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], template.For(nonce, nodes[0])))));
        await AssertNothingStoredAsync(scene);
    }

    [Fact]
    public async Task A_report_signed_by_another_key_or_by_a_node_without_one_is_refused()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        TestNode[] nodes = await scene.NodesAsync(1);
        await scene.DeclareAsync(nodes);
        ProbeReport report = template.For(await scene.ChallengeAsync(nodes[0]), nodes[0]);
        using var stranger = new TestNode(nodes[0].NodeId);
        using var keyless = new TestNode("no-key");

        Assert.Equal((StatusCode.PermissionDenied, "SIGNATURE_INVALID"), Head(await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], report, stranger.Sign(report)))));
        ByteString tampered = ByteString.CopyFrom(nodes[0].Sign(report with { CreatedAtUnixMs = report.CreatedAtUnixMs + 1 }).ToByteArray());
        Assert.Equal("SIGNATURE_INVALID", (await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], report, tampered))).Reason);
        Assert.Equal("SIGNATURE_INVALID", (await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], report, ByteString.CopyFrom(new byte[64])))).Reason);
        Assert.Equal((StatusCode.FailedPrecondition, "NODE_KEY_UNKNOWN"), Head(await CapacityScene.RefusalAsync(() => scene.SubmitAsync(keyless, report))));
        // The commitment is signed with the same key: another key's signature, or the report's signature, does not pass for it.
        byte[] commitment = nodes[0].Commit(report).Commitment;
        Assert.Equal("SIGNATURE_INVALID", (await CapacityScene.RefusalAsync(() => scene.CommitAsync(nodes[0], commitment, stranger.Commit(report).Signature))).Reason);
        Assert.Equal("SIGNATURE_INVALID", (await CapacityScene.RefusalAsync(() => scene.CommitAsync(nodes[0], commitment, nodes[0].Sign(report)))).Reason);
        Assert.Equal("NODE_KEY_UNKNOWN", (await CapacityScene.RefusalAsync(() => scene.CommitAsync(keyless, report))).Reason);
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_commitments"));
        await AssertNothingStoredAsync(scene);
        // Unsigned junk does not spend the node's nonce: the real attestation can still use it.
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_nonces WHERE used_at IS NOT NULL"));
    }

    [Fact]
    public async Task Results_that_are_not_the_arithmetic_of_the_issued_nonce_fail_the_checksum_and_spend_the_nonce()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        TestNode[] nodes = await scene.NodesAsync(1);
        await scene.DeclareAsync(nodes);
        // Results computed for another nonce, relabelled with the issued one: what a precomputing cheater sends.
        ProbeReport precomputed = template.For(await scene.ChallengeAsync(nodes[0]), nodes[0]);

        var (status, reason, error) = await CapacityScene.RefusalAsync(() => scene.CommitAndSubmitAsync(nodes[0], precomputed));

        Assert.Equal((StatusCode.InvalidArgument, "CHECKSUM_INVALID"), (status, reason));
        Assert.Equal("LeafMismatch", IngestCall.Metadata(error, "verification"));
        Assert.Contains("LeafMismatch", error.Status.Detail, StringComparison.Ordinal);
        Assert.Equal("CHECKSUM_INVALID", await scene.Server.ScalarAsync<string>("SELECT refusal FROM capacity_attestations WHERE NOT accepted"));
        Assert.Equal("NONCE_USED", (await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], precomputed))).Reason);
    }

    [Fact]
    public async Task A_refused_attestation_keeps_the_reports_digest_and_first_bytes_not_the_whole_report()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        TestNode[] nodes = await scene.NodesAsync(1);
        await scene.DeclareAsync(nodes);
        ProbeReport precomputed = template.For(await scene.ChallengeAsync(nodes[0]), nodes[0]);
        byte[] encoded = ProbeReportEncoding.Encode(precomputed);
        Assert.True(encoded.Length > Engine.Capacity.FleetValidationService.RefusedReportBytesMax, $"the report is only {encoded.Length} bytes; it shows no bound");

        Assert.Equal("CHECKSUM_INVALID", (await CapacityScene.RefusalAsync(() => scene.CommitAndSubmitAsync(nodes[0], precomputed))).Reason);

        var kept = (await scene.Server.QueryAsync<(byte[] Digest, byte[] Report, int Length)>(
            "SELECT report_sha256, report_encoded, report_bytes FROM capacity_attestations WHERE NOT accepted")).Single();
        Assert.Equal(SHA256.HashData(encoded), kept.Digest);
        Assert.Equal(encoded.Length, kept.Length);
        Assert.Equal(encoded.AsSpan(0, Math.Min(encoded.Length, Engine.Capacity.FleetValidationService.RefusedReportBytesMax)).ToArray(), kept.Report);
        Assert.True(kept.Report.Length <= Engine.Capacity.FleetValidationService.RefusedReportBytesMax);
    }

    [Fact]
    public async Task A_report_that_is_not_a_probe_report_is_malformed()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        TestNode[] nodes = await scene.NodesAsync(1);
        var request = new SubmitAttestationRequest { CreditCode = scene.Code, NodeId = nodes[0].NodeId, ReportJson = "{\"format\": 3}", Signature = ByteString.CopyFrom(new byte[64]) };

        Assert.Equal((StatusCode.InvalidArgument, "REPORT_MALFORMED"), Head(await CapacityScene.RefusalAsync(() => scene.Client.SubmitAttestationAsync(request, scene.Key).ResponseAsync)));
    }

    [Fact]
    public async Task Challenges_start_only_for_an_open_validation_and_a_commitment_only_for_the_committing_nodes_own_nonce()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        TestNode[] nodes = await scene.NodesAsync(2);
        Assert.Equal((StatusCode.FailedPrecondition, "NO_OPEN_VALIDATION"), Head(await CapacityScene.RefusalAsync(() => scene.StartChallengesAsync())));
        await scene.DeclareAsync(nodes);
        ProbeReport forFirst = template.For(await scene.ChallengeAsync(nodes[0]), nodes[0]);

        // The second node signs a commitment naming the first node's nonce: refused, nothing recorded.
        byte[] borrowed = ResultCommitment.Encode(nodes[1].NodeId, forFirst);
        Assert.Equal("NONCE_UNKNOWN", (await CapacityScene.RefusalAsync(() =>
            scene.CommitAsync(nodes[1], borrowed, ByteString.CopyFrom(ResultCommitment.Sign(nodes[1].Key, borrowed))))).Reason);
        // A commitment naming one node, sent as another, or bytes that are no commitment, are malformed.
        var (mine, signature) = nodes[0].Commit(forFirst);
        Assert.Equal((StatusCode.InvalidArgument, "COMMITMENT_MALFORMED"), Head(await CapacityScene.RefusalAsync(() => scene.CommitAsync(nodes[1], mine, signature))));
        Assert.Equal("COMMITMENT_MALFORMED", (await CapacityScene.RefusalAsync(() => scene.CommitAsync(nodes[0], mine[..^1], signature))).Reason);
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_commitments"));
    }

    [Fact]
    public async Task A_new_inventory_supersedes_the_open_validation_and_its_nonces()
    {
        // A short redeclaration period, and a deadline beyond it: the node has not missed its
        // deadline when the provider declares again, so nothing has failed and the open
        // validation is superseded (InventoryRedeclarationTests: a failed one stays binding).
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres, capacity: new CapacitySettings
        {
            InventoryRedeclarationInterval = TimeSpan.FromMinutes(1),
            ChallengeKernelTime = TimeSpan.FromMinutes(2),
            ChallengeAllowance = TimeSpan.FromMinutes(3),
        });
        TestNode[] nodes = await scene.NodesAsync(1);
        FleetValidation first = await scene.DeclareAsync(nodes);
        ProbeReport report = template.For(await scene.ChallengeAsync(nodes[0]), nodes[0]);
        scene.Clock.Advance(TimeSpan.FromMinutes(1));

        FleetValidation second = await scene.DeclareAsync(nodes);

        Assert.Equal((2u, first.ValidationId + 1), (second.InventoryVersion, second.ValidationId));
        FleetValidation old = await scene.Client.GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = scene.Code, ValidationId = first.ValidationId }, scene.Key);
        Assert.Equal(FleetValidationState.ValidationSuperseded, old.State);
        Assert.Equal("NO_OPEN_VALIDATION", (await CapacityScene.RefusalAsync(() => scene.CommitAsync(nodes[0], report))).Reason);
        Assert.Equal("NO_OPEN_VALIDATION", (await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], report))).Reason);
    }

    [Fact]
    public async Task Inventories_with_duplicate_nodes_unknown_or_unprobeable_models_or_oversized_nodes_are_refused()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        TestNode[] nodes = await scene.NodesAsync(1);

        Assert.Equal((StatusCode.InvalidArgument, "INVENTORY_INVALID"), Head(await CapacityScene.RefusalAsync(() => scene.DeclareAsync([nodes[0], nodes[0]]))));
        Assert.Equal("DEVICE_MODEL_UNKNOWN", (await CapacityScene.RefusalAsync(() => scene.DeclareAsync(nodes, "H100"))).Reason);
        Assert.Equal("MODEL_NOT_PROBEABLE", (await CapacityScene.RefusalAsync(() => scene.DeclareAsync(nodes, "ASCEND-910B"))).Reason);
        Assert.Equal("INVENTORY_INVALID", (await CapacityScene.RefusalAsync(() => scene.DeclareAsync(nodes, devices: 65))).Reason);
        Assert.Equal("INVENTORY_INVALID", (await CapacityScene.RefusalAsync(() => scene.DeclareAsync([]))).Reason);
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_inventories"));
    }

    [Fact]
    public async Task Node_keys_must_be_ECDSA_P256_given_once()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        using RSA rsa = RSA.Create(2048);
        using ECDsa p384 = ECDsa.Create(ECCurve.NamedCurves.nistP384);
        using ECDsa p256 = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        RegisterNodeKeyRequest Request(Action<RegisterNodeKeyRequest> set)
        {
            var request = new RegisterNodeKeyRequest { CreditCode = scene.Code, NodeId = "node-1", DeviceUuids = { "GPU-8a1c2f3e-0000-4000-8000-000000000001" } };
            set(request);
            return request;
        }

        foreach (RegisterNodeKeyRequest bad in new[]
        {
            Request(r => r.PublicKeyDer = ByteString.CopyFrom(rsa.ExportSubjectPublicKeyInfo())),
            Request(r => r.PublicKeyPem = p384.ExportSubjectPublicKeyInfoPem()),
            Request(r => r.PublicKeyDer = ByteString.CopyFrom([1, 2, 3])),
            Request(r => { r.PublicKeyPem = p256.ExportSubjectPublicKeyInfoPem(); r.PublicKeyDer = ByteString.CopyFrom(p256.ExportSubjectPublicKeyInfo()); }),
            Request(_ => { }),
        })
        {
            Assert.Equal((StatusCode.InvalidArgument, "PUBLIC_KEY_INVALID"), Head(await CapacityScene.RefusalAsync(() => scene.Client.RegisterNodeKeyAsync(bad, scene.Key).ResponseAsync)));
        }

        NodeKey first = await scene.Client.RegisterNodeKeyAsync(Request(r => r.PublicKeyPem = p256.ExportSubjectPublicKeyInfoPem()), scene.Key);
        using ECDsa next = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        NodeKey rotated = await scene.Client.RegisterNodeKeyAsync(Request(r => r.PublicKeyDer = ByteString.CopyFrom(next.ExportSubjectPublicKeyInfo())), scene.Key);
        Assert.Equal((1u, 2u), (first.KeyVersion, rotated.KeyVersion));
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(p256.ExportSubjectPublicKeyInfo())), first.KeySha256);
    }

    [Fact]
    public async Task A_provider_neither_writes_nor_reads_another_providers_capacity_entries()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        TestNode[] nodes = await scene.NodesAsync(1);
        await scene.DeclareAsync(nodes);
        Metadata other = TestServer.Bearer(TestServer.OtherProviderKey);

        Assert.Equal((StatusCode.PermissionDenied, "OTHER_PROVIDER"), Head(await CapacityScene.RefusalAsync(() =>
            scene.Client.GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = scene.Code }, other).ResponseAsync)));
        Assert.Equal("OTHER_PROVIDER", (await CapacityScene.RefusalAsync(() =>
            scene.Client.StartChallengesAsync(new StartChallengesRequest { CreditCode = scene.Code }, other).ResponseAsync)).Reason);
        Assert.Equal("OTHER_PROVIDER", (await CapacityScene.RefusalAsync(() =>
            scene.Client.CommitResultsAsync(new CommitResultsRequest { CreditCode = scene.Code, NodeId = nodes[0].NodeId }, other).ResponseAsync)).Reason);
        Assert.Equal("OTHER_PROVIDER", (await CapacityScene.RefusalAsync(() =>
            scene.Client.DeclareInventoryAsync(new DeclareInventoryRequest { CreditCode = scene.Code, Nodes = { new DeclaredNode { NodeId = "x", Site = "s", DeviceModel = "H100-SXM", DeviceCount = 1 } } }, other).ResponseAsync)).Reason);
        Assert.Equal("VALIDATION_UNKNOWN", (await CapacityScene.RefusalAsync(() =>
            scene.Client.GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = TestRecords.OtherProvider }, other).ResponseAsync)).Reason);
    }

    private static (StatusCode, string) Head((StatusCode Status, string Reason, RpcException Error) refusal) => (refusal.Status, refusal.Reason);

    private static async Task AssertNothingStoredAsync(CapacityScene scene) =>
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_attestations"));
}
