using System.Security.Cryptography;
using System.Text.Json;
using Metering.Engine.Catalog;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>
/// `metering capacity` as a provider and an operator run it: the real process, a client of a real
/// server over TLS with the test CA, calling as the key it is given. Bad input exits with 2 and
/// sends nothing; the server's refusals exit with 4 and change nothing.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class CapacityCliTests(PostgresFixture postgres) : IDisposable
{
    private const string Provider = TestRecords.Provider;

    private readonly string _folder = Directory.CreateTempSubdirectory("capacity-cli-").FullName;

    [Fact]
    public async Task A_provider_registers_a_node_key_declares_an_inventory_and_reads_the_sample_as_a_table_and_as_json()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        string publicKey = await WriteAsync("node.pub.pem", key.ExportSubjectPublicKeyInfoPem());

        string[] uuids = [$"GPU-{Guid.NewGuid()}", $"GPU-{Guid.NewGuid()}"];

        var (registered, registerOutput) = await ProviderAsync(server, "key", "register", "--code", Provider, "--node", "gpu-01", "--public-key", publicKey,
            "--device-uuid", uuids[0], "--device-uuid", uuids[1]);

        Assert.True(registered == 0, registerOutput);
        string fingerprint = Convert.ToHexStringLower(SHA256.HashData(key.ExportSubjectPublicKeyInfo()));
        Assert.Contains($"key version 1 of node gpu-01 for {Provider}: SHA-256 {fingerprint}", registerOutput, StringComparison.Ordinal);
        Assert.Contains($"metering capacity key approve --code {Provider} --node gpu-01 --version 1 --fingerprint {fingerprint}", registerOutput, StringComparison.Ordinal);
        Assert.Equal(fingerprint, Convert.ToHexStringLower(await server.ScalarAsync<byte[]>(
            "SELECT key_sha256 FROM capacity_node_keys WHERE provider_id = @Provider AND node_id = 'gpu-01'", new { Provider })));
        Assert.Equal(uuids, await server.ScalarAsync<string[]>(
            "SELECT device_uuids FROM capacity_node_keys WHERE provider_id = @Provider AND node_id = 'gpu-01'", new { Provider }));

        var (approved, approveOutput) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey,
            "capacity", "key", "approve", "--code", Provider, "--node", "gpu-01", "--version", "1", "--fingerprint", fingerprint, "--reason", "Fingerprint read back by the provider.");

        Assert.True(approved == 0, approveOutput);
        Assert.Contains($"Approved key version 1 of node gpu-01 for {Provider} (SHA-256 {fingerprint}), by operator:", approveOutput, StringComparison.Ordinal);
        Assert.Equal("Fingerprint read back by the provider.", await server.ScalarAsync<string>(
            "SELECT reasons FROM capacity_node_key_approvals WHERE provider_id = @Provider AND node_id = 'gpu-01' AND key_version = 1", new { Provider }));

        string inventory = await WriteAsync("inventory.json", Inventory(("gpu-01", "H100-SXM", 8), ("gpu-02", "H100-SXM", 8), ("gpu-03", "H200-SXM", 8)));
        var (declared, declareOutput) = await ProviderAsync(server, "inventory", "declare", "--code", Provider, "--file", inventory);

        Assert.True(declared == 0, declareOutput);
        FleetValidation validation = await server.CapacityClient().GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = Provider }, TestServer.Bearer());
        Assert.Equal((3u, 24ul), (validation.NodeCount, validation.DeviceCount));
        Assert.Contains($"Validation {validation.ValidationId} of {Provider}, inventory version 1: collecting reports.", declareOutput, StringComparison.Ordinal);
        Assert.Contains("16 H100-SXM, 8 H200-SXM", declareOutput, StringComparison.Ordinal);
        // The sample stays hidden until the challenges start, so no node can prepare for it.
        Assert.Contains($"Sample: {validation.SampleSize} of 3 nodes, shown when the challenges start", declareOutput, StringComparison.Ordinal);
        Assert.DoesNotContain("gpu-0", declareOutput, StringComparison.Ordinal);

        var (started, startOutput) = await ProviderAsync(server, "challenges", "start", "--code", Provider);

        Assert.True(started == 0, startOutput);
        validation = await server.CapacityClient().GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = Provider }, TestServer.Bearer());
        Assert.Contains($"Challenges of validation {validation.ValidationId} started now", startOutput, StringComparison.Ordinal);
        Assert.All(validation.Sample, node => Assert.Matches($@"(?m)^{node.NodeId} +{node.DeviceModel} +8 +\d+ +tensor-fp16 \d+x\d+, packed-fp16 \d+x\d+, fp32-fma \d+x\d+, memory-bandwidth \d+x\d+ +\d+\.\d *$", startOutput));
        var (again, againOutput) = await ProviderAsync(server, "challenges", "start", "--code", Provider);
        Assert.True(again == 0, againOutput);
        Assert.Contains("already started", againOutput, StringComparison.Ordinal);

        var (shown, json) = await ProviderAsync(server, "validation", "show", validation.ValidationId.ToString(System.Globalization.CultureInfo.InvariantCulture), "--code", Provider, "--output", "json");

        Assert.True(shown == 0, json);
        Assert.Equal(validation, FleetValidation.Parser.ParseJson(json));
        var (latest, table) = await ProviderAsync(server, "validation", "show", "--code", Provider);
        Assert.True(latest == 0, table);
        Assert.Contains($"Sample: {validation.SampleSize} of 3 nodes (seed {validation.SampleSeedHex}), challenged ", table, StringComparison.Ordinal);
        Assert.All(validation.Sample, node => Assert.Matches($@"(?m)^{node.NodeId} +sz-\S+ +{node.DeviceModel} +8 +pending *$", table));
    }

    [Fact]
    public async Task Bad_input_exits_2_and_registers_and_declares_nothing()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        string privateKey = await WriteAsync("node.pem", key.ExportPkcs8PrivateKeyPem());
        string publicKey = await WriteAsync("node.pub.pem", key.ExportSubjectPublicKeyInfoPem());
        string notAKey = await WriteAsync("notes.txt", "gpu-01 is in rack 4\n");
        string unknownField = await WriteAsync("extra.json", """{"nodes": [{"nodeId": "gpu-01", "site": "sz", "deviceModel": "H100-SXM", "deviceCount": 8, "owner": "x"}]}""");
        string noNodes = await WriteAsync("empty.json", """{"nodes": []}""");
        string countAsText = await WriteAsync("text.json", """{"nodes": [{"nodeId": "gpu-01", "site": "sz", "deviceModel": "H100-SXM", "deviceCount": "8"}]}""");

        string[][] attempts =
        [
            // The private key would leave the node if the CLI sent it; it refuses to.
            ["key", "register", "--code", Provider, "--node", "gpu-01", "--public-key", privateKey, "--device-uuid", "GPU-1"],
            ["key", "register", "--code", Provider, "--node", "gpu-01", "--public-key", notAKey, "--device-uuid", "GPU-1"],
            ["key", "register", "--code", Provider, "--node", "gpu-01", "--public-key", Path.Combine(_folder, "absent.pem"), "--device-uuid", "GPU-1"],
            ["key", "register", "--node", "gpu-01", "--public-key", notAKey, "--device-uuid", "GPU-1"],
            // A key bound to no device would let the node report any hardware; the CLI sends none without a UUID.
            ["key", "register", "--code", Provider, "--node", "gpu-01", "--public-key", publicKey],
            ["key", "register", "--code", Provider, "--node", "gpu-01", "--public-key", publicKey, "--device-uuid", "GPU 1"],
            ["key", "register", "--code", Provider, "--node", "gpu-01", "--public-key", publicKey, "--device-uuid", "GPU-1", "--device-uuid", "GPU-1"],
            ["key", "approve", "--code", Provider, "--node", "gpu-01", "--version", "1", "--fingerprint", "not-a-fingerprint", "--reason", "checked"],
            ["key", "approve", "--code", Provider, "--node", "gpu-01", "--version", "1", "--fingerprint", new string('a', 64)],
            ["key", "list", "--code", Provider, "--output", "yaml"],
            ["inventory", "declare", "--code", Provider, "--file", unknownField],
            ["inventory", "declare", "--code", Provider, "--file", noNodes],
            ["inventory", "declare", "--code", Provider, "--file", countAsText],
            ["validation", "show", "--code", Provider, "--output", "yaml"],
            ["challenges", "start"],
            ["review", "--code", Provider, "--validation", "1", "--node", "gpu-01", "--device", "0"],
            ["review", "--code", Provider, "--validation", "1", "--node", "gpu-01", "--device", "0", "--accept", "H100-SXM", "--reject", "--reasons", "x"],
            ["review", "--code", Provider, "--validation", "1", "--node", "gpu-01", "--device", "0", "--reject"],
        ];
        foreach (string[] attempt in attempts)
        {
            var (exit, output) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, ["capacity", .. attempt]);
            Assert.True(exit == 2, $"capacity {string.Join(' ', attempt)} exited {exit}: {output}");
            Assert.DoesNotContain("refused:", output, StringComparison.Ordinal);
        }

        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM capacity_node_keys"));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM capacity_node_key_approvals"));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM capacity_inventories"));
    }

    [Fact]
    public async Task Only_an_operator_approves_a_node_key_with_its_own_fingerprint_and_list_pending_shows_only_the_key_awaiting_approval()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        using var first = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var second = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        string firstKey = await WriteAsync("gpu-01.pub.pem", first.ExportSubjectPublicKeyInfoPem());
        string secondKey = await WriteAsync("gpu-02.pub.pem", second.ExportSubjectPublicKeyInfoPem());
        string firstUuid = $"GPU-{Guid.NewGuid()}";
        string secondUuid = $"GPU-{Guid.NewGuid()}";
        Assert.Equal(0, (await ProviderAsync(server, "key", "register", "--code", Provider, "--node", "gpu-01", "--public-key", firstKey, "--device-uuid", firstUuid)).ExitCode);
        Assert.Equal(0, (await ProviderAsync(server, "key", "register", "--code", Provider, "--node", "gpu-02", "--public-key", secondKey, "--device-uuid", secondUuid)).ExitCode);
        string firstFingerprint = Convert.ToHexStringLower(SHA256.HashData(first.ExportSubjectPublicKeyInfo()));
        string secondFingerprint = Convert.ToHexStringLower(SHA256.HashData(second.ExportSubjectPublicKeyInfo()));

        // The provider cannot approve its own key, and an operator cannot approve a key other than the one checked with the provider.
        var (byProvider, byProviderOutput) = await ProviderAsync(server,
            "key", "approve", "--code", Provider, "--node", "gpu-01", "--version", "1", "--fingerprint", firstFingerprint, "--reason", "Approving myself.");
        var (wrongKey, wrongKeyOutput) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey,
            "capacity", "key", "approve", "--code", Provider, "--node", "gpu-01", "--version", "1", "--fingerprint", secondFingerprint, "--reason", "Checked on the phone.");

        Assert.True(byProvider == 4, byProviderOutput);
        Assert.Contains(" ROLE_NOT_ALLOWED: ", byProviderOutput, StringComparison.Ordinal);
        Assert.True(wrongKey == 4, wrongKeyOutput);
        Assert.Contains("FailedPrecondition NODE_KEY_NOT_PENDING: ", wrongKeyOutput, StringComparison.Ordinal);
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM capacity_node_key_approvals"));

        var (approved, approveOutput) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey,
            "capacity", "key", "approve", "--code", Provider, "--node", "gpu-01", "--version", "1", "--fingerprint", firstFingerprint, "--reason", "Checked on the phone.");
        Assert.True(approved == 0, approveOutput);

        var (pendingExit, pending) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey, "capacity", "key", "list", "--code", Provider, "--pending");

        Assert.True(pendingExit == 0, pending);
        Assert.Matches($@"(?m)^gpu-02 +1 +{secondFingerprint} +{secondUuid} +pending *$", pending);
        Assert.DoesNotContain("gpu-01", pending, StringComparison.Ordinal);
        Assert.DoesNotContain(firstFingerprint, pending, StringComparison.Ordinal);

        // The provider lists its own keys: the approved one with who approved it and when, the pending one without.
        var (allExit, all) = await ProviderAsync(server, "key", "list", "--code", Provider);
        Assert.True(allExit == 0, all);
        Assert.Matches($@"(?m)^gpu-01 +1 +{firstFingerprint} +{firstUuid} +approved +operator:\S+ +\d{{4}}-\d\d-\d\d \d\d:\d\d *$", all);
        Assert.Matches($@"(?m)^gpu-02 +1 +{secondFingerprint} +{secondUuid} +pending *$", all);
        var (jsonExit, json) = await CliProcess.RunAsAsync(server, TestServer.AuditorKey, "capacity", "key", "list", "--code", Provider, "--output", "json");
        Assert.True(jsonExit == 0, json);
        NodeKeyList listed = NodeKeyList.Parser.ParseJson(json);
        Assert.Equal([("gpu-01", true), ("gpu-02", false)], listed.Keys.Select(k => (k.NodeId, k.Approved)));
        Assert.Equal("Checked on the phone.", listed.Keys[0].ApprovalReasons);
    }

    [Fact]
    public async Task The_servers_refusals_exit_4_with_status_and_reason_and_change_nothing()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        string publicKey = await WriteAsync("node.pub.pem", key.ExportSubjectPublicKeyInfoPem());
        string twice = await WriteAsync("twice.json", Inventory(("gpu-01", "H100-SXM", 8), ("gpu-01", "H100-SXM", 8)));
        string ascend = await WriteAsync("ascend.json", Inventory(("npu-01", "ASCEND-910B", 8)));

        (string Reason, string[] Arguments)[] attempts =
        [
            ("OTHER_PROVIDER", ["key", "register", "--code", TestRecords.OtherProvider, "--node", "gpu-01", "--public-key", publicKey, "--device-uuid", "GPU-1"]),
            ("INVENTORY_INVALID", ["inventory", "declare", "--code", Provider, "--file", twice]),
            ("MODEL_NOT_PROBEABLE", ["inventory", "declare", "--code", Provider, "--file", ascend]),
            ("VALIDATION_UNKNOWN", ["validation", "show", "--code", Provider]),
            ("NO_OPEN_VALIDATION", ["challenges", "start", "--code", Provider]),
            ("ROLE_NOT_ALLOWED", ["review", "--code", Provider, "--validation", "1", "--node", "gpu-01", "--device", "0", "--accept", "H100-SXM"]),
        ];
        foreach (var (reason, attempt) in attempts)
        {
            var (exit, output) = await ProviderAsync(server, attempt);
            Assert.True(exit == 4, $"capacity {string.Join(' ', attempt)} exited {exit}: {output}");
            Assert.Contains($"refused: ", output, StringComparison.Ordinal);
            Assert.Contains($" {reason}: ", output, StringComparison.Ordinal);
        }

        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM capacity_node_keys"));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM capacity_inventories"));
    }

    [Fact]
    public async Task An_operator_accepts_one_device_awaiting_review_and_rejects_another_through_the_cli()
    {
        // The catalog has no CPU model: the provider says its nodes hold a GPU whose probe names the CPU does not match.
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres, TestCatalogs.WithUnnamedGpu());
        TestNode[] nodes = await scene.NodesAsync(2);
        FleetValidation declared = await scene.DeclareAsync(nodes, UnnamedGpu);
        foreach (TestNode node in nodes)
        {
            Assert.Equal(NodeOutcome.NodeAwaitingReview, (await scene.AttestAsync(node)).Node.Outcome);
        }

        string id = declared.ValidationId.ToString(System.Globalization.CultureInfo.InvariantCulture);
        var (shownExit, shown) = await CliProcess.RunAsAsync(scene.Server, TestServer.OperatorKey, "capacity", "validation", "show", id, "--code", scene.Code);
        Assert.True(shownExit == 0, shown);
        Assert.Matches($@"(?m)^{nodes[0].NodeId} +sz-test-dc +{UnnamedGpu} +1 +awaiting review +\d+\.\d +\d+ +0 awaiting review *$", shown);
        Assert.Contains($"{nodes[0].NodeId} device 0 (CPUAccelerator): awaiting review: ", shown, StringComparison.Ordinal);

        var (accepted, acceptOutput) = await CliProcess.RunAsAsync(scene.Server, TestServer.OperatorKey,
            "capacity", "review", "--code", scene.Code, "--validation", id, "--node", nodes[0].NodeId, "--device", "0", "--accept", UnnamedGpu);
        Assert.True(accepted == 0, acceptOutput);
        var (again, againOutput) = await CliProcess.RunAsAsync(scene.Server, TestServer.OperatorKey,
            "capacity", "review", "--code", scene.Code, "--validation", id, "--node", nodes[0].NodeId, "--device", "0", "--accept", UnnamedGpu);
        Assert.Equal(4, again);
        Assert.Contains(" REVIEW_NOT_PENDING: ", againOutput, StringComparison.Ordinal);
        var (rejected, rejectOutput) = await CliProcess.RunAsAsync(scene.Server, TestServer.OperatorKey,
            "capacity", "review", "--code", scene.Code, "--validation", id, "--node", nodes[1].NodeId, "--device", "0", "--reject", "--reasons", "Not an H100: the probe saw a CPU.", "--output", "json");
        Assert.True(rejected == 0, rejectOutput);

        FleetValidation complete = FleetValidation.Parser.ParseJson(rejectOutput);
        Assert.Equal(FleetValidationState.ValidationComplete, complete.State);
        Assert.Equal((NodeOutcome.NodePassed, UnnamedGpu), (complete.Sample.Single(n => n.NodeId == nodes[0].NodeId).Outcome, complete.Sample.Single(n => n.NodeId == nodes[0].NodeId).Devices.Single().DeviceModel));
        Assert.Equal(DeviceOutcome.DeviceRejected, complete.Sample.Single(n => n.NodeId == nodes[1].NodeId).Devices.Single().Outcome);
    }

    private const string UnnamedGpu = TestCatalogs.UnnamedGpuModel;

    private static Task<(int ExitCode, string Output)> ProviderAsync(TestServer server, params string[] arguments) =>
        CliProcess.RunAsAsync(server, TestServer.ProviderKey, ["capacity", .. arguments]);

    private static string Inventory(params (string Node, string Model, int Devices)[] nodes) => JsonSerializer.Serialize(new
    {
        nodes = nodes.Select(n => new { nodeId = n.Node, site = "sz-nanshan-dc1", deviceModel = n.Model, deviceCount = n.Devices }),
    });

    private async Task<string> WriteAsync(string name, string text)
    {
        string path = Path.Combine(_folder, name);
        await File.WriteAllTextAsync(path, text);
        return path;
    }

    public void Dispose() => Directory.Delete(_folder, recursive: true);
}
