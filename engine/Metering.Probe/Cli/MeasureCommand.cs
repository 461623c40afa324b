using Metering.Probe.Attestation.Checksums;
using Metering.Probe.Attestation.Results;
using Metering.Probe.Measurement;
using Metering.Probe.Reporting;
using Microsoft.Extensions.Logging;

namespace Metering.Probe.Cli;

/// <summary>`metering-probe [options]`: measures the accelerators on a nonce and prints the table, as the probe always did.</summary>
internal static class MeasureCommand
{
    public static int Run(IReadOnlyList<string> args)
    {
        ProbeOptions options = ProbeOptions.Parse(args);
        if (options.ShowHelp)
        {
            Console.Out.WriteLine(ProbeOptions.HelpText);
            return ExitCodes.Success;
        }

        if (options.Error is not null || options.Settings is null)
        {
            return Usage(options.Error);
        }

        var logger = new StderrLogger(Console.Error, options.Verbose ? LogLevel.Information : LogLevel.Warning);
        if (!TryMeasure(options.Settings, logger, out ProbeReport? report, out int failed))
        {
            return failed;
        }

        if (options.JsonPath is not null)
        {
            File.WriteAllText(options.JsonPath, ProbeReportJson.Serialize(report));
            ProbeLog.ReportWritten(logger, options.JsonPath);
        }

        ResultTable.Write(report, Console.Out);
        return SelfCheck(report, logger);
    }

    /// <summary>Runs the probe; false with the exit code when it could not, the reason on standard error.</summary>
    public static bool TryMeasure(ProbeSettings settings, ILogger logger, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out ProbeReport? report, out int exitCode)
    {
        report = null;
        exitCode = ExitCodes.Success;
        try
        {
            report = new ProbeRunner(settings, logger).Run();
            return true;
        }
        catch (NoAcceleratorException exception)
        {
            Console.Error.WriteLine($"metering-probe: error: {exception.Message}");
            exitCode = ExitCodes.NoAccelerator;
            return false;
        }
#pragma warning disable CA1031 // A failed run of any kind ends the probe with its message and exit code 1.
        catch (Exception exception)
#pragma warning restore CA1031
        {
            Console.Error.WriteLine($"metering-probe: error: the run failed: {exception.Message}");
            Console.Error.WriteLine(exception);
            exitCode = ExitCodes.RunFailed;
            return false;
        }
    }

    /// <summary>
    /// The probe checks its own openings exactly as a server would, so a GPU that computes wrong
    /// results, or a kernel that disagrees with the reference, is caught here rather than at the server.
    /// </summary>
    public static int SelfCheck(ProbeReport report, ILogger logger)
    {
        VerificationResult check = ProbeVerifier.VerifyReport(report.Nonce, report with { Attested = true });
        if (!check.IsValid)
        {
            ProbeLog.SelfCheckFailed(logger, check.ToString());
            return ExitCodes.SelfCheckFailed;
        }

        ProbeLog.SelfCheckPassed(logger);
        return ExitCodes.Success;
    }

    public static int Usage(string? error)
    {
        Console.Error.WriteLine($"metering-probe: error: {error}");
        Console.Error.WriteLine("Try 'metering-probe --help'.");
        return ExitCodes.Usage;
    }
}
