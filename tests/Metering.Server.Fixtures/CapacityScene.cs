using System.Security.Cryptography;
using Google.Protobuf;
using Grpc.Core;
using Metering.Engine.Capacity;
using Metering.Engine.Catalog;
using Metering.Probe.Attestation.Checksums;
using Metering.Probe.Attestation.Results;
using Metering.Probe.Measurement;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Fixtures;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;

namespace Metering.Server.Fixtures;

/// <summary>A node of a test fleet: its id, its own ECDSA P-256 key and the UUIDs of its devices (ILGPU's CPU accelerator has none of its own).</summary>
internal sealed class TestNode(string nodeId, int devices = 1) : IDisposable
{
    public string NodeId { get; } = nodeId;

    public ECDsa Key { get; } = ECDsa.Create(ECCurve.NamedCurves.nistP256);

    /// <summary>Unique per node and device, so that nodes of one database never claim each other's device.</summary>
    public IReadOnlyList<string> DeviceUuids { get; } = [.. Enumerable.Range(0, devices).Select(_ => $"CPU-{Guid.NewGuid()}")];

    /// <summary>The UUID of the node's first device, the one the probe's CPU accelerator reports.</summary>
    public string DeviceUuid => DeviceUuids[0];

    /// <summary>The registration of this node's key with its device.</summary>
    public RegisterNodeKeyRequest Registration(string code) => new()
    {
        CreditCode = code,
        NodeId = NodeId,
        PublicKeyPem = Key.ExportSubjectPublicKeyInfoPem(),
        DeviceUuids = { DeviceUuids },
    };

    /// <summary>DER signature over the report's canonical bytes, as a node agent would make it.</summary>
    public ByteString Sign(ProbeReport report) =>
        ByteString.CopyFrom(Key.SignData(ProbeReportEncoding.Encode(report), HashAlgorithmName.SHA256, DSASignatureFormat.Rfc3279DerSequence));

    /// <summary>The node's commitment to a report's results, and its signature over it, as the probe tool makes them.</summary>
    public (byte[] Commitment, ByteString Signature) Commit(ProbeReport report)
    {
        byte[] commitment = ResultCommitment.Encode(NodeId, report);
        return (commitment, ByteString.CopyFrom(ResultCommitment.Sign(Key, commitment)));
    }

    public void Dispose() => Key.Dispose();
}

/// <summary>
/// A registry scene whose server attests against a chosen catalog (by default with the CPU fixture
/// model), with a fresh registered provider and helpers for the capacity flow: keys, inventory,
/// challenges, the probe run in-process on ILGPU's CPU accelerator, commitments and signed submissions.
/// </summary>
internal sealed class CapacityScene : IAsyncDisposable
{
    private readonly bool _ownsRegistry;

    private CapacityScene(RegistryScene registry, string code, Metadata key, bool ownsRegistry = true)
    {
        Registry = registry;
        Code = code;
        Key = key;
        Client = registry.Server.CapacityClient();
        _ownsRegistry = ownsRegistry;
    }

    /// <summary>Another registered provider on the same server and database; disposing it leaves the server to this scene.</summary>
    public async Task<CapacityScene> AnotherProviderAsync()
    {
        var (code, key) = await Registry.RegisterAsync();
        return new CapacityScene(Registry, code, key, ownsRegistry: false);
    }

    /// <summary>The server's verification gate: its count of started verifications, and the providers' places.</summary>
    public VerificationGate Verifications => Server.Services.GetRequiredService<FleetValidationService>().Verifications;

    public RegistryScene Registry { get; }

    public string Code { get; }

    public Metadata Key { get; }

    public CapacityService.CapacityServiceClient Client { get; }

    public ManualClock Clock => Registry.Clock;

    public TestServer Server => Registry.Server;

    /// <param name="admitted">Take the provider through admission (320 H100 declared) instead of only registering it.</param>
    /// <param name="filing">With <paramref name="admitted"/>, changes the filing before it is filed (its declared devices, for example).</param>
    /// <param name="database">A database of the test's own (a Citus cluster's), whose operator key is <paramref name="operatorKey"/>.</param>
    public static async Task<CapacityScene> StartAsync(PostgresFixture postgres, DeviceCatalog? catalog = null, CapacitySettings? capacity = null, bool admitted = false,
        Action<FileApplicationRequest>? filing = null, string? database = null, string? operatorKey = null)
    {
        RegistryScene registry = await RegistryScene.StartAsync(postgres, catalog: catalog ?? TestCatalogs.WithCpuFixture(), capacity: capacity, database: database, operatorKey: operatorKey);
        var (code, key) = admitted ? await AdmitAsync(registry, filing) : await registry.RegisterAsync();
        return new CapacityScene(registry, code, key);
    }

    private static async Task<(string, Metadata)> AdmitAsync(RegistryScene registry, Action<FileApplicationRequest>? filing)
    {
        var (code, key, _) = await registry.AdmitAsync(filing);
        return (code, key);
    }

    /// <summary>
    /// Nodes with registered keys, each with its device's UUID; the first registers its key as DER,
    /// the others as PEM. With <paramref name="approved"/> an operator approves every key.
    /// </summary>
    public async Task<TestNode[]> NodesAsync(int count, string prefix = "cpu", bool approved = true, int devicesPerNode = 1)
    {
        var nodes = new TestNode[count];
        for (int i = 0; i < count; i++)
        {
            nodes[i] = new TestNode($"{prefix}-{i:D2}", devicesPerNode);
            RegisterNodeKeyRequest request = nodes[i].Registration(Code);
            if (i == 0)
            {
                request.PublicKeyPem = "";
                request.PublicKeyDer = ByteString.CopyFrom(nodes[i].Key.ExportSubjectPublicKeyInfo());
            }

            NodeKey key = await Client.RegisterNodeKeyAsync(request, Key);
            if (approved)
            {
                await ApproveAsync(key);
            }
        }

        return nodes;
    }

    /// <summary>An operator approves the key as registered, naming its version and fingerprint.</summary>
    public async Task<NodeKey> ApproveAsync(NodeKey key, string reasons = "fingerprint read back to the provider by telephone") =>
        await Client.ApproveNodeKeyAsync(new ApproveNodeKeyRequest
        {
            CreditCode = key.CreditCode,
            NodeId = key.NodeId,
            KeyVersion = key.KeyVersion,
            KeySha256 = key.KeySha256,
            Reasons = reasons,
        }, Registry.OperatorHeaders);

    public Task<FleetValidation> DeclareAsync(IEnumerable<TestNode> nodes, string model = TestCatalogs.CpuFixtureModel, uint devices = 1) =>
        Client.DeclareInventoryAsync(new DeclareInventoryRequest
        {
            CreditCode = Code,
            Nodes = { nodes.Select(n => new DeclaredNode { NodeId = n.NodeId, Site = "sz-test-dc", DeviceModel = model, DeviceCount = devices }) },
        }, Key).ResponseAsync;

    /// <summary>Starts the open validation's challenges, or reads them when they have started.</summary>
    public Task<ChallengeSet> StartChallengesAsync() =>
        Client.StartChallengesAsync(new StartChallengesRequest { CreditCode = Code }, Key).ResponseAsync;

    /// <summary>The node's challenge (starting the challenges if no call has yet).</summary>
    public async Task<NodeChallenge> ChallengeAsync(TestNode node) => (await StartChallengesAsync()).Challenges.Single(c => c.NodeId == node.NodeId);

    /// <summary>The whole probe on ILGPU's CPU accelerator, on the challenge's nonce, work and runs, reporting the node's device UUID, as `metering-probe run` does.</summary>
    public static ProbeReport RunProbe(NodeChallenge challenge, TestNode node) => RunProbe(challenge, node.DeviceUuid);

    /// <summary>The probe on the challenge's nonce, work and runs, its CPU device reporting <paramref name="deviceUuid"/> (none when null).</summary>
    public static ProbeReport RunProbe(NodeChallenge challenge, string? deviceUuid) =>
        new ProbeRunner(new ProbeSettings
        {
            Nonce = Convert.FromHexString(challenge.NonceHex),
            Attested = true,
            Devices = DeviceFilter.Cpu,
            Runs = (int)challenge.RunsPerKernel,
            WorkOverrides = challenge.Work.ToDictionary(w => Kind(w.Kernel), w => new WorkSize((int)w.Items, (int)w.Iterations)),
            Kernels = challenge.Work.Select(w => Kind(w.Kernel)).ToList(),
            CpuDeviceUuid = deviceUuid,
        }, NullLogger.Instance).Run();

    /// <summary>The probe's small preset (the CPU fixture's set work), three timed runs per kernel, on any nonce, its CPU device reporting <paramref name="deviceUuid"/>.</summary>
    public static ProbeReport RunProbe(byte[] nonce, string? deviceUuid = null) =>
        new ProbeRunner(new ProbeSettings { Nonce = nonce, Attested = true, Devices = DeviceFilter.Cpu, Size = SizePreset.Small, Runs = 3, CpuDeviceUuid = deviceUuid },
            NullLogger.Instance).Run();

    private static KernelKind Kind(string kernel) => KernelKinds.TryParse(kernel, out KernelKind kind) ? kind : throw new ArgumentException(kernel);

    /// <summary>Sends the node's signed commitment to the report's results.</summary>
    public Task<CommitmentReceipt> CommitAsync(TestNode node, ProbeReport report)
    {
        var (commitment, signature) = node.Commit(report);
        return CommitAsync(node, commitment, signature);
    }

    public Task<CommitmentReceipt> CommitAsync(TestNode node, byte[] commitment, ByteString signature) =>
        Client.CommitResultsAsync(new CommitResultsRequest { CreditCode = Code, NodeId = node.NodeId, Commitment = ByteString.CopyFrom(commitment), Signature = signature }, Key).ResponseAsync;

    public Task<AttestationResult> SubmitAsync(TestNode node, ProbeReport report, ByteString? signature = null) =>
        Client.SubmitAttestationAsync(new SubmitAttestationRequest
        {
            CreditCode = Code,
            NodeId = node.NodeId,
            ReportJson = ProbeReportJson.Serialize(report),
            Signature = signature ?? node.Sign(report),
        }, Key).ResponseAsync;

    /// <summary>Challenge, probe run, commitment and signed submission for one node.</summary>
    public async Task<AttestationResult> AttestAsync(TestNode node)
    {
        ProbeReport report = RunProbe(await ChallengeAsync(node), node);
        await CommitAsync(node, report);
        return await SubmitAsync(node, report);
    }

    /// <summary>Commitment and submission of a report (an honest one or a forgery) for one node.</summary>
    public async Task<AttestationResult> CommitAndSubmitAsync(TestNode node, ProbeReport report)
    {
        await CommitAsync(node, report);
        return await SubmitAsync(node, report);
    }

    /// <summary>Files an application and passes its material review, so that it awaits verification.</summary>
    public async Task<long> ApplicationAwaitingVerificationAsync()
    {
        Application filed = await Registry.Client.FileApplicationAsync(RegistryScene.Filing(Code), Key);
        await Registry.Client.ReviewMaterialsAsync(new StageDecision { ApplicationId = filed.ApplicationId, Pass = true }, Registry.OperatorHeaders);
        return filed.ApplicationId;
    }

    /// <summary>The call's refusal: its status and its ErrorInfo reason.</summary>
    public static async Task<(StatusCode Status, string Reason, RpcException Error)> RefusalAsync(Func<Task> call)
    {
        RpcException error = await Assert.ThrowsAsync<RpcException>(call);
        return (error.StatusCode, IngestCall.Reason(error) ?? "", error);
    }

    /// <summary>A copy of the report with one kernel's timings replaced, its median and rate recomputed as the probe would.</summary>
    public static ProbeReport WithDurations(ProbeReport report, string kernel, long durationNs) => report with
    {
        Devices = report.Devices.Select(d => d with
        {
            Measurements = d.Measurements.Select(m => m.Kernel != kernel ? m : m with
            {
                DurationsNs = m.DurationsNs.Select(_ => durationNs).ToList(),
                MedianDurationNs = durationNs,
                MedianRate = MeasurementMath.Rate(Probe.Attestation.Checksums.KernelKinds.TryParse(kernel, out var kind) ? kind : 0, m.WorkPerRun, durationNs),
            }).ToList(),
        }).ToList(),
    };

    public async ValueTask DisposeAsync()
    {
        if (_ownsRegistry)
        {
            await Registry.DisposeAsync();
        }
    }
}
