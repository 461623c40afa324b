using Metering.Protocol.V1;

namespace Metering.Fixtures;

/// <summary>Small Slurm and JSON Lines logs with known contents, good and bad lines mixed.</summary>
internal static class RawLogSamples
{
    public static LogMapping Mapping() => new()
    {
        AccountHolders = { ["lab-vision"] = TestRecords.Holder, ["lab-speech"] = "914403001922038216" },
        GresModels = { ["h100"] = "H100-SXM", ["a100"] = "A100-SXM" },
        PartitionModels = { ["gpu-h20"] = "H20" },
        Site = "sz-nanshan-dc1",
    };

    /// <summary>
    /// 12 lines: the header, 5 metered allocations, 3 skipped lines (a step, a running job, a CPU job),
    /// 3 refused lines (unmapped account on line 8, elapsed mismatch on line 10, bad time on line 12).
    /// Times are Asia/Shanghai; 2026-11-20T08:00:00+08:00 is 2026-11-20T00:00:00Z.
    /// </summary>
    public const string Sacct =
        "JobID|Account|Partition|AllocTRES|Start|End|Elapsed|State\n"
        + "4201|lab-vision|gpu-h100|billing=64,cpu=64,gres/gpu:h100=8,gres/gpu=8,mem=512G,node=1|2026-11-20T08:00:00|2026-11-20T10:30:00|02:30:00|COMPLETED\n"
        + "4201.0|lab-vision||cpu=64,gres/gpu:h100=8,gres/gpu=8,mem=512G,node=1|2026-11-20T08:00:05|2026-11-20T10:29:55|02:29:50|COMPLETED\n"
        + "4202|lab-speech|gpu-h20|billing=16,cpu=16,gres/gpu=4,mem=128G,node=1|2026-11-20T09:00:00|2026-11-20T09:45:00|00:45:00|FAILED\n"
        + "4203|lab-vision|gpu-a100|billing=8,cpu=8,gres/gpu:a100=1,gres/gpu=1,node=1|2026-11-20T09:00:00|Unknown|01:00:00|RUNNING\n"
        + "4204|lab-vision|cpu|billing=32,cpu=32,mem=64G,node=1|2026-11-20T09:00:00|2026-11-20T11:00:00|02:00:00|COMPLETED\n"
        + "4205|lab-speech|gpu-h100|billing=128,cpu=128,gres/gpu:h100=16,gres/gpu=16,node=2|2026-11-19T22:00:00|2026-11-20T06:00:00|08:00:00|TIMEOUT\n"
        + "4206|lab-unknown|gpu-h100|gres/gpu:h100=8,gres/gpu=8|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED\n"
        + "4207|lab-vision|gpu-a100|cpu=8,gres/gpu:a100=2|2026-11-20T12:00:00|2026-11-20T13:00:00|01:00:00|CANCELLED by 1000\n"
        + "4208|lab-vision|gpu-a100|cpu=8,gres/gpu:a100=2|2026-11-20T12:00:00|2026-11-20T13:00:00|00:30:00|COMPLETED\n"
        + "4209|lab-speech|gpu-h20|gres/gpu=8|2026-11-19T08:00:00|2026-11-20T08:00:00|1-00:00:00|COMPLETED\n"
        + "4210|lab-vision|gpu-h100|gres/gpu:h100=1|2026-13-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED\n";

    /// <summary>Line number → reason of the refused lines in <see cref="Sacct"/>.</summary>
    public static readonly (long Line, string Reason)[] SacctRefusals =
    [
        (8, "UNMAPPED_ACCOUNT"),
        (10, "ELAPSED_MISMATCH"),
        (12, "MALFORMED_LINE"),
    ];

    public const int SacctRecords = 5;
    public const int SacctSkipped = 4; // the header, the step, the running job, the CPU job
}
