using Metering.Engine.Capacity;
using Metering.Engine.Catalog;
using Metering.Probe.Attestation.Checksums;

namespace Metering.Engine.Tests.Capacity;

/// <summary>The work the server sets per model, the deadline it gives, and the rates its own clock yields.</summary>
public sealed class ChallengeWorkTests
{
    private static readonly CatalogVersion Catalog = DeviceCatalog.LoadEmbedded().Latest;
    private static readonly CapacitySettings Settings = new();

    private static DeviceModel H100 => Catalog.TryGet("H100-SXM", out DeviceModel model) ? model : throw new InvalidOperationException("no H100-SXM");

    [Fact]
    public void An_H100s_work_is_sized_from_its_reference_within_every_kernels_limits()
    {
        ChallengePlan plan = ChallengeWork.Plan(H100, 1, Settings);

        Assert.All(plan.Kernels, k => Assert.Null(WorkShape.Validate(k.Kind, k.Size)));
        // Tensor and bandwidth reach the 5 s per kernel (four runs at the healthy threshold); the FMA kernels are capped by their limits.
        KernelChallenge tensor = plan.Of("tensor-fp16")!;
        Assert.InRange(tensor.ExpectedMs, 5_000, 5_050);
        Assert.InRange(plan.Of("memory-bandwidth")!.ExpectedMs, 5_000, 5_050);
        Assert.InRange(plan.Of("packed-fp16")!.ExpectedMs, 1, 5_000);
        // Eight devices run one after another: eight times the time.
        Assert.InRange(ChallengeWork.Plan(H100, 8, Settings).Of("tensor-fp16")!.ExpectedMs, (8 * tensor.ExpectedMs) - 8, 8 * tensor.ExpectedMs);
    }

    [Fact]
    public void A_device_at_half_the_healthy_rate_cannot_commit_inside_the_deadline()
    {
        ChallengePlan plan = ChallengeWork.Plan(H100, 1, Settings);
        long deadlineMs = plan.ExpectedMs + (long)Settings.ChallengeAllowance.TotalMilliseconds;

        // Even with no start-up at all, half the healthy rate takes twice the expected time.
        Assert.True(2 * plan.ExpectedMs > deadlineMs, $"expected {plan.ExpectedMs} ms, deadline {deadlineMs} ms");
    }

    [Fact]
    public void A_commitment_at_the_deadline_gives_every_kernel_the_healthy_threshold_and_a_fast_one_never_more_than_the_peak()
    {
        ChallengePlan plan = ChallengeWork.Plan(H100, 2, Settings);
        long allowanceMs = (long)Settings.ChallengeAllowance.TotalMilliseconds;
        ProbeProfile probe = H100.Probe!;

        IReadOnlyDictionary<string, long> atDeadline = ChallengeWork.ServerRates(plan, probe, plan.ExpectedMs + allowanceMs, allowanceMs);
        IReadOnlyDictionary<string, long> instant = ChallengeWork.ServerRates(plan, probe, 0, allowanceMs);
        IReadOnlyDictionary<string, long> twiceAsLong = ChallengeWork.ServerRates(plan, probe, (2 * plan.ExpectedMs) + allowanceMs, allowanceMs);

        foreach (KernelChallenge kernel in plan.Kernels)
        {
            long reference = probe.Reference.Of(kernel.Kind);
            // At the deadline each kernel is within rounding of 0.90 × reference; at twice the time, about half that.
            Assert.InRange(atDeadline[kernel.Kernel] * 1000, reference * 899, reference * 901);
            Assert.True(twiceAsLong[kernel.Kernel] * 10 < reference * 9);
            Assert.InRange(instant[kernel.Kernel], 1, probe.Peak.Of(kernel.Kind));
        }
    }

    [Fact]
    public void The_duration_floor_is_the_set_work_at_1_10_times_the_peak()
    {
        KernelChallenge tensor = ChallengeWork.Plan(H100, 1, Settings).Of("tensor-fp16")!;

        // work × 10^3 / (1.1 × peak in MFLOP/s) nanoseconds, rounded down.
        Assert.Equal(tensor.WorkPerRun * 10_000 / (989_400_000L * 11), tensor.DurationFloorNs);
        // A set run takes 1.25 s at the healthy threshold (0.54 × peak), so no run is shorter than about 0.6 s.
        Assert.InRange(tensor.DurationFloorNs, 600_000_000, 620_000_000);
    }

    [Fact]
    public void Settings_refuse_an_allowance_that_would_let_a_half_rate_device_through()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new CapacitySettings { ChallengeAllowance = TimeSpan.FromSeconds(10) }.Validate());
        Assert.Throws<ArgumentOutOfRangeException>(() => new CapacitySettings { ChallengeRunsPerKernel = 0 }.Validate());
        new CapacitySettings().Validate();
    }
}
