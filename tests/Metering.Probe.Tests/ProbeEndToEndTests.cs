using Metering.Probe.Attestation.Checksums;
using Metering.Probe.Attestation.Results;

namespace Metering.Probe.Tests;

public sealed class ProbeEndToEndTests(CpuProbeFixture fixture) : IClassFixture<CpuProbeFixture>
{
    [Fact]
    public void A_cpu_probe_report_verifies_as_a_server_would_verify_it()
    {
        VerificationResult result = ProbeVerifier.VerifyReport(CpuProbeFixture.NonceA, fixture.ReportA);

        Assert.True(result.IsValid, result.ToString());
    }

    [Fact]
    public void The_cpu_probe_measures_every_kernel_with_integer_rates_and_all_runs()
    {
        DeviceReport device = Assert.Single(fixture.ReportA.Devices);

        Assert.Equal("cpu", device.AcceleratorType);
        Assert.Equal(KernelKinds.All.Select(KernelKinds.Name), device.Measurements.Select(m => m.Kernel));
        Assert.All(device.Measurements, m =>
        {
            Assert.Equal("portable", m.ArithmeticPath);
            Assert.Equal(3, m.DurationsNs.Count);
            Assert.True(m.MedianRate > 0, $"{m.Kernel} has rate {m.MedianRate}");
            Assert.Equal(Math.Min(WorkShape.OpeningsPerKernel, m.Items), m.Checksum.Openings.Count);
        });
    }

    [Fact]
    public void Two_nonces_give_different_roots_for_every_kernel()
    {
        var rootsA = fixture.ReportA.Devices[0].Measurements.Select(m => Convert.ToHexString(m.Checksum.Root)).ToList();
        var rootsB = fixture.ReportB.Devices[0].Measurements.Select(m => Convert.ToHexString(m.Checksum.Root)).ToList();

        Assert.Equal(4, rootsA.Count);
        Assert.All(rootsA.Zip(rootsB), pair => Assert.NotEqual(pair.First, pair.Second));
    }

    [Fact]
    public void The_same_nonce_gives_the_same_roots_on_a_second_run()
    {
        ProbeReport again = CpuProbeFixture.Run(CpuProbeFixture.NonceA);

        Assert.Equal(
            fixture.ReportA.Devices[0].Measurements.Select(m => Convert.ToHexString(m.Checksum.Root)),
            again.Devices[0].Measurements.Select(m => Convert.ToHexString(m.Checksum.Root)));
    }

    [Fact]
    public void A_report_survives_json_with_the_same_canonical_bytes()
    {
        string json = ProbeReportJson.Serialize(fixture.ReportA);
        ProbeReport parsed = ProbeReportJson.Deserialize(json);

        Assert.Equal(ProbeReportEncoding.Encode(fixture.ReportA), ProbeReportEncoding.Encode(parsed));
        Assert.True(ProbeVerifier.VerifyReport(CpuProbeFixture.NonceA, parsed).IsValid);
        Assert.DoesNotContain("e+", json, StringComparison.Ordinal);
        Assert.DoesNotContain(".", json.Replace("metering-probe/v1", string.Empty, StringComparison.Ordinal).Replace(fixture.ReportA.ProbeVersion, string.Empty, StringComparison.Ordinal), StringComparison.Ordinal);
    }

    [Fact]
    public void Json_that_is_not_a_report_is_refused_with_a_format_error()
    {
        Assert.Throws<FormatException>(() => ProbeReportJson.Deserialize("{\"format\": 3}"));
        Assert.Throws<FormatException>(() => ProbeReportJson.Deserialize("not json"));
        string badHex = ProbeReportJson.Serialize(fixture.ReportA).Replace(Convert.ToHexStringLower(CpuProbeFixture.NonceA), "zz", StringComparison.Ordinal);
        Assert.Throws<FormatException>(() => ProbeReportJson.Deserialize(badHex));
    }
}
