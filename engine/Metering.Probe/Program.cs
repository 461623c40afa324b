using Metering.Probe.Attestation.Checksums;
using Metering.Probe.Attestation.Results;
using Metering.Probe.Cli;
using Metering.Probe.Measurement;
using Metering.Probe.Reporting;
using Microsoft.Extensions.Logging;

ProbeOptions options = ProbeOptions.Parse(args);
if (options.ShowHelp)
{
    Console.Out.WriteLine(ProbeOptions.HelpText);
    return 0;
}

if (options.Error is not null || options.Settings is null)
{
    Console.Error.WriteLine($"metering-probe: error: {options.Error}");
    Console.Error.WriteLine("Try 'metering-probe --help'.");
    return 2;
}

var logger = new StderrLogger(Console.Error, options.Verbose ? LogLevel.Information : LogLevel.Warning);
ProbeReport report;
try
{
    report = new ProbeRunner(options.Settings, logger).Run();
}
catch (NoAcceleratorException exception)
{
    Console.Error.WriteLine($"metering-probe: error: {exception.Message}");
    return 3;
}
#pragma warning disable CA1031 // A failed run of any kind ends the probe with its message and exit code 1.
catch (Exception exception)
#pragma warning restore CA1031
{
    Console.Error.WriteLine($"metering-probe: error: the run failed: {exception.Message}");
    Console.Error.WriteLine(exception);
    return 1;
}

if (options.JsonPath is not null)
{
    File.WriteAllText(options.JsonPath, ProbeReportJson.Serialize(report));
    ProbeLog.ReportWritten(logger, options.JsonPath);
}

ResultTable.Write(report, Console.Out);

// The probe checks its own openings exactly as a server would, so a GPU that computes wrong
// results, or a kernel that disagrees with the reference, is caught here rather than at the server.
VerificationResult check = ProbeVerifier.VerifyReport(report.Nonce, report with { Attested = true });
if (!check.IsValid)
{
    ProbeLog.SelfCheckFailed(logger, check.ToString());
    return 4;
}

ProbeLog.SelfCheckPassed(logger);
return 0;
