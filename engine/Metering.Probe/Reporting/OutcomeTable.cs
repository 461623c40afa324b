using System.Globalization;
using Metering.Client.Capacity;
using Metering.Protocol.V1;

namespace Metering.Probe.Reporting;

/// <summary>What the server found for the node, for people: its outcome, each device's kernels beside the catalog figures, and the validation's state.</summary>
internal static class OutcomeTable
{
    public static void Write(AttestationResult result, TextWriter output)
    {
        SampledNode node = result.Node;
        output.WriteLine($"node {node.NodeId} ({node.DeviceCount} x {node.DeviceModel} declared at {node.Site}): {Name(node.Outcome)}; attestation {result.AttestationId}, report SHA-256 {result.ReportSha256}");
        if (node.ElapsedMs > 0)
        {
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"committed {node.ElapsedMs / 1000.0:0.0} s after the challenges' issue on the server's clock; deadline {(node.DeadlineUnixMs - result.Validation.ChallengesIssuedUnixMs) / 1000.0:0.0} s after issue"));
        }

        // The server's rate is the set work over the time it measured; the probe's own is information only.
        string[] headers = ["device", "model", "outcome", "kernel", "path", "server rate", "probe rate", "reference", "peak", "judged"];
        var rows = new List<string[]>();
        foreach (DeviceResult device in node.Devices)
        {
            string model = device.DeviceModel.Length == 0 ? "(unknown)" : device.DeviceModel;
            if (device.Kernels.Count == 0)
            {
                rows.Add([$"{device.DeviceIndex}: {device.ReportedName}", model, Name(device.Outcome), "", "", "", "", "", "", ""]);
            }

            foreach (KernelResult kernel in device.Kernels)
            {
                rows.Add([
                    $"{device.DeviceIndex}: {device.ReportedName}", model, Name(device.Outcome), kernel.Kernel, kernel.ArithmeticPath,
                    Rate(kernel.Rate, kernel.Unit), Rate(kernel.ReportedRate, kernel.Unit), kernel.Reference == 0 ? "-" : Rate(kernel.Reference, kernel.Unit), kernel.Peak == 0 ? "-" : Rate(kernel.Peak, kernel.Unit),
                    kernel.Judged ? "yes" : "no",
                ]);
            }
        }

        int[] widths = headers.Select((h, i) => Math.Max(h.Length, rows.Select(r => r[i].Length).DefaultIfEmpty(0).Max())).ToArray();
        bool Right(int column) => column is 5 or 6 or 7 or 8;
        output.WriteLine(string.Join("  ", headers.Select((h, i) => Right(i) ? h.PadLeft(widths[i]) : h.PadRight(widths[i]))).TrimEnd());
        output.WriteLine(string.Join("  ", widths.Select(w => new string('-', w))));
        foreach (string[] row in rows)
        {
            output.WriteLine(string.Join("  ", row.Select((cell, i) => Right(i) ? cell.PadLeft(widths[i]) : cell.PadRight(widths[i]))).TrimEnd());
        }

        if (node.Detail.Length > 0)
        {
            output.WriteLine($"node {node.NodeId}: {node.Detail}");
        }

        foreach (DeviceResult device in node.Devices.Where(d => d.Detail.Length > 0))
        {
            output.WriteLine($"device {device.DeviceIndex}: {device.Detail}");
        }

        FleetValidation validation = result.Validation;
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"validation {validation.ValidationId} (inventory {validation.InventoryVersion}): {Name(validation.State)}; {validation.PassedNodes} passed and {validation.FailedNodes} failed of {validation.SampleSize} sampled nodes"));
        if (validation.State == FleetValidationState.ValidationComplete)
        {
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"verified FP16 capacity {validation.VerifiedFp16Gflops / 1_000_000}.{validation.VerifiedFp16Gflops % 1_000_000:000000} PFLOPS of {validation.DeclaredFp16Gflops / 1_000_000}.{validation.DeclaredFp16Gflops % 1_000_000:000000} declared, until {DateTimeOffset.FromUnixTimeMilliseconds(validation.ExpiresUnixMs):yyyy-MM-dd HH:mm} UTC"));
        }
    }

    /// <summary>TFLOP/s and GB/s for GPUs; a CPU's figures would round to nothing, so they stay in GFLOP/s and MB/s.</summary>
    public static string Rate(long rate, string unit)
    {
        (double display, string shown) = (unit == "mbps", rate) switch
        {
            (true, >= 1_000) => (rate / 1e3, "GB/s"),
            (true, _) => (rate, "MB/s"),
            (false, >= 1_000_000) => (rate / 1e6, "TFLOP/s"),
            _ => (rate / 1e3, "GFLOP/s"),
        };
        return string.Create(CultureInfo.InvariantCulture, $"{display.ToString(display >= 100 ? "F1" : "F3", CultureInfo.InvariantCulture)} {shown}");
    }

    /// <summary>A node's outcome as the probe's last line shows it: the clients' shared word, in capitals so that it stands out under the table.</summary>
    public static string Name(NodeOutcome outcome) => OutcomeNames.Of(outcome).ToUpperInvariant();

    private static string Name(DeviceOutcome outcome) => OutcomeNames.Of(outcome);

    private static string Name(FleetValidationState state) => state switch
    {
        FleetValidationState.ValidationCollecting => "collecting",
        FleetValidationState.ValidationComplete => "complete",
        FleetValidationState.ValidationSuperseded => "superseded",
        _ => state.ToString(),
    };
}
