using BenchmarkDotNet.Attributes;
using Metering.Engine.Signing;

namespace Metering.Bench.Ingest;

/// <summary>
/// What a receipt costs the server: encoding and signing one (ECDSA P-256 over SHA-256), once
/// per acknowledged batch, never per record. Dividing by the records in a batch gives its share of
/// the per-record ingest cost that bench/run-ingest measures. Not sealed: BenchmarkDotNet derives
/// from benchmark classes.
/// </summary>
[MemoryDiagnoser]
public class ReceiptSigningBenchmarks
{
    private readonly byte[] _chainHead = new byte[32];
    private ServerSigningKey _key = null!;
    private ReceiptSigner _signer = null!;
    private ulong _sequence;

    [GlobalSetup]
    public void Setup()
    {
        _key = ServerSigningKey.CreateNew();
        _signer = new ReceiptSigner(_key, TimeProvider.System);
        new Random(2025).NextBytes(_chainHead);
    }

    [GlobalCleanup]
    public void Cleanup() => _key.Dispose();

    [Benchmark(Description = "sign one receipt (one per acknowledged batch)")]
    public SignedReceipt SignOne() => _signer.Sign("91440300MA5F00001A", "sz-nanshan-dc1", _sequence += 5_000, _chainHead);
}
