using Metering.Engine.Capacity;
using Metering.Engine.Catalog;
using Metering.Probe.Attestation.Results;

namespace Metering.Engine.Tests.Capacity;

/// <summary>How the server judges each reported device against the catalog; reports are built by hand, checksums are not the question here.</summary>
public sealed class AttestationJudgeTests
{
    private static readonly CatalogVersion Catalog = DeviceCatalog.LoadEmbedded().Latest;
    private static readonly Dictionary<(string, int), string> NoAliases = [];

    // H100 SXM references: tensor 593,640,000, packed 80,280,000, FP32 40,140,000 MFLOP/s, memory 2,010,000 MB/s.
    private static readonly long[] HealthyH100 = [634_000_000, 120_000_000, 60_000_000, 3_000_000];

    [Fact]
    public void A_healthy_H100_measured_through_PTX_passes()
    {
        var (devices, forgery) = AttestationJudge.Judge(Report(Device("NVIDIA H100 80GB HBM3", 132, HealthyH100)), "H100-SXM", 1, Catalog, NoAliases);

        Assert.Null(forgery);
        DeviceJudgement device = Assert.Single(devices);
        Assert.Equal((DeviceVerdict.Healthy, "H100-SXM"), (device.Verdict, device.Model));
        Assert.All(device.Kernels, k => Assert.True(k.Judged));
        Assert.Equal(NodeVerdict.Passed, AttestationJudge.NodeOf(devices, 1).Verdict);
    }

    [Fact]
    public void A_rate_just_below_90_percent_of_the_reference_fails_the_device_and_exactly_90_percent_passes()
    {
        long[] atThreshold = [593_640_000L * 9 / 10, 120_000_000, 60_000_000, 3_000_000];
        long[] below = [593_640_000L * 9 / 10 - 1, 120_000_000, 60_000_000, 3_000_000];

        Assert.Equal(DeviceVerdict.Healthy, JudgeOne(Device("NVIDIA H100 80GB HBM3", 132, atThreshold)).Verdict);
        DeviceJudgement unhealthy = JudgeOne(Device("NVIDIA H100 80GB HBM3", 132, below));
        Assert.Equal(DeviceVerdict.Unhealthy, unhealthy.Verdict);
        Assert.Contains("tensor-fp16", unhealthy.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public void A_rate_above_110_percent_of_the_physical_peak_is_forged()
    {
        long[] forged = [989_400_000L * 11 / 10 + 1, 120_000_000, 60_000_000, 3_000_000];
        long[] atPeakMargin = [989_400_000L * 11 / 10, 120_000_000, 60_000_000, 3_000_000];

        var (_, forgery) = AttestationJudge.Judge(Report(Device("NVIDIA H100 80GB HBM3", 132, forged)), "H100-SXM", 1, Catalog, NoAliases);
        Assert.Equal(("tensor-fp16", 989_400_000L), (forgery!.Kernel, forgery.Peak));
        Assert.Null(AttestationJudge.Judge(Report(Device("NVIDIA H100 80GB HBM3", 132, atPeakMargin)), "H100-SXM", 1, Catalog, NoAliases).Forgery);
    }

    [Fact]
    public void A_device_of_another_catalog_model_is_a_mismatch_and_fails_the_node()
    {
        DeviceJudgement device = JudgeOne(Device("NVIDIA H20", 78, [100_000_000, 80_000_000, 40_000_000, 3_500_000]));

        Assert.Equal((DeviceVerdict.ModelMismatch, "H20"), (device.Verdict, device.Model));
        Assert.Equal(NodeVerdict.Failed, AttestationJudge.NodeOf([device], 1).Verdict);
    }

    [Fact]
    public void An_unknown_name_or_multiprocessor_count_awaits_review_and_an_alias_resolves_it()
    {
        DeviceReport renamed = Device("NVIDIA H100 80GB HBM3 (engineering sample)", 132, HealthyH100);
        DeviceReport cut = Device("NVIDIA H100 80GB HBM3", 120, HealthyH100);

        Assert.Equal(DeviceVerdict.AwaitingReview, JudgeOne(renamed).Verdict);
        Assert.Equal(DeviceVerdict.AwaitingReview, JudgeOne(cut).Verdict);
        Assert.Equal(NodeVerdict.AwaitingReview, AttestationJudge.NodeOf([JudgeOne(renamed)], 1).Verdict);

        var aliases = new Dictionary<(string, int), string> { [("NVIDIA H100 80GB HBM3 (engineering sample)", 132)] = "H100-SXM" };
        Assert.Equal(DeviceVerdict.Healthy, Assert.Single(AttestationJudge.Judge(Report(renamed), "H100-SXM", 1, Catalog, aliases).Devices).Verdict);
    }

    [Fact]
    public void Rates_off_the_reference_path_are_not_judged_and_a_device_with_none_on_it_awaits_review()
    {
        DeviceReport openCl = Device("NVIDIA H100 80GB HBM3", 132, [1_000_000, 10_000, 100_000, 2_000_000], path: "portable");

        DeviceJudgement device = JudgeOne(openCl);
        Assert.Equal(DeviceVerdict.AwaitingReview, device.Verdict);
        Assert.All(device.Kernels, k => Assert.False(k.Judged));
    }

    [Fact]
    public void A_device_that_skipped_a_kernel_is_unhealthy()
    {
        DeviceReport device = Device("NVIDIA H100 80GB HBM3", 132, HealthyH100) is var d
            ? d with { Measurements = d.Measurements.Take(3).ToList() }
            : throw new InvalidOperationException();

        DeviceJudgement judged = JudgeOne(device);
        Assert.Equal(DeviceVerdict.Unhealthy, judged.Verdict);
        Assert.Contains("memory-bandwidth", judged.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public void A_node_passes_only_with_exactly_its_declared_devices()
    {
        DeviceReport h100 = Device("NVIDIA H100 80GB HBM3", 132, HealthyH100);

        var (fewer, _) = AttestationJudge.Judge(Report(h100, h100), "H100-SXM", 8, Catalog, NoAliases);
        var (more, _) = AttestationJudge.Judge(Report(h100, h100, h100), "H100-SXM", 2, Catalog, NoAliases);

        Assert.Equal(NodeVerdict.Failed, AttestationJudge.NodeOf(fewer, 8).Verdict);
        Assert.Equal(DeviceVerdict.Undeclared, more[2].Verdict);
        Assert.Equal(NodeVerdict.Failed, AttestationJudge.NodeOf(more, 2).Verdict);
    }

    private static DeviceJudgement JudgeOne(DeviceReport device) =>
        Assert.Single(AttestationJudge.Judge(Report(device), "H100-SXM", 1, Catalog, NoAliases).Devices);

    private static ProbeReport Report(params DeviceReport[] devices) => new()
    {
        Format = ProbeReport.CurrentFormat,
        ProbeVersion = "test",
        Nonce = new byte[32],
        Attested = true,
        CreatedAtUnixMs = 0,
        RunsPerKernel = 1,
        Devices = devices.Select((d, i) => d with { Index = i }).ToList(),
    };

    private static DeviceReport Device(string name, int multiprocessors, long[] rates, string path = "ptx") => new()
    {
        Index = 0,
        AcceleratorType = path == "ptx" ? "cuda" : "opencl",
        ModelName = name,
        Multiprocessors = multiprocessors,
        ClockMhz = 1980,
        MemoryBytes = 80L << 30,
        Uuid = "",
        PciBusId = "0000:19:00",
        Measurements = new[] { "tensor-fp16", "packed-fp16", "fp32-fma", "memory-bandwidth" }.Select((kernel, i) => new KernelMeasurement
        {
            Kernel = kernel,
            ArithmeticPath = path,
            Items = 1,
            Iterations = 1,
            WorkPerRun = 1,
            RateUnit = i == 3 ? "mbps" : "mflops",
            DurationsNs = [1],
            MedianDurationNs = 1,
            MedianRate = rates[i],
            Checksum = new KernelChecksum { LeafCount = 1, Root = new byte[32], Openings = [] },
        }).ToList(),
    };
}
