using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Metering.Engine.Ingest;
using Metering.Fixtures;

namespace Metering.Engine.Tests.Ingest;

public sealed partial class CanonicalEncodingTests
{
    private static readonly RecordFields First = new()
    {
        ProviderId = "914403001922038216",
        StreamId = "cluster-a",
        Sequence = 1,
        JobId = "job-42",
        HolderCode = "9144030071526726XG",
        DeviceModel = "H100-SXM",
        DeviceCount = 8,
        ShareNumerator = 1,
        ShareDenominator = 1,
        StartUnixMs = 1763596800000,
        EndUnixMs = 1763600400000,
        Site = "sz-nanshan-dc1",
        DeviceUuids = ["GPU-0001", "GPU-0002"],
        EnergyMwh = 5_600_000,
        SmActiveBp = null,
    };

    private static readonly RecordFields Second = First with
    {
        Sequence = 2,
        JobId = "job-43",
        DeviceModel = "A100-SXM",
        DeviceCount = 1,
        ShareNumerator = 3,
        ShareDenominator = 7,
        EndUnixMs = 1763598600000,
        DeviceUuids = [],
        EnergyMwh = null,
    };

    /// <summary>The third record of the worked example: the only one that reports an SM activity.</summary>
    private static readonly RecordFields Third = Second with
    {
        Sequence = 3,
        JobId = "job-44",
        DeviceModel = "H100-SXM",
        DeviceCount = 2,
        ShareNumerator = 1,
        ShareDenominator = 1,
        StartUnixMs = 1763600400000,
        EndUnixMs = 1763604000000,
        SmActiveBp = 312,
    };

    [Fact]
    public void Encoding_and_chain_match_the_worked_example_in_the_contract()
    {
        // The document an auditor reads is the source of truth; this test keeps the code to it.
        string doc = File.ReadAllText(Path.Combine(TestRecords.RepositoryRoot(), "proto", "metering", "v1", "canonical-encoding.md"));
        string Value(string name) => Regex.Match(doc, $"^{name}=([0-9a-f]+)$", RegexOptions.Multiline).Groups[1].Value;

        Assert.Equal(Value("R1"), Hex(Encode(First)));
        Assert.Equal(Value("R2"), Hex(Encode(Second)));
        Assert.Equal(Value("R3"), Hex(Encode(Third)));

        byte[] h1 = new byte[32];
        byte[] h2 = new byte[32];
        byte[] h3 = new byte[32];
        byte[] scratch = new byte[4096];
        CanonicalEncoding.ChainHash(new byte[32], First, scratch, h1);
        CanonicalEncoding.ChainHash(h1, Second, scratch, h2);
        CanonicalEncoding.ChainHash(h2, Third, scratch, h3);
        Assert.Equal(Value("H1"), Hex(h1));
        Assert.Equal(Value("H2"), Hex(h2));
        Assert.Equal(Value("H3"), Hex(h3));
    }

    [Fact]
    public void Chain_hash_is_sha256_of_previous_hash_then_encoding()
    {
        byte[] previous = RandomNumberGenerator.GetBytes(32);
        byte[] expected = SHA256.HashData([.. previous, .. Encode(First)]);
        byte[] actual = new byte[32];
        CanonicalEncoding.ChainHash(previous, First, new byte[4096], actual);
        Assert.Equal(expected, actual);
    }

    [Fact]
    public void Every_field_changes_the_encoding()
    {
        byte[] baseline = Encode(First);
        RecordFields[] variants =
        [
            First with { ProviderId = "9144030071526726XG" },
            First with { StreamId = "cluster-b" },
            First with { Sequence = 3 },
            First with { JobId = "job-44" },
            First with { HolderCode = "914403001922038216" },
            First with { DeviceModel = "H100-PCIE" },
            First with { DeviceCount = 9 },
            First with { ShareNumerator = 2, ShareDenominator = 2 },
            First with { ShareDenominator = 2 },
            First with { StartUnixMs = First.StartUnixMs - 1 },
            First with { EndUnixMs = First.EndUnixMs + 1 },
            First with { Site = "sz-nanshan-dc2" },
            First with { DeviceUuids = ["GPU-0002", "GPU-0001"] },
            First with { DeviceUuids = ["GPU-0001"] },
            First with { EnergyMwh = 5_600_001 },
            First with { EnergyMwh = null },
            First with { SmActiveBp = 0 },
            First with { SmActiveBp = 10_000 },
        ];
        foreach (RecordFields variant in variants)
        {
            Assert.NotEqual(baseline, Encode(variant));
        }
    }

    [Fact]
    public void Length_is_exact_and_minus_one_for_what_cannot_be_encoded()
    {
        Assert.Equal(Encode(First).Length, CanonicalEncoding.Length(First));
        Assert.Equal(Encode(Second).Length, CanonicalEncoding.Length(Second));
        Assert.Equal(-1, CanonicalEncoding.Length(First with { JobId = new string('j', 65_536) }));
        Assert.Equal(-1, CanonicalEncoding.Length(First with { DeviceUuids = ["GPU-1", new string('u', 70_000)] }));
    }

    [Fact]
    public void Absent_energy_and_zero_energy_encode_differently()
    {
        Assert.NotEqual(Encode(First with { EnergyMwh = null }), Encode(First with { EnergyMwh = 0 }));
    }

    [Fact]
    public void An_absent_sm_activity_adds_no_bytes_and_a_present_one_adds_its_tag_and_value()
    {
        // Absent stays absent: the record's bytes are those it had before the field existed, so
        // chains committed without it verify unchanged.
        byte[] without = Encode(Second);
        byte[] zero = Encode(Second with { SmActiveBp = 0 });
        byte[] busy = Encode(Second with { SmActiveBp = 9_999 });

        Assert.Equal(without.Length + CanonicalEncoding.SmActiveBytes, zero.Length);
        Assert.Equal(without, zero[..without.Length]);
        Assert.Equal("0100000000", Hex(zero.AsSpan(without.Length)));
        Assert.Equal("010000270f", Hex(busy.AsSpan(without.Length)));
        Assert.Equal(zero.Length, CanonicalEncoding.Length(Second with { SmActiveBp = 0 }));
        Assert.Equal(without.Length, CanonicalEncoding.Length(Second));
    }

    [Fact]
    public void Length_prefixes_keep_field_boundaries_unambiguous()
    {
        // Moving a character from one string to the next must not produce the same bytes.
        Assert.NotEqual(Encode(First with { JobId = "ab", StreamId = "c" }), Encode(First with { JobId = "b", StreamId = "ca" }));
    }

    [Fact]
    public void Encoding_fits_the_bound_the_limits_compute()
    {
        var limits = new IngestLimits();
        var longest = First with
        {
            StreamId = new string('s', CanonicalEncoding.StreamIdBytesMax),
            JobId = new string('j', limits.JobIdBytesMax),
            Site = new string('x', limits.SiteBytesMax),
            DeviceModel = new string('m', CanonicalEncoding.DeviceModelBytesMax),
            DeviceUuids = Enumerable.Repeat(new string('u', limits.DeviceUuidBytesMax), limits.DeviceUuidsMax).ToArray(),
            SmActiveBp = uint.MaxValue,
        };
        Assert.True(Encode(longest).Length <= limits.CanonicalBytesMax);
    }

    private static byte[] Encode(in RecordFields fields)
    {
        byte[] buffer = new byte[64 * 1024];
        int length = CanonicalEncoding.Encode(fields, buffer);
        return buffer[..length];
    }

    private static string Hex(ReadOnlySpan<byte> bytes) => Convert.ToHexStringLower(bytes);
}
