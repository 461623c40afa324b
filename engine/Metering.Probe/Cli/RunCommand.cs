using System.Net.Http;
using System.Net.Sockets;
using System.Security.Cryptography;
using Grpc.Core;
using Grpc.Net.Client;
using Metering.Probe.Attestation.Checksums;
using Metering.Probe.Attestation.Results;
using Metering.Probe.Measurement;
using Metering.Probe.Reporting;
using Metering.Probe.Submission;
using Metering.Protocol.V1;
using Microsoft.Extensions.Logging;

namespace Metering.Probe.Cli;

/// <summary>
/// `metering-probe run`: the node's whole attestation in one command, as a provider runs it on each
/// sampled node: the challenge from the server, the probe on it, the signed report, the outcome.
/// Nothing is sent before the key, the server address and the probe's own checks are good.
/// </summary>
internal static class RunCommand
{
    public static async Task<int> RunAsync(IReadOnlyList<string> args)
    {
        RunOptions options = RunOptions.Parse(args, Environment.GetEnvironmentVariable);
        if (options.ShowHelp)
        {
            Console.Out.WriteLine(RunOptions.HelpText);
            return ExitCodes.Success;
        }

        if (options.Error is not null)
        {
            return Usage(options.Error);
        }

        ECDsa nodeKey;
        GrpcChannel channel;
        try
        {
            nodeKey = NodeKeyFile.Read(options.KeyPath);
        }
        catch (ArgumentException bad)
        {
            return Usage(bad.Message);
        }

        try
        {
            channel = ServerChannel.Open(options.Servers, options.CaPath);
        }
        catch (ArgumentException bad)
        {
            nodeKey.Dispose();
            return Usage(bad.Message);
        }

        using (nodeKey)
        using (channel)
        {
            var logger = new StderrLogger(Console.Error, options.Verbose ? LogLevel.Information : LogLevel.Warning);
            var protocol = new AttestationProtocol(new CapacityService.CapacityServiceClient(channel), ServerChannel.Bearer(options.ApiKey), options.CreditCode, options.NodeId);
            try
            {
                return await AttestAsync(options, protocol, nodeKey, logger);
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable && e.InnerException is HttpRequestException or SocketException)
            {
                Console.Error.WriteLine($"metering-probe: error: no Metering server answers at {string.Join(", ", options.Servers.Addresses.Select(a => a.GetLeftPart(UriPartial.Authority)))} ({e.InnerException.Message})");
                return ExitCodes.Refused;
            }
            catch (RpcException e) when (AttestationProtocol.Reason(e) == "COMMITMENT_LATE")
            {
                Console.Error.WriteLine($"metering-probe: refused: {ServerChannel.Describe(e)}");
                Console.Error.WriteLine("metering-probe: the commitment came after the node's deadline on the server's clock: the node has failed this validation.");
                return ExitCodes.NodeFailed;
            }
            catch (RpcException e)
            {
                Console.Error.WriteLine($"metering-probe: refused: {ServerChannel.Describe(e)}");
                return ExitCodes.Refused;
            }
        }
    }

    private static async Task<int> AttestAsync(RunOptions options, AttestationProtocol protocol, ECDsa nodeKey, ILogger logger)
    {
        if (await CheckKeyAsync(options, protocol, nodeKey) is int stopped)
        {
            return stopped;
        }

        RunLog.AskingChallenge(logger, options.NodeId, string.Join(",", options.Servers.Addresses.Select(a => a.GetLeftPart(UriPartial.Authority))));
        NodeAssignment? assignment = await protocol.BeginAsync(CancellationToken.None);
        if (assignment is null)
        {
            Console.Out.WriteLine($"node {options.NodeId} is not in the sample of {options.CreditCode}'s open validation: nothing to run here.");
            return ExitCodes.Success;
        }

        RunLog.ChallengeReceived(logger, assignment.ValidationId, assignment.StartedNow ? "started by this call" : "already started",
            Seconds(assignment.DeadlineUnixMs - assignment.IssuedUnixMs), SecondsLeft(assignment.DeadlineUnixMs), string.Join(", ", assignment.Work.Select(w => $"{KernelKinds.Name(w.Kind)} {w.Size.Items}x{w.Size.Iterations}")));

        var settings = new ProbeSettings
        {
            Nonce = assignment.Nonce,
            Attested = true,
            Devices = options.Devices,
            CpuDeviceUuid = options.CpuDeviceUuid,
            Runs = assignment.RunsPerKernel,
            Kernels = assignment.Work.Select(w => w.Kind).ToList(),
            WorkOverrides = assignment.Work.ToDictionary(w => w.Kind, w => w.Size),
        };
        if (!MeasureCommand.TryMeasure(settings, logger, out ProbeReport? report, out int failed))
        {
            return failed;
        }

        // The self-check costs a fraction of a second per kernel; a report that fails it would fail at the server too, after its commitment.
        if (MeasureCommand.SelfCheck(report, logger) is not ExitCodes.Success and int selfCheck)
        {
            Console.Error.WriteLine("metering-probe: error: the report fails the probe's own checksum check; nothing was committed or submitted");
            return selfCheck;
        }

        RunLog.Committing(logger, options.NodeId, SecondsLeft(assignment.DeadlineUnixMs));
        CommitmentReceipt receipt;
        try
        {
            receipt = await protocol.CommitAsync(report, nodeKey, CancellationToken.None);
        }
        catch (RpcException refused) when (refused.StatusCode == StatusCode.FailedPrecondition)
        {
            // The server fails a node whose deadline passed at the provider's next call, this one's
            // StartChallenges included; the refusal then names the validation's state, the node says why.
            if (await protocol.NodeAsync(assignment.ValidationId, CancellationToken.None) is not { Outcome: NodeOutcome.NodeFailed } failedNode)
            {
                throw;
            }

            Console.Error.WriteLine($"metering-probe: refused: {ServerChannel.Describe(refused)}");
            Console.Error.WriteLine($"metering-probe: node {options.NodeId} has failed this validation: {failedNode.Detail}");
            return ExitCodes.NodeFailed;
        }

        RunLog.Committed(logger, Seconds(receipt.ElapsedMs), Seconds(receipt.DeadlineUnixMs - receipt.IssuedUnixMs), receipt.CommitmentSha256);

        if (options.JsonPath is not null)
        {
            // The commitment is made; a copy that cannot be written must not keep the report from the server.
            try
            {
                await File.WriteAllTextAsync(options.JsonPath, ProbeReportJson.Serialize(report));
                ProbeLog.ReportWritten(logger, options.JsonPath);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                Console.Error.WriteLine($"metering-probe: warning: cannot keep the report in {options.JsonPath}: {e.Message}");
            }
        }

        RunLog.Submitting(logger, options.NodeId, report.Devices.Count);
        AttestationResult result = await protocol.SubmitAsync(report, nodeKey, attempt => RunLog.VerificationBusy(logger, attempt, AttestationProtocol.BusyRetryDelay.TotalSeconds), CancellationToken.None);
        RunLog.Answered(logger, result.AttestationId, OutcomeTable.Name(result.Node.Outcome));
        OutcomeTable.Write(result, Console.Out);
        return result.Node.Outcome switch
        {
            NodeOutcome.NodePassed => ExitCodes.Success,
            NodeOutcome.NodeAwaitingReview => ExitCodes.AwaitingReview,
            _ => ExitCodes.NodeFailed,
        };
    }

    /// <summary>
    /// Stops the run, before the challenges start, where the server's records already say it
    /// cannot pass: this key is the node's registered key but no operator has approved it, or the
    /// CPU accelerator's UUID is not one registered with it. A key the server does not list for
    /// the node goes on, and the server judges its signature (SIGNATURE_INVALID).
    /// </summary>
    private static async Task<int?> CheckKeyAsync(RunOptions options, AttestationProtocol protocol, ECDsa nodeKey)
    {
        // The devices and the UUIDs their reports will carry, read before the challenges start:
        // a GPU whose UUID cannot be read would fail at the server after every sampled node's
        // clock had started.
        IReadOnlyList<(string Name, string Uuid, string? Problem)> devices;
        try
        {
            devices = ProbeRunner.DeviceUuids(options.Devices, options.CpuDeviceUuid);
        }
        catch (NoAcceleratorException e)
        {
            Console.Error.WriteLine($"metering-probe: error: {e.Message}");
            return ExitCodes.NoAccelerator;
        }

        if (devices.FirstOrDefault(d => d.Uuid.Length == 0) is { Name: not null } unreadable)
        {
            return Usage($"cannot read the UUID of {unreadable.Name}: {unreadable.Problem}; the server would refuse its report (DEVICE_UUID_MISMATCH), so nothing was sent");
        }

        string fingerprint = Convert.ToHexStringLower(SHA256.HashData(nodeKey.ExportSubjectPublicKeyInfo()));
        NodeKey? listed = (await protocol.NodeKeysAsync(CancellationToken.None)).FirstOrDefault(k => k.KeySha256 == fingerprint);
        if (listed is null)
        {
            return null;
        }

        if (!listed.Approved)
        {
            Console.Error.WriteLine($"metering-probe: refused: NODE_KEY_NOT_APPROVED: key version {listed.KeyVersion} of node {options.NodeId} (SHA-256 {fingerprint}) awaits an operator's approval "
                + $"(`metering capacity key approve --code {options.CreditCode} --node {options.NodeId} --version {listed.KeyVersion} --fingerprint {fingerprint} --reason TEXT`); "
                + "the challenges were not started and nothing was measured.");
            return ExitCodes.Refused;
        }

        if (devices.FirstOrDefault(d => !listed.DeviceUuids.Contains(d.Uuid, StringComparer.Ordinal)) is { Name: not null } stranger)
        {
            string named = options.CpuDeviceUuid is null ? $"{stranger.Name} has UUID {stranger.Uuid}, which" : $"--device-uuid {stranger.Uuid}";
            return Usage($"{named} is not registered with key version {listed.KeyVersion} of node {options.NodeId} (it registers {string.Join(", ", listed.DeviceUuids)}); "
                + "the server would refuse the report (DEVICE_UUID_MISMATCH)");
        }

        return null;
    }

    private static string Seconds(long milliseconds) => (milliseconds / 1000.0).ToString("0.0", System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>Time left until a server instant, by this machine's clock (which may differ from the server's by its skew).</summary>
    private static string SecondsLeft(long unixMs) => Seconds(unixMs - DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());

    private static int Usage(string error)
    {
        Console.Error.WriteLine($"metering-probe run: error: {error}");
        Console.Error.WriteLine("Try 'metering-probe run --help'.");
        return ExitCodes.Usage;
    }
}
