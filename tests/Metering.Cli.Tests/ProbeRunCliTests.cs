using System.Globalization;
using System.Text.RegularExpressions;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>
/// A provider's whole run with the shipped tools only, as separate processes against a real
/// server over TLS: `metering-probe keygen` on the node, `metering capacity key register` with the
/// node's device UUID, the operator's `metering capacity key approve`, `inventory declare`, then
/// `metering-probe run` on ILGPU's CPU accelerator (the CPU fixture model) with that UUID, and the
/// cheats a provider might try with the same tools.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class ProbeRunCliTests(PostgresFixture postgres) : IDisposable
{
    private const string Provider = TestRecords.Provider;

    private readonly string _folder = Directory.CreateTempSubdirectory("probe-run-").FullName;

    [Fact]
    public async Task Keygen_register_declare_and_probe_run_complete_a_validation_and_a_second_run_is_refused_before_it_measures()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, catalog: TestCatalogs.WithCpuFixture());
        string key = await NodeReadyAsync(server);
        string report = Path.Combine(_folder, "report.json");

        var (exit, output) = await RunAsync(server, key, "--json", report);

        Assert.True(exit == 0, output);
        FleetValidation validation = await server.CapacityClient().GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = Provider }, TestServer.Bearer());
        SampledNode node = validation.Sample.Single();
        Assert.Equal((FleetValidationState.ValidationComplete, NodeOutcome.NodePassed), (validation.State, node.Outcome));
        Assert.Contains($"node cpu-node-01 (1 x CPU-FIXTURE declared at sz-test-dc): PASSED; attestation {node.AttestationId}", output, StringComparison.Ordinal);
        Assert.Matches(@"(?m)^0: CPUAccelerator +CPU-FIXTURE +healthy +tensor-fp16 +portable +\S+ \S+ +\S+ \S+ +\S+ \S+ +\S+ \S+ +yes$", output);
        Assert.Contains(string.Create(CultureInfo.InvariantCulture, $"validation {validation.ValidationId} (inventory 1): complete; 1 passed and 0 failed of 1 sampled nodes"), output, StringComparison.Ordinal);
        Assert.Contains("Node cpu-node-01: asking", output, StringComparison.Ordinal);
        Assert.True(File.Exists(report), "--json kept no report");

        // The same node again: the validation is complete, and the server says so before anything is measured.
        var (again, againOutput) = await RunAsync(server, key);

        Assert.Equal(5, again);
        Assert.Contains("refused: FailedPrecondition NO_OPEN_VALIDATION", againOutput, StringComparison.Ordinal);
        Assert.DoesNotContain("Device 0", againOutput, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_run_given_two_servers_on_one_database_completes_the_validation_through_the_one_that_answers()
    {
        await using TestServer down = await TestServer.StartAsync(postgres, catalog: TestCatalogs.WithCpuFixture());
        await using TestServer up = await TestServer.StartAsync(postgres, catalog: TestCatalogs.WithCpuFixture(), database: down.ConnectionString);
        string key = await NodeReadyAsync(up);
        await down.StopAsync();
        string servers = $"{down.Address.ToString().TrimEnd('/')},{up.Address.ToString().TrimEnd('/')}";

        var (exit, output) = await CliProcess.RunProbeAsync(new Dictionary<string, string> { ["METERING_API_KEY"] = TestServer.ProviderKey },
            "run", "--server", servers, "--ca", TestCertificates.CaPemPath, "--code", Provider, "--node-id", "cpu-node-01", "--key", key, "--device", "cpu", "--device-uuid", DeviceUuid);

        Assert.True(exit == 0, output);
        FleetValidation validation = await up.CapacityClient().GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = Provider }, TestServer.Bearer());
        Assert.Equal((FleetValidationState.ValidationComplete, NodeOutcome.NodePassed), (validation.State, validation.Sample.Single().Outcome));
        Assert.Contains($"Node cpu-node-01: asking {servers}", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_run_signed_with_a_key_the_node_never_registered_is_refused_with_exit_5_and_the_node_stays_pending()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, catalog: TestCatalogs.WithCpuFixture());
        string registered = Path.Combine(_folder, "node.pem");
        string stolenNode = Path.Combine(_folder, "other.pem");
        var (_, publicKey) = await CliProcess.RunProbeAsync(new Dictionary<string, string>(), "keygen", "--out", registered);
        Assert.Equal(0, (await CliProcess.RunProbeAsync(new Dictionary<string, string>(), "keygen", "--out", stolenNode)).ExitCode);
        string publicKeyFile = await WriteAsync("node.pub.pem", publicKey[publicKey.IndexOf("-----BEGIN PUBLIC KEY-----", StringComparison.Ordinal)..]);
        await RegisterAndApproveAsync(server, publicKeyFile);
        string inventory = await WriteAsync("inventory.json",
            """{"nodes": [{"nodeId": "cpu-node-01", "site": "sz-test-dc", "deviceModel": "CPU-FIXTURE", "deviceCount": 1}]}""");
        Assert.Equal(0, (await Capacity(server, "inventory", "declare", "--code", Provider, "--file", inventory)).ExitCode);

        var (exit, output) = await RunAsync(server, stolenNode);

        Assert.Equal(5, exit);
        // The commitment is the first thing the node signs; the server refuses it before anything is recorded.
        Assert.Contains("PermissionDenied SIGNATURE_INVALID", output, StringComparison.Ordinal);
        FleetValidation validation = await server.CapacityClient().GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = Provider }, TestServer.Bearer());
        Assert.Equal(NodeOutcome.NodePending, validation.Sample.Single().Outcome);
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM capacity_attestations"));
    }

    [Fact]
    public async Task A_node_that_runs_after_its_deadline_on_the_servers_clock_exits_6_with_the_node_failed_and_nothing_attested()
    {
        // The server's clock is a manual one: the challenges start, and the node runs only after its deadline on that clock.
        var clock = new ManualClock(DateTimeOffset.UtcNow);
        await using TestServer server = await TestServer.StartAsync(postgres, catalog: TestCatalogs.WithCpuFixture(), time: clock);
        string key = Path.Combine(_folder, "node.pem");
        var (_, publicKey) = await CliProcess.RunProbeAsync(new Dictionary<string, string>(), "keygen", "--out", key);
        string publicKeyFile = await WriteAsync("node.pub.pem", publicKey[publicKey.IndexOf("-----BEGIN PUBLIC KEY-----", StringComparison.Ordinal)..]);
        await RegisterAndApproveAsync(server, publicKeyFile);
        string inventory = await WriteAsync("inventory.json",
            """{"nodes": [{"nodeId": "cpu-node-01", "site": "sz-test-dc", "deviceModel": "CPU-FIXTURE", "deviceCount": 1}]}""");
        Assert.Equal(0, (await Capacity(server, "inventory", "declare", "--code", Provider, "--file", inventory)).ExitCode);
        var (started, startOutput) = await Capacity(server, "challenges", "start", "--code", Provider, "--output", "json");
        Assert.True(started == 0, startOutput);
        long deadline = ChallengeSet.Parser.ParseJson(startOutput).Challenges.Single().DeadlineUnixMs;
        clock.Advance(DateTimeOffset.FromUnixTimeMilliseconds(deadline + 1) - clock.GetUtcNow());

        var (exit, output) = await RunAsync(server, key);

        Assert.True(exit == 6, output);
        FleetValidation validation = await server.CapacityClient().GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = Provider }, TestServer.Bearer());
        SampledNode node = validation.Sample.Single();
        Assert.Equal(NodeOutcome.NodeFailed, node.Outcome);
        Assert.NotEqual("", node.Detail);
        Assert.Contains($"node cpu-node-01 has failed this validation: {node.Detail}", output, StringComparison.Ordinal);
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM capacity_attestations"));
    }

    [Fact]
    public async Task A_run_before_an_operator_approves_the_node_key_is_refused_with_exit_5_before_the_challenges_start()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, catalog: TestCatalogs.WithCpuFixture());
        string key = Path.Combine(_folder, "node.pem");
        var (_, publicKey) = await CliProcess.RunProbeAsync(new Dictionary<string, string>(), "keygen", "--out", key);
        string publicKeyFile = await WriteAsync("node.pub.pem", publicKey[publicKey.IndexOf("-----BEGIN PUBLIC KEY-----", StringComparison.Ordinal)..]);
        var (registered, registerOutput) = await Capacity(server, "key", "register", "--code", Provider, "--node", "cpu-node-01", "--public-key", publicKeyFile, "--device-uuid", DeviceUuid);
        Assert.True(registered == 0, registerOutput);
        string inventory = await WriteAsync("inventory.json",
            """{"nodes": [{"nodeId": "cpu-node-01", "site": "sz-test-dc", "deviceModel": "CPU-FIXTURE", "deviceCount": 1}]}""");
        Assert.Equal(0, (await Capacity(server, "inventory", "declare", "--code", Provider, "--file", inventory)).ExitCode);

        var (exit, output) = await RunAsync(server, key);

        Assert.True(exit == 5, output);
        Assert.Contains("refused: NODE_KEY_NOT_APPROVED: key version 1 of node cpu-node-01", output, StringComparison.Ordinal);
        Assert.DoesNotContain("Device 0", output, StringComparison.Ordinal);
        // The run stopped before StartChallenges: no sampled node's clock was started for a commitment the server must refuse.
        FleetValidation validation = await server.CapacityClient().GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = Provider }, TestServer.Bearer());
        Assert.Equal(0L, validation.ChallengesIssuedUnixMs);
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM capacity_nonces"));

        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM capacity_commitments"));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM capacity_attestations"));
    }

    [Fact]
    public async Task A_run_on_a_gpu_or_on_the_cpu_without_its_registered_device_uuid_stops_with_exit_2_before_the_challenges_start()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, catalog: TestCatalogs.WithCpuFixture());
        string key = Path.Combine(_folder, "node.pem");
        var (_, publicKey) = await CliProcess.RunProbeAsync(new Dictionary<string, string>(), "keygen", "--out", key);
        string publicKeyFile = await WriteAsync("node.pub.pem", publicKey[publicKey.IndexOf("-----BEGIN PUBLIC KEY-----", StringComparison.Ordinal)..]);
        await RegisterAndApproveAsync(server, publicKeyFile);
        string inventory = await WriteAsync("inventory.json",
            """{"nodes": [{"nodeId": "cpu-node-01", "site": "sz-test-dc", "deviceModel": "CPU-FIXTURE", "deviceCount": 1}]}""");
        Assert.Equal(0, (await Capacity(server, "inventory", "declare", "--code", Provider, "--file", inventory)).ExitCode);

        // OpenCL exposes no device UUID, so its report could never pass; the run says so instead of starting every node's clock.
        var (gpu, gpuOutput) = await RunOnAsync(server, key, "--device", "opencl");
        var (noUuid, noUuidOutput) = await RunOnAsync(server, key, "--device", "cpu");
        var (badUuid, badUuidOutput) = await RunOnAsync(server, key, "--device", "cpu", "--device-uuid", "CPU 1");
        var (otherUuid, otherUuidOutput) = await RunOnAsync(server, key, "--device", "cpu", "--device-uuid", "CPU-another-node-0");

        Assert.True(gpu == 2, gpuOutput);
        Assert.Contains("--device opencl cannot attest: OpenCL exposes no device UUID", gpuOutput, StringComparison.Ordinal);
        Assert.True(noUuid == 2, noUuidOutput);
        Assert.Contains("--device cpu needs --device-uuid ID", noUuidOutput, StringComparison.Ordinal);
        Assert.True(badUuid == 2, badUuidOutput);
        Assert.Contains("--device-uuid: 'CPU 1' is not 1 to 96 characters", badUuidOutput, StringComparison.Ordinal);
        Assert.True(otherUuid == 2, otherUuidOutput);
        Assert.Contains($"--device-uuid CPU-another-node-0 is not registered with key version 1 of node cpu-node-01 (it registers {DeviceUuid})", otherUuidOutput, StringComparison.Ordinal);
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM capacity_nonces"));
        FleetValidation validation = await server.CapacityClient().GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = Provider }, TestServer.Bearer());
        Assert.Equal(0L, validation.ChallengesIssuedUnixMs);
    }

    /// <summary>The UUID the node's CPU accelerator reports, registered with its key.</summary>
    private const string DeviceUuid = "CPU-cpu-node-01-0";

    /// <summary>The provider registers the node's key with its device UUID; an operator approves it with the version and fingerprint register printed.</summary>
    private static async Task RegisterAndApproveAsync(TestServer server, string publicKeyFile)
    {
        var (registered, output) = await Capacity(server, "key", "register", "--code", Provider, "--node", "cpu-node-01", "--public-key", publicKeyFile, "--device-uuid", DeviceUuid);
        Assert.True(registered == 0, output);
        Match approval = Regex.Match(output, @"--version (\d+) --fingerprint ([0-9a-f]{64})");
        Assert.True(approval.Success, output);
        var (approved, approveOutput) = await CliProcess.RunAsAsync(server, TestServer.OperatorKey,
            "capacity", "key", "approve", "--code", Provider, "--node", "cpu-node-01", "--version", approval.Groups[1].Value, "--fingerprint", approval.Groups[2].Value,
            "--reason", "Fingerprint read back by the provider's engineer on the phone.");
        Assert.True(approved == 0, approveOutput);
    }

    /// <summary>A node key made, registered and approved, and the node declared: what a run needs; returns the key's path.</summary>
    private async Task<string> NodeReadyAsync(TestServer server)
    {
        string key = Path.Combine(_folder, "node.pem");
        var (made, publicKey) = await CliProcess.RunProbeAsync(new Dictionary<string, string>(), "keygen", "--out", key);
        Assert.True(made == 0, publicKey);
        string publicKeyFile = await WriteAsync("node.pub.pem", publicKey[publicKey.IndexOf("-----BEGIN PUBLIC KEY-----", StringComparison.Ordinal)..]);
        await RegisterAndApproveAsync(server, publicKeyFile);
        string inventory = await WriteAsync("inventory.json",
            """{"nodes": [{"nodeId": "cpu-node-01", "site": "sz-test-dc", "deviceModel": "CPU-FIXTURE", "deviceCount": 1}]}""");
        Assert.Equal(0, (await Capacity(server, "inventory", "declare", "--code", Provider, "--file", inventory)).ExitCode);
        return key;
    }

    private static Task<(int ExitCode, string Output)> RunAsync(TestServer server, string key, params string[] more) =>
        RunOnAsync(server, key, ["--device", "cpu", "--device-uuid", DeviceUuid, .. more]);

    private static Task<(int ExitCode, string Output)> RunOnAsync(TestServer server, string key, params string[] more) =>
        CliProcess.RunProbeAsync(new Dictionary<string, string> { ["METERING_API_KEY"] = TestServer.ProviderKey },
        [
            "run", "--server", server.Address.ToString().TrimEnd('/'), "--ca", TestCertificates.CaPemPath, "--code", Provider, "--node-id", "cpu-node-01",
            "--key", key, .. more,
        ]);

    private static Task<(int ExitCode, string Output)> Capacity(TestServer server, params string[] arguments) =>
        CliProcess.RunAsAsync(server, TestServer.ProviderKey, ["capacity", .. arguments]);

    private async Task<string> WriteAsync(string name, string text)
    {
        string path = Path.Combine(_folder, name);
        await File.WriteAllTextAsync(path, text);
        return path;
    }

    public void Dispose() => Directory.Delete(_folder, recursive: true);
}
