using Metering.Probe.Attestation.Checksums;
using Metering.Probe.Attestation.Results;

namespace Metering.Probe.Tests;

/// <summary>The per-device nonce and the commitment a node signs before it opens any leaf.</summary>
public sealed class CommitmentTests(CpuProbeFixture fixture) : IClassFixture<CpuProbeFixture>
{
    [Fact]
    public void Each_device_index_and_UUID_gives_its_own_nonce()
    {
        byte[] device0 = DeviceNonce.Derive(CpuProbeFixture.NonceA, 0, "");
        Assert.Equal(4, new[] { device0, DeviceNonce.Derive(CpuProbeFixture.NonceA, 1, ""), DeviceNonce.Derive(CpuProbeFixture.NonceA, 0, "GPU-1"), DeviceNonce.Derive(CpuProbeFixture.NonceB, 0, "") }
            .Select(Convert.ToHexStringLower).Distinct().Count());
        Assert.Equal(device0, DeviceNonce.Derive(CpuProbeFixture.NonceA, 0, ""));
    }

    [Fact]
    public void A_report_verifies_only_under_the_index_and_UUID_it_was_run_with()
    {
        Assert.True(ProbeVerifier.VerifyReport(CpuProbeFixture.NonceA, fixture.ReportA).IsValid);
        DeviceReport device = fixture.ReportA.Devices[0];

        Assert.Equal(VerificationFailure.LeafMismatch, ProbeVerifier.VerifyReport(CpuProbeFixture.NonceA, fixture.ReportA with { Devices = [device with { Uuid = "GPU-other" }] }).Failure);
        Assert.False(ProbeVerifier.VerifyReport(CpuProbeFixture.NonceA, fixture.ReportA with { Devices = [device, device with { Index = 1 }] }).IsValid);
    }

    [Fact]
    public void The_commitment_decodes_to_the_reports_work_and_roots_and_refuses_trailing_or_foreign_bytes()
    {
        byte[] encoded = ResultCommitment.Encode("node-1", fixture.ReportA);

        CommittedResults decoded = ResultCommitment.TryDecode(encoded)!;
        Assert.Equal(CpuProbeFixture.NonceA, decoded.Nonce);
        Assert.Equal("node-1", decoded.NodeId);
        CommittedKernel tensor = decoded.Devices.Single().Kernels.Single(k => k.Kernel == "tensor-fp16");
        KernelMeasurement measured = fixture.ReportA.Devices[0].Measurements.Single(m => m.Kernel == "tensor-fp16");
        Assert.Equal((measured.Items, measured.Iterations, 3), (tensor.Items, tensor.Iterations, tensor.Runs));
        Assert.Equal(measured.Checksum.Root, tensor.Root);
        Assert.Equal(encoded, ResultCommitment.Encode(decoded));
        Assert.Null(ResultCommitment.TryDecode([.. encoded, 0]));
        Assert.Null(ResultCommitment.TryDecode(encoded[..^1]));
        Assert.Null(ResultCommitment.TryDecode(ProbeReportEncoding.Encode(fixture.ReportA)));
        Assert.NotEqual(encoded, ResultCommitment.Encode("node-2", fixture.ReportA));
    }
}
