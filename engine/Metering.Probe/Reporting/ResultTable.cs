using System.Globalization;
using Metering.Probe.Attestation.Results;

namespace Metering.Probe.Reporting;

/// <summary>
/// The human-readable summary: one row per device and kernel with the median rate in TFLOP/s or
/// GB/s. The decimals are for people only; the report carries the integers.
/// </summary>
internal static class ResultTable
{
    public static void Write(ProbeReport report, TextWriter output)
    {
        string[] headers = ["device", "kernel", "path", "median", "unit", "runs", "work size"];
        var rows = new List<string[]>();
        foreach (DeviceReport device in report.Devices)
        {
            foreach (KernelMeasurement m in device.Measurements)
            {
                bool bandwidth = m.RateUnit == "mbps";
                // TFLOP/s and GB/s for GPUs; a CPU's figures would round to nothing, so they stay in GFLOP/s and MB/s.
                (double display, string unit) = (bandwidth, m.MedianRate) switch
                {
                    (true, >= 1_000) => (m.MedianRate / 1e3, "GB/s"),
                    (true, _) => (m.MedianRate, "MB/s"),
                    (false, >= 1_000_000) => (m.MedianRate / 1e6, "TFLOP/s"),
                    _ => (m.MedianRate / 1e3, "GFLOP/s"),
                };
                string median = display.ToString(display >= 100 ? "F1" : "F3", CultureInfo.InvariantCulture);
                rows.Add([
                    $"{device.Index}: {device.ModelName} ({device.AcceleratorType})",
                    m.Kernel,
                    m.ArithmeticPath,
                    median,
                    unit,
                    m.DurationsNs.Count.ToString(CultureInfo.InvariantCulture),
                    $"{m.Items}x{m.Iterations}",
                ]);
            }
        }

        int[] widths = headers.Select((h, i) => Math.Max(h.Length, rows.Select(r => r[i].Length).DefaultIfEmpty(0).Max())).ToArray();
        output.WriteLine(string.Join("  ", headers.Select((h, i) => i is 3 or 5 ? h.PadLeft(widths[i]) : h.PadRight(widths[i]))).TrimEnd());
        output.WriteLine(string.Join("  ", widths.Select(w => new string('-', w))));
        foreach (string[] row in rows)
        {
            output.WriteLine(string.Join("  ", row.Select((cell, i) => i is 3 or 5 ? cell.PadLeft(widths[i]) : cell.PadRight(widths[i]))).TrimEnd());
        }

        if (!report.Attested)
        {
            output.WriteLine("unattested: no --nonce was given, so no server will accept this report");
        }
    }
}
