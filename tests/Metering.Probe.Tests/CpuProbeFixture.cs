using Metering.Probe.Attestation.Results;
using Metering.Probe.Measurement;
using Microsoft.Extensions.Logging.Abstractions;

namespace Metering.Probe.Tests;

/// <summary>Runs the whole probe twice on ILGPU's CPU accelerator, small size, with two fixed nonces; shared by the tests that read the reports.</summary>
public sealed class CpuProbeFixture
{
    public static readonly byte[] NonceA = Convert.FromHexString("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");

    /// <summary>The CPU device's own nonce under <see cref="NonceA"/> (index 0, no UUID), from which its inputs and challenge come.</summary>
    public static readonly byte[] DeviceNonceA = Metering.Probe.Attestation.Checksums.DeviceNonce.Derive(NonceA, 0, "");

    public static readonly byte[] NonceB = Convert.FromHexString("f0e1d2c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbccddeeff");

    public CpuProbeFixture()
    {
        ReportA = Run(NonceA);
        ReportB = Run(NonceB);
    }

    public ProbeReport ReportA { get; }

    public ProbeReport ReportB { get; }

    public static ProbeReport Run(byte[] nonce) =>
        new ProbeRunner(new ProbeSettings { Nonce = nonce, Attested = true, Devices = DeviceFilter.Cpu, Size = SizePreset.Small, Runs = 3 }, NullLogger.Instance).Run();
}
