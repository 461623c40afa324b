using System.Net.Http;
using System.Net.Sockets;
using System.Security.Cryptography;
using Grpc.Core;
using Grpc.Net.Client;
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
            channel = ServerChannel.Open(options.Server, options.CaPath);
        }
        catch (ArgumentException bad)
        {
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
                Console.Error.WriteLine($"metering-probe: error: no Metering server answers at {options.Server} ({e.InnerException.Message})");
                return ExitCodes.Refused;
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
        RunLog.AskingChallenge(logger, options.NodeId, options.Server.ToString());
        NodeChallenge challenge = await protocol.BeginAsync(CancellationToken.None);
        RunLog.ChallengeReceived(logger, challenge.ValidationId, DateTimeOffset.FromUnixTimeMilliseconds(challenge.ExpiresUnixMs).ToString("yyyy-MM-dd HH:mm:ss 'UTC'", System.Globalization.CultureInfo.InvariantCulture));

        var settings = new ProbeSettings
        {
            Nonce = challenge.Nonce,
            Attested = true,
            Devices = options.Devices,
            Runs = options.Runs,
            WorkOverrides = challenge.Work,
        };
        if (!MeasureCommand.TryMeasure(settings, logger, out ProbeReport? report, out int failed))
        {
            return failed;
        }

        if (MeasureCommand.SelfCheck(report, logger) is not ExitCodes.Success and int selfCheck)
        {
            Console.Error.WriteLine("metering-probe: error: the report fails the probe's own checksum check; it was not submitted");
            return selfCheck;
        }

        if (options.JsonPath is not null)
        {
            await File.WriteAllTextAsync(options.JsonPath, ProbeReportJson.Serialize(report));
            ProbeLog.ReportWritten(logger, options.JsonPath);
        }

        RunLog.Submitting(logger, options.NodeId, report.Devices.Count);
        AttestationResult result = await protocol.SubmitAsync(report, nodeKey, CancellationToken.None);
        RunLog.Answered(logger, result.AttestationId, OutcomeTable.Name(result.Node.Outcome));
        OutcomeTable.Write(result, Console.Out);
        return result.Node.Outcome switch
        {
            NodeOutcome.NodePassed => ExitCodes.Success,
            NodeOutcome.NodeAwaitingReview => ExitCodes.AwaitingReview,
            _ => ExitCodes.NodeFailed,
        };
    }

    private static int Usage(string error)
    {
        Console.Error.WriteLine($"metering-probe run: error: {error}");
        Console.Error.WriteLine("Try 'metering-probe run --help'.");
        return ExitCodes.Usage;
    }
}
