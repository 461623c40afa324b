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
using Metering.Fixtures;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;

namespace Metering.Bench.Load;

/// <summary>
/// The capacity probe's CPU path end to end, in one process: a fresh embedded PostgreSQL, the
/// gRPC server with the CPU fixture catalog (tests/Metering.Fixtures/catalog-cpu-fixture.json), and a
/// provider that registers a key per node, declares N CPU nodes, and for every node the server
/// samples asks for a nonce, runs the probe in-process on ILGPU's CPU accelerator, signs the
/// report and submits it. Before the first node's honest report it plays the cheater: reports
/// with other work, sub-floor durations, other roots than committed, an unregistered or an
/// unapproved key, a device UUID not registered for the node, and the commitment sent again; each
/// must be refused with its own reason. It then submits the first attestation again, which must
/// be refused as a replay. The last line of stdout is the RESULT line.
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
            int forgeries = 0;
            int forgeriesRefused = 0;
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
                if (first is null)
                {
                    (int tried, int refused) = await PlayAsync(CommitmentForgeries(capacity, headers, challenge.NodeId, report, keys[challenge.NodeId]));
                    forgeries += tried;
                    forgeriesRefused += refused;
                }

                CommitmentReceipt receipt = await capacity.CommitResultsAsync(new CommitResultsRequest
                {
                    CreditCode = Provider,
                    NodeId = challenge.NodeId,
                    Commitment = ByteString.CopyFrom(commitment),
                    Signature = ByteString.CopyFrom(ResultCommitment.Sign(keys[challenge.NodeId], commitment)),
                }, headers);
                var sampled = challenge;
                double probeSeconds = clock.Elapsed.TotalSeconds;
                if (first is null)
                {
                    (int tried, int refused) = await PlayAsync(ReportForgeries(capacity, headers, challenge.NodeId, report, keys[challenge.NodeId], commitment));
                    forgeries += tried;
                    forgeriesRefused += refused;
                }

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

            string replayReason = await ReasonAsync(() => capacity.SubmitAttestationAsync(first!, headers).ResponseAsync);
            bool replayRefused = replayReason == ProtocolNameOfReplay;
            Console.WriteLine($"probe-cpu: the replayed attestation: {replayReason}");
            forgeries++;
            forgeriesRefused += replayRefused ? 1 : 0;

            bool verified = validation.State == FleetValidationState.ValidationComplete && validation.FailedNodes == 0 && validation.VerifiedFp16Gflops > 0;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"probe-cpu: validation {validation.ValidationId} {validation.State}: {validation.PassedNodes} passed, {validation.FailedNodes} failed, pass rate at least {validation.PassRateLowerBoundPpm / 10_000m:0.00}%, verified {FilingRules.Pflops(validation.VerifiedFp16Gflops)} PFLOPS until {DateTimeOffset.FromUnixTimeMilliseconds(validation.ExpiresUnixMs):yyyy-MM-dd}"));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"RESULT verified={(verified ? "true" : "false")} replay_refused={(replayRefused ? "true" : "false")} forgeries_refused={forgeriesRefused}/{forgeries} devices={validation.DeviceCount} fleet_pflops={validation.VerifiedFp16Gflops / 1_000_000}.{validation.VerifiedFp16Gflops % 1_000_000 / 1_000:000}"));
            return verified && replayRefused && forgeriesRefused == forgeries ? 0 : 1;
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

    /// <summary>Plays each attempt and counts those refused with exactly their expected reason.</summary>
    private static async Task<(int Tried, int Refused)> PlayAsync(IEnumerable<(string Attempt, string Expected, Func<Task> Call)> attempts)
    {
        int tried = 0;
        int refused = 0;
        foreach ((string attempt, string expected, Func<Task> call) in attempts)
        {
            tried++;
            string reason = await ReasonAsync(call);
            bool caught = reason == expected;
            refused += caught ? 1 : 0;
            Console.WriteLine($"probe-cpu: forgery '{attempt}': {(caught ? "refused" : "NOT REFUSED AS EXPECTED")} ({reason}; expected {expected})");
        }

        return (tried, refused);
    }

    /// <summary>
    /// Before its honest commitment: a commitment to less work than the server set (a forger who
    /// ran tiny work commits its own roots), refused without using up the node's one commitment.
    /// </summary>
    private static IEnumerable<(string Attempt, string Expected, Func<Task> Call)> CommitmentForgeries(
        CapacityService.CapacityServiceClient capacity, Metadata headers, string node, ProbeReport honest, ECDsa key)
    {
        DeviceReport device = honest.Devices[0];
        KernelMeasurement measured = device.Measurements[0];
        ProbeReport tiny = honest with
        {
            Devices = [device with { Measurements = [measured with { Items = 1, Iterations = 1, WorkPerRun = 1 }, .. device.Measurements.Skip(1)] }, .. honest.Devices.Skip(1)],
        };
        byte[] commitment = ResultCommitment.Encode(node, tiny);
        yield return ("a commitment to less work than the server set", "WORK_SIZE_REFUSED", () => capacity.CommitResultsAsync(new CommitResultsRequest
        {
            CreditCode = Provider,
            NodeId = node,
            Commitment = ByteString.CopyFrom(commitment),
            Signature = ByteString.CopyFrom(ResultCommitment.Sign(key, commitment)),
        }, headers).ResponseAsync);
    }

    /// <summary>
    /// What a dishonest provider would send for a node that has committed its honest results:
    /// each attempt with the refusal reason it must get. All are refused by the cheap checks, so
    /// the node's nonce stays usable for its honest report afterwards.
    /// </summary>
    private static IEnumerable<(string Attempt, string Expected, Func<Task> Call)> ReportForgeries(
        CapacityService.CapacityServiceClient capacity, Metadata headers, string node, ProbeReport honest, ECDsa key, byte[] commitment)
    {
        DeviceReport device = honest.Devices[0];
        KernelMeasurement measured = device.Measurements[0];

        ProbeReport WithMeasurement(KernelMeasurement changed) =>
            honest with { Devices = [device with { Measurements = [changed, .. device.Measurements.Skip(1)] }, .. honest.Devices.Skip(1)] };

        Func<Task> Submit(ProbeReport report, ECDsa signer) => () => capacity.SubmitAttestationAsync(new SubmitAttestationRequest
        {
            CreditCode = Provider,
            NodeId = node,
            ReportJson = ProbeReportJson.Serialize(report),
            Signature = ByteString.CopyFrom(signer.SignData(ProbeReportEncoding.Encode(report), HashAlgorithmName.SHA256, DSASignatureFormat.Rfc3279DerSequence)),
        }, headers).ResponseAsync;

        // The commitment names the work, so a report of other work no longer matches it.
        yield return ("a report of other work than committed", "COMMITMENT_MISMATCH",
            Submit(WithMeasurement(measured with { Items = measured.Items - 1, WorkPerRun = measured.WorkPerRun - 1 }), key));

        // Every run rewritten to 1 ns, shorter than any kernel's set work takes at 1.10 × peak.
        ProbeReport fast = honest with
        {
            Devices = [.. honest.Devices.Select(d => d with
            {
                Measurements = [.. d.Measurements.Select(m => m with { DurationsNs = [.. m.DurationsNs.Select(_ => 1L)], MedianDurationNs = 1 })],
            })],
        };
        yield return ("durations below the physical floor", "DURATION_BELOW_FLOOR", Submit(fast, key));

        byte[] otherRoot = [.. measured.Checksum.Root];
        otherRoot[0] ^= 0xFF;
        yield return ("roots other than the committed ones", "COMMITMENT_MISMATCH",
            Submit(WithMeasurement(measured with { Checksum = measured.Checksum with { Root = otherRoot } }), key));

        ECDsa stranger = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        yield return ("signed by a key the node never registered", "SIGNATURE_INVALID", Submit(honest, stranger));

        // A rotation the operator has not approved signs nothing.
        ECDsa rotated = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        yield return ("signed by a rotated key not yet approved", "NODE_KEY_NOT_APPROVED", async () =>
        {
            await capacity.RegisterNodeKeyAsync(new RegisterNodeKeyRequest
            {
                CreditCode = Provider,
                NodeId = node,
                PublicKeyPem = rotated.ExportSubjectPublicKeyInfoPem(),
                DeviceUuids = { DeviceUuid(node) },
            }, headers);
            await Submit(honest, rotated)();
        });

        yield return ("a device UUID not registered for the node", "DEVICE_UUID_MISMATCH",
            Submit(honest with { Devices = [device with { Uuid = "CPU-bench-another-device" }, .. honest.Devices.Skip(1)] }, key));

        yield return ("the commitment sent a second time", "COMMITMENT_REPEATED", () => capacity.CommitResultsAsync(new CommitResultsRequest
        {
            CreditCode = Provider,
            NodeId = node,
            Commitment = ByteString.CopyFrom(commitment),
            Signature = ByteString.CopyFrom(ResultCommitment.Sign(key, commitment)),
        }, headers).ResponseAsync);
    }

    /// <summary>The ErrorInfo reason of a refused call, or ACCEPTED when the server took it.</summary>
    private static async Task<string> ReasonAsync(Func<Task> call)
    {
        try
        {
            await call();
            return "ACCEPTED";
        }
        catch (RpcException refused)
        {
            return refused.GetRpcStatus()?.GetDetail<Google.Rpc.ErrorInfo>()?.Reason ?? refused.StatusCode.ToString();
        }
    }

    private static string DeviceUuid(string node) => $"CPU-bench-{node}";

    private static KernelKind Kind(string kernel) => KernelKinds.TryParse(kernel, out KernelKind kind) ? kind : throw new InvalidDataException($"unknown kernel '{kernel}'");
}
