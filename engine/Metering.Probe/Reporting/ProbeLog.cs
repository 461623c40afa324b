using Microsoft.Extensions.Logging;

namespace Metering.Probe.Reporting;

/// <summary>The probe's progress messages, source-generated with stable event ids (2001-2099).</summary>
internal static partial class ProbeLog
{
    [LoggerMessage(EventId = 2001, Level = LogLevel.Warning, Message = "No --nonce given: inputs derive from a random local nonce, so this run is unattested and a server will refuse its report")]
    public static partial void Unattested(ILogger logger);

    [LoggerMessage(EventId = 2002, Level = LogLevel.Information, Message = "Found {Count} accelerator(s) to measure: {Names}")]
    public static partial void DevicesFound(ILogger logger, int count, string names);

    [LoggerMessage(EventId = 2003, Level = LogLevel.Information, Message = "Device {Index}: {Name} ({Type}, {Multiprocessors} multiprocessors, {MemoryMiB} MiB)")]
    public static partial void DeviceStarting(ILogger logger, int index, string name, string type, int multiprocessors, long memoryMiB);

    [LoggerMessage(EventId = 2004, Level = LogLevel.Information, Message = "Device {Index} {Kernel}: {Path} path, {Items} items x {Iterations} iterations; warm-up run")]
    public static partial void KernelStarting(ILogger logger, int index, string kernel, string path, int items, int iterations);

    [LoggerMessage(EventId = 2005, Level = LogLevel.Information, Message = "Device {Index} {Kernel}: run {Run}/{Runs} took {DurationMs:F3} ms")]
    public static partial void RunTimed(ILogger logger, int index, string kernel, int run, int runs, double durationMs);

    [LoggerMessage(EventId = 2006, Level = LogLevel.Information, Message = "Device {Index} {Kernel}: median {Rate} {Unit}; checksum root {Root}, {Openings} leaves opened")]
    public static partial void KernelDone(ILogger logger, int index, string kernel, long rate, string unit, string root, int openings);

    [LoggerMessage(EventId = 2007, Level = LogLevel.Information, Message = "Self-check: every checksum verifies as a server would verify it")]
    public static partial void SelfCheckPassed(ILogger logger);

    [LoggerMessage(EventId = 2008, Level = LogLevel.Error, Message = "Self-check failed: {Result}")]
    public static partial void SelfCheckFailed(ILogger logger, string result);

    [LoggerMessage(EventId = 2009, Level = LogLevel.Information, Message = "Wrote the report to {Path}")]
    public static partial void ReportWritten(ILogger logger, string path);
}
