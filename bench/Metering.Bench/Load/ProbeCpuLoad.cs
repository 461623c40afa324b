using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Metering.Engine.Registry;
using Metering.Engine.Signing;
using Metering.Engine.Storage;
using Metering.Probe.Attestation.Checksums;
using Metering.Probe.Attestation.Results;
using Metering.Probe.Measurement;
using Metering.Protocol.V1;
using Metering.Server.Hosting;
using Metering.Tests.Shared;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;

namespace Metering.Bench.Load;

/// <summary>
/// The capacity probe's CPU path end to end, in one process: a fresh embedded PostgreSQL, the
/// gRPC server with the CPU fixture catalog (tests/Shared/catalog-cpu-fixture.json), and a
/// provider that registers a key per node, declares N CPU nodes, and for every node the server
/// samples asks for a nonce, runs the probe in-process on ILGPU's CPU accelerator, signs the
/// report and submits it. It then submits the first attestation again, which must be refused as
/// a replay. The last line of stdout is the RESULT line.
/// </summary>
internal static class ProbeCpuLoad
{
    // Admitted by Admissions.SeedAsync, which issues its key as Provider.
    private const string Provider = TestRecords.Provider;

    public const int NodesMax = 64;

    public static async Task<int> RunAsync(string[] args)
    {
        Dictionary<string, string>? values = BenchArguments.Pairs(args, out string? error);
        long nodes = values is null ? 0 : BenchArguments.Long(values, "nodes", 4);
        if (values is null || !values.TryGetValue("data-dir", out string? dataDirectory) || nodes is < 1 or > NodesMax)
        {
            Console.Error.WriteLine($"error: {error ?? $"--data-dir is required and --nodes is 1 to {NodesMax}"}");
            Console.Error.WriteLine("usage: Metering.Bench probe-cpu --data-dir DIR [--nodes 4]");
            return 2;
        }

        using ILoggerFactory logging = LoggerFactory.Create(builder => builder
            .AddConsole(console => console.LogToStandardErrorThreshold = LogLevel.Trace)
            .SetMinimumLevel(LogLevel.Warning));
        ILogger logger = logging.CreateLogger("metering.bench.probe-cpu");
        string directory = Path.GetFullPath(dataDirectory);
        IngestLoad.DeleteCluster(directory);

        await using EmbeddedPostgres postgres = await EmbeddedPostgres.StartAsync(new EmbeddedPostgresOptions { DataDirectory = directory, Durable = true }, logger);
        SeededKeys seeded;
        await using (NpgsqlDataSource dataSource = Database.CreateDataSource(postgres.ConnectionString))
        {
            await new Migrator(dataSource, logger).MigrateAsync();
            seeded = await Admissions.SeedAsync(dataSource);
        }

        await using MeteringServer server = await MeteringServer.StartAsync(new ServerSettings
        {
            SigningKey = ServerSigningKey.CreateNew(),
            Listen = new Uri("http://127.0.0.1:0"),
            ConnectionString = postgres.RuntimeConnectionString,
            Catalog = TestCatalogs.WithCpuFixture(),
            ConfigureLogging = builder => builder.AddConsole(console => console.LogToStandardErrorThreshold = LogLevel.Trace).SetMinimumLevel(LogLevel.Warning),
        });
        Console.WriteLine($"probe-cpu: server {server.Address} on a fresh cluster in {directory}; catalog with the CPU fixture overlay");

        using var channel = GrpcChannel.ForAddress(server.Address);
        var capacity = new CapacityService.CapacityServiceClient(channel);
        var headers = new Metadata { { "authorization", "Bearer " + seeded.Provider } };
        var operatorHeaders = new Metadata { { "authorization", "Bearer " + seeded.Operator } };
        var keys = new Dictionary<string, ECDsa>();
        try
        {
            for (int i = 0; i < nodes; i++)
            {
                string node = $"cpu-node-{i:D2}";
                keys[node] = ECDsa.Create(ECCurve.NamedCurves.nistP256);
                // A CPU has no UUID: each node's one device gets the one its probe reports (--device-uuid).
                NodeKey key = await capacity.RegisterNodeKeyAsync(new RegisterNodeKeyRequest
                {
                    CreditCode = Provider,
                    NodeId = node,
                    PublicKeyPem = keys[node].ExportSubjectPublicKeyInfoPem(),
                    DeviceUuids = { DeviceUuid(node) },
                }, headers);
                await capacity.ApproveNodeKeyAsync(new ApproveNodeKeyRequest
                {
                    CreditCode = Provider,
                    NodeId = node,
                    KeyVersion = key.KeyVersion,
                    KeySha256 = key.KeySha256,
                    Reasons = "bench: fingerprint taken from the registration",
                }, operatorHeaders);
            }

            FleetValidation validation = await capacity.DeclareInventoryAsync(new DeclareInventoryRequest
            {
                CreditCode = Provider,
                Nodes = { keys.Keys.Select(node => new DeclaredNode { NodeId = node, Site = "sz-bench-dc", DeviceModel = TestCatalogs.CpuFixtureModel, DeviceCount = 1 }) },
            }, headers);
            ChallengeSet challenges = await capacity.StartChallengesAsync(new StartChallengesRequest { CreditCode = Provider }, headers);
            Console.WriteLine($"probe-cpu: declared {validation.NodeCount} node(s), {FilingRules.Pflops(validation.DeclaredFp16Gflops)} PFLOPS; the server sampled {validation.SampleSize}, revealed with the challenges: {string.Join(", ", challenges.Challenges.Select(c => c.NodeId))}");

            SubmitAttestationRequest? first = null;
            foreach (NodeChallenge challenge in challenges.Challenges)
            {
                var clock = Stopwatch.StartNew();
                ProbeReport report = new ProbeRunner(
                    new ProbeSettings
                    {
                        Nonce = Convert.FromHexString(challenge.NonceHex),
                        Attested = true,
                        Devices = DeviceFilter.Cpu,
                        Runs = (int)challenge.RunsPerKernel,
                        WorkOverrides = challenge.Work.ToDictionary(w => Kind(w.Kernel), w => new WorkSize((int)w.Items, (int)w.Iterations)),
                        Kernels = challenge.Work.Select(w => Kind(w.Kernel)).ToList(),
                        CpuDeviceUuid = DeviceUuid(challenge.NodeId),
                    },
                    NullLogger.Instance).Run();
                byte[] commitment = ResultCommitment.Encode(challenge.NodeId, report);
                CommitmentReceipt receipt = await capacity.CommitResultsAsync(new CommitResultsRequest
                {
                    CreditCode = Provider,
                    NodeId = challenge.NodeId,
                    Commitment = ByteString.CopyFrom(commitment),
                    Signature = ByteString.CopyFrom(ResultCommitment.Sign(keys[challenge.NodeId], commitment)),
                }, headers);
                var sampled = challenge;
                double probeSeconds = clock.Elapsed.TotalSeconds;
                var request = new SubmitAttestationRequest
                {
                    CreditCode = Provider,
                    NodeId = sampled.NodeId,
                    ReportJson = ProbeReportJson.Serialize(report),
                    Signature = ByteString.CopyFrom(keys[sampled.NodeId].SignData(ProbeReportEncoding.Encode(report), HashAlgorithmName.SHA256, DSASignatureFormat.Rfc3279DerSequence)),
                };
                first ??= request;
                clock.Restart();
                AttestationResult result = await capacity.SubmitAttestationAsync(request, headers);
                string rates = string.Join(", ", result.Node.Devices.SelectMany(d => d.Kernels).Select(k => $"{k.Kernel} {k.Rate} {k.Unit}"));
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"probe-cpu: {sampled.NodeId}: probe {probeSeconds:0.00} s, committed {receipt.ElapsedMs} ms after issue (deadline {receipt.DeadlineUnixMs - receipt.IssuedUnixMs} ms), server check {clock.Elapsed.TotalSeconds:0.00} s: {result.Node.Outcome} ({rates})"));
                validation = result.Validation;
            }

            bool replayRefused = false;
            try
            {
                await capacity.SubmitAttestationAsync(first!, headers);
                Console.WriteLine("probe-cpu: the replayed attestation was ACCEPTED");
            }
            catch (RpcException replay)
            {
                string reason = replay.GetRpcStatus()?.GetDetail<Google.Rpc.ErrorInfo>()?.Reason ?? replay.StatusCode.ToString();
                replayRefused = reason == ProtocolNameOfReplay;
                Console.WriteLine($"probe-cpu: the replayed attestation was refused: {replay.StatusCode} {reason}");
            }

            bool verified = validation.State == FleetValidationState.ValidationComplete && validation.FailedNodes == 0 && validation.VerifiedFp16Gflops > 0;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"probe-cpu: validation {validation.ValidationId} {validation.State}: {validation.PassedNodes} passed, {validation.FailedNodes} failed, pass rate at least {validation.PassRateLowerBoundPpm / 10_000m:0.00}%, verified {FilingRules.Pflops(validation.VerifiedFp16Gflops)} PFLOPS until {DateTimeOffset.FromUnixTimeMilliseconds(validation.ExpiresUnixMs):yyyy-MM-dd}"));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"RESULT verified={(verified ? "true" : "false")} replay_refused={(replayRefused ? "true" : "false")} devices={validation.DeviceCount} fleet_pflops={validation.VerifiedFp16Gflops / 1_000_000}.{validation.VerifiedFp16Gflops % 1_000_000 / 1_000:000}"));
            return verified && replayRefused ? 0 : 1;
        }
        finally
        {
            foreach (ECDsa key in keys.Values)
            {
                key.Dispose();
            }
        }
    }

    private const string ProtocolNameOfReplay = "ATTESTATION_REPLAYED";

    private static string DeviceUuid(string node) => $"CPU-bench-{node}";

    private static KernelKind Kind(string kernel) => KernelKinds.TryParse(kernel, out KernelKind kind) ? kind : throw new InvalidDataException($"unknown kernel '{kernel}'");
}
