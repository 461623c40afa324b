using System.Security.Cryptography;
using BenchmarkDotNet.Attributes;
using Metering.Engine.Audit;
using Metering.Engine.Ingest;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Metering.Samples.ProviderAgent;

namespace Metering.Bench.Audit;

/// <summary>
/// The verifier's in-process work per record, without the database: parse a binary COPY row,
/// rebuild its canonical encoding and hash the link, against one SHA-256 pass over the same
/// canonical bytes laid end to end (what sha256sum does to the exported file). The ratio of the
/// two is how close the verifier itself comes to raw SHA-256; in bench/run-verify PostgreSQL's
/// row output is the slower side. The Allocated column must not grow with the record count.
/// Not sealed: BenchmarkDotNet derives from benchmark classes.
/// </summary>
[MemoryDiagnoser]
public class ChainVerifyBenchmarks
{
    private const int Records = 10_000;
    private const string ProviderId = "91440300MA5F00001A";
    private const string StreamId = "verify-0-sz-nanshan-dc1";

    private byte[] _copy = [];
    private byte[] _canonical = [];

    [GlobalSetup]
    public void Setup()
    {
        SimulatedCluster site = SimulatedCluster.DemoSites(new DateTimeOffset(2026, 10, 28, 0, 0, 0, TimeSpan.FromHours(8)), 200, seed: 2025)[0];
        using var rows = new BinaryCopyWriter();
        using var canonical = new MemoryStream();
        var scratch = new byte[64 * 1024];
        rows.WriteHeader();
        for (int i = 1; i <= Records; i++)
        {
            UsageRecord record = site.RecordAt((ulong)i);
            rows.StartRow(ChainVerifier.FieldCount);
            rows.WriteInt64Field(i);
            rows.WriteTextField(record.JobId);
            rows.WriteTextField(record.HolderCode);
            rows.WriteTextField(record.DeviceModel);
            rows.WriteInt32Field((int)record.DeviceCount);
            rows.WriteInt32Field((int)record.ShareNumerator);
            rows.WriteInt32Field((int)record.ShareDenominator);
            rows.WriteTimestampField(record.StartUnixMs);
            rows.WriteTimestampField(record.EndUnixMs);
            rows.WriteTextField(record.Site);
            if (record.DeviceUuids.Count == 0)
            {
                rows.WriteNull();
            }
            else
            {
                rows.WriteTextArrayField(record.DeviceUuids);
            }

            rows.WriteInt64Field((long)record.EnergyMwh);
            rows.WriteByteaField(new byte[CanonicalEncoding.HashBytes]);
            int length = CanonicalEncoding.Encode(RecordFields.From(ProviderId, StreamId, record), scratch);
            canonical.Write(scratch, 0, length);
        }

        rows.WriteTrailer();
        _copy = rows.Written.ToArray();
        _canonical = canonical.ToArray();
    }

    /// <summary>Parse, encode and hash every row with .NET's one-shot SHA256.HashData, which the verifier does not use (hashes are not compared: the stored ones are zeros).</summary>
    [Benchmark]
    public async Task<long> ParseEncodeAndHashOneShot()
    {
        var reader = new CopyRowReader(new MemoryStream(_copy, writable: false), ChainVerifier.FieldCount);
        var encoder = new RowEncoder(ProviderId, StreamId);
        byte[] hash = new byte[CanonicalEncoding.HashBytes];
        long bytes = 0;
        while (await reader.ReadAsync(CancellationToken.None))
        {
            int length = encoder.Encode(reader, out _);
            hash.CopyTo(encoder.Scratch, 0);
            SHA256.HashData(encoder.Scratch.AsSpan(0, CanonicalEncoding.HashBytes + length), hash);
            bytes += length;
        }

        return bytes;
    }

    /// <summary>Parse, encode and hash every row with one reused IncrementalHash, as the verifier did before Sha256Digest.</summary>
    [Benchmark]
    public async Task<long> ParseEncodeAndHashIncremental()
    {
        var reader = new CopyRowReader(new MemoryStream(_copy, writable: false), ChainVerifier.FieldCount);
        var encoder = new RowEncoder(ProviderId, StreamId);
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        byte[] hash = new byte[CanonicalEncoding.HashBytes];
        long bytes = 0;
        while (await reader.ReadAsync(CancellationToken.None))
        {
            int length = encoder.Encode(reader, out _);
            hash.CopyTo(encoder.Scratch, 0);
            sha.AppendData(encoder.Scratch.AsSpan(0, CanonicalEncoding.HashBytes + length));
            sha.GetHashAndReset(hash);
            bytes += length;
        }

        return bytes;
    }

    /// <summary>Parse, encode and hash every row as the verifier does, through OpenSSL's low-level SHA-256 (Sha256Digest).</summary>
    [Benchmark]
    public async Task<long> ParseEncodeAndHash()
    {
        var reader = new CopyRowReader(new MemoryStream(_copy, writable: false), ChainVerifier.FieldCount);
        var encoder = new RowEncoder(ProviderId, StreamId);
        byte[] hash = new byte[CanonicalEncoding.HashBytes];
        long bytes = 0;
        while (await reader.ReadAsync(CancellationToken.None))
        {
            int length = encoder.Encode(reader, out _);
            hash.CopyTo(encoder.Scratch, 0);
            Sha256Digest.Hash(encoder.Scratch.AsSpan(0, CanonicalEncoding.HashBytes + length), hash);
            bytes += length;
        }

        return bytes;
    }

    /// <summary>Parse and encode only, to see what hashing costs on top.</summary>
    [Benchmark]
    public async Task<long> ParseAndEncode()
    {
        var reader = new CopyRowReader(new MemoryStream(_copy, writable: false), ChainVerifier.FieldCount);
        var encoder = new RowEncoder(ProviderId, StreamId);
        long bytes = 0;
        while (await reader.ReadAsync(CancellationToken.None))
        {
            bytes += encoder.Encode(reader, out _);
        }

        return bytes;
    }

    /// <summary>One SHA-256 over the same canonical bytes, end to end.</summary>
    [Benchmark(Baseline = true)]
    public byte[] Sha256OverCanonicalBytes() => SHA256.HashData(_canonical);
}
