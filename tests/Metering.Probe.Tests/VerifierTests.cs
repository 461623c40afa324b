using Metering.Probe.Attestation.Checksums;
using Metering.Probe.Attestation.Results;

namespace Metering.Probe.Tests;

/// <summary>Each kind of forgery or damage is refused with its own reason; the good report passes.</summary>
public sealed class VerifierTests(CpuProbeFixture fixture) : IClassFixture<CpuProbeFixture>
{
    private static readonly WorkSize PackedSize = new(64, 64);

    private KernelMeasurement Packed => fixture.ReportA.Devices[0].Measurements.Single(m => m.Kernel == "packed-fp16");

    private KernelMeasurement Tensor => fixture.ReportA.Devices[0].Measurements.Single(m => m.Kernel == "tensor-fp16");

    [Fact]
    public void The_untouched_packed_checksum_is_valid()
    {
        Assert.True(Verify(Packed.Checksum.Openings).IsValid);
    }

    [Fact]
    public void A_tampered_leaf_hash_is_refused_as_a_leaf_mismatch()
    {
        LeafOpening[] openings = [.. Packed.Checksum.Openings];
        openings[3] = openings[3] with { LeafHash = Flip(openings[3].LeafHash) };

        Assert.Equal(VerificationFailure.LeafMismatch, Verify(openings).Failure);
    }

    [Fact]
    public void A_leaf_computed_wrong_and_committed_consistently_is_refused_as_a_leaf_mismatch()
    {
        // A device that gets one leaf wrong builds a consistent tree over it; the challenge must find it when it draws that leaf.
        InputKey key = InputKey.Derive(CpuProbeFixture.NonceA, KernelKind.PackedFp16, PackedSize);
        byte[][] payloads = Enumerable.Range(0, PackedSize.Items).Select(i =>
        {
            byte[] payload = new byte[WorkShape.LeafPayloadBytes(KernelKind.PackedFp16)];
            ReferenceLeaves.Compute(KernelKind.PackedFp16, key, PackedSize, i, payload);
            return payload;
        }).ToArray();

        for (int wrong = 0; wrong < PackedSize.Items; wrong++)
        {
            byte[] saved = payloads[wrong];
            payloads[wrong] = Flip(saved);
            byte[] hashes = Commitment.HashLeaves(KernelKind.PackedFp16, PackedSize.Items, (i, payload) => payloads[i].CopyTo(payload));
            KernelChecksum forged = Commitment.FromLeafHashes(CpuProbeFixture.NonceA, KernelKind.PackedFp16, PackedSize, hashes);
            payloads[wrong] = saved;
            if (forged.Openings.Any(o => o.Index == wrong))
            {
                VerificationResult result = ProbeVerifier.VerifyChecksum(CpuProbeFixture.NonceA, KernelKind.PackedFp16, PackedSize, forged.Root, forged.Openings);
                Assert.Equal(VerificationFailure.LeafMismatch, result.Failure);
                Assert.Contains($"leaf {wrong}", result.Detail, StringComparison.Ordinal);
                return;
            }
        }

        Assert.Fail("No wrong leaf was ever drawn by the challenge.");
    }

    [Fact]
    public void A_wrong_root_is_refused_as_a_root_mismatch()
    {
        VerificationResult result = ProbeVerifier.VerifyChecksum(CpuProbeFixture.DeviceNonceA, KernelKind.PackedFp16, PackedSize, Flip(Packed.Checksum.Root), Packed.Checksum.Openings);

        Assert.Equal(VerificationFailure.RootMismatch, result.Failure);
    }

    [Fact]
    public void A_wrong_root_on_a_kernel_whose_leaves_are_all_opened_is_refused_as_a_root_mismatch()
    {
        VerificationResult result = ProbeVerifier.VerifyChecksum(CpuProbeFixture.DeviceNonceA, KernelKind.TensorFp16, new WorkSize(8, 8), Flip(Tensor.Checksum.Root), Tensor.Checksum.Openings);

        Assert.Equal(VerificationFailure.RootMismatch, result.Failure);
    }

    [Fact]
    public void A_report_for_another_nonce_is_refused_as_a_nonce_mismatch()
    {
        Assert.Equal(VerificationFailure.NonceMismatch, ProbeVerifier.VerifyReport(CpuProbeFixture.NonceB, fixture.ReportA).Failure);
    }

    [Fact]
    public void A_checksum_checked_against_another_nonce_is_refused()
    {
        // The claimed report nonce is not consulted here: the challenge drawn from the other nonce names other leaves.
        VerificationResult result = ProbeVerifier.VerifyChecksum(CpuProbeFixture.NonceB, KernelKind.PackedFp16, PackedSize, Packed.Checksum.Root, Packed.Checksum.Openings);

        Assert.Equal(VerificationFailure.UnexpectedLeafIndex, result.Failure);
    }

    [Fact]
    public void A_tensor_checksum_checked_against_another_nonce_is_refused_as_a_leaf_mismatch()
    {
        // With all eight leaves opened the indices match; the recomputed leaves do not.
        VerificationResult result = ProbeVerifier.VerifyChecksum(CpuProbeFixture.NonceB, KernelKind.TensorFp16, new WorkSize(8, 8), Tensor.Checksum.Root, Tensor.Checksum.Openings);

        Assert.Equal(VerificationFailure.LeafMismatch, result.Failure);
    }

    [Fact]
    public void A_genuine_leaf_at_an_index_the_challenge_did_not_draw_is_refused_as_an_unexpected_index()
    {
        InputKey key = InputKey.Derive(CpuProbeFixture.DeviceNonceA, KernelKind.PackedFp16, PackedSize);
        byte[] hashes = Commitment.HashLeaves(KernelKind.PackedFp16, PackedSize.Items, (i, payload) => ReferenceLeaves.Compute(KernelKind.PackedFp16, key, PackedSize, i, payload));
        MerkleTree tree = MerkleTree.Build(hashes);
        int notDrawn = Enumerable.Range(0, PackedSize.Items).First(i => Packed.Checksum.Openings.All(o => o.Index != i));
        LeafOpening[] openings = [.. Packed.Checksum.Openings];
        openings[5] = new LeafOpening { Index = notDrawn, LeafHash = hashes[(notDrawn * 32)..((notDrawn + 1) * 32)], Path = tree.Path(notDrawn) };

        Assert.Equal(tree.Root, Packed.Checksum.Root);
        Assert.Equal(VerificationFailure.UnexpectedLeafIndex, Verify(openings).Failure);
    }

    [Fact]
    public void A_wrong_sibling_in_a_path_is_refused_as_a_path_mismatch()
    {
        LeafOpening[] openings = [.. Packed.Checksum.Openings];
        List<byte[]> path = [.. openings[7].Path];
        path[2] = Flip(path[2]);
        openings[7] = openings[7] with { Path = path };

        Assert.Equal(VerificationFailure.PathMismatch, Verify(openings).Failure);
    }

    [Fact]
    public void A_path_with_a_sibling_missing_is_refused_as_a_path_length_mismatch()
    {
        LeafOpening[] openings = [.. Packed.Checksum.Openings];
        openings[0] = openings[0] with { Path = openings[0].Path.Skip(1).ToList() };

        Assert.Equal(VerificationFailure.PathLengthMismatch, Verify(openings).Failure);
    }

    [Fact]
    public void Too_few_openings_are_refused_as_the_wrong_opening_count()
    {
        Assert.Equal(VerificationFailure.WrongOpeningCount, Verify(Packed.Checksum.Openings.Take(31).ToList()).Failure);
    }

    [Fact]
    public void A_work_size_beyond_the_limits_is_refused_before_any_recomputation()
    {
        VerificationResult result = ProbeVerifier.VerifyChecksum(CpuProbeFixture.DeviceNonceA, KernelKind.TensorFp16, new WorkSize(8, WorkShape.TensorIterationsMax + 1), Tensor.Checksum.Root, Tensor.Checksum.Openings);

        Assert.Equal(VerificationFailure.InvalidWorkSize, result.Failure);
    }

    [Fact]
    public void An_unattested_report_is_refused()
    {
        Assert.Equal(VerificationFailure.Unattested, ProbeVerifier.VerifyReport(CpuProbeFixture.NonceA, fixture.ReportA with { Attested = false }).Failure);
    }

    [Fact]
    public void A_median_that_is_not_the_median_of_the_durations_is_refused()
    {
        ProbeReport report = fixture.ReportA;
        DeviceReport device = report.Devices[0];
        KernelMeasurement inflated = device.Measurements[0] with { MedianDurationNs = 1, MedianRate = device.Measurements[0].WorkPerRun * 1000 };
        ProbeReport forged = report with { Devices = [device with { Measurements = [inflated, .. device.Measurements.Skip(1)] }] };

        Assert.Equal(VerificationFailure.MeasurementInconsistent, ProbeVerifier.VerifyReport(CpuProbeFixture.NonceA, forged).Failure);
    }

    [Fact]
    public void A_rate_above_what_the_durations_give_is_refused()
    {
        ProbeReport report = fixture.ReportA;
        DeviceReport device = report.Devices[0];
        KernelMeasurement inflated = device.Measurements[1] with { MedianRate = device.Measurements[1].MedianRate * 10 };
        ProbeReport forged = report with { Devices = [device with { Measurements = [device.Measurements[0], inflated, .. device.Measurements.Skip(2)] }] };

        Assert.Equal(VerificationFailure.MeasurementInconsistent, ProbeVerifier.VerifyReport(CpuProbeFixture.NonceA, forged).Failure);
    }

    private VerificationResult Verify(IReadOnlyList<LeafOpening> openings) =>
        ProbeVerifier.VerifyChecksum(CpuProbeFixture.DeviceNonceA, KernelKind.PackedFp16, PackedSize, Packed.Checksum.Root, openings);

    private static byte[] Flip(byte[] bytes)
    {
        byte[] copy = [.. bytes];
        copy[^1] ^= 0x01;
        return copy;
    }
}
