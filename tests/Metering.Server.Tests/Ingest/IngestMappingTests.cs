using Google.Protobuf.Collections;
using Metering.Engine.Ingest;
using Metering.Protocol.V1;
using Metering.Server.Ingest;
using Xunit;

namespace Metering.Server.Tests.Ingest;

/// <summary>
/// The edge's map from the wire's usage records to the engine's: every field arrives unchanged, an
/// absent energy stays absent, and the chain sees the same canonical bytes it would from the fields
/// themselves, so the stored hashes cannot depend on the mapping.
/// </summary>
public sealed class IngestMappingTests
{
    private static UsageRecord Wire() => new()
    {
        Sequence = 42,
        JobId = "job-42",
        HolderCode = "9144030071526726XG",
        DeviceModel = "H100-SXM",
        DeviceCount = 8,
        ShareNumerator = 3,
        ShareDenominator = 7,
        StartUnixMs = 1_795_000_000_000,
        EndUnixMs = 1_795_000_300_000,
        Site = "sz-nanshan-dc1",
        DeviceUuids = { "GPU-0001", "GPU-0002" },
        EnergyMwh = 280_000,
    };

    [Fact]
    public void Every_field_of_a_wire_record_reaches_the_engine_record_unchanged()
    {
        UsageRecord wire = Wire();
        IngestRecord record = IngestMapping.ToEngine(wire);
        Assert.Equal(
            (42ul, "job-42", "9144030071526726XG", "H100-SXM", 8u, 3u, 7u, 1_795_000_000_000L, 1_795_000_300_000L, "sz-nanshan-dc1", (ulong?)280_000),
            (record.Sequence, record.JobId, record.HolderCode, record.DeviceModel, record.DeviceCount, record.ShareNumerator, record.ShareDenominator,
                record.StartUnixMs, record.EndUnixMs, record.Site, record.EnergyMwh));
        Assert.Equal(["GPU-0001", "GPU-0002"], record.DeviceUuids);
    }

    [Fact]
    public void An_absent_energy_stays_absent_and_a_zero_energy_stays_zero_with_different_chain_bytes()
    {
        UsageRecord without = Wire();
        without.ClearEnergyMwh();
        UsageRecord zero = Wire();
        zero.EnergyMwh = 0;

        IngestRecord absent = IngestMapping.ToEngine(without);
        IngestRecord zeroEnergy = IngestMapping.ToEngine(zero);

        Assert.Null(absent.EnergyMwh);
        Assert.Equal(0ul, zeroEnergy.EnergyMwh);
        Assert.NotEqual(Encode(absent), Encode(zeroEnergy));
    }

    [Fact]
    public void An_absent_sm_activity_stays_absent_and_a_measured_zero_stays_zero_with_different_chain_bytes()
    {
        UsageRecord zero = Wire();
        zero.SmActiveBp = 0;
        UsageRecord busy = Wire();
        busy.SmActiveBp = 8_750;

        IngestRecord absent = IngestMapping.ToEngine(Wire());
        IngestRecord measuredZero = IngestMapping.ToEngine(zero);

        Assert.Null(absent.SmActiveBp);
        Assert.Equal(0u, measuredZero.SmActiveBp);
        Assert.Equal(8_750u, IngestMapping.ToEngine(busy).SmActiveBp);
        Assert.NotEqual(Encode(absent), Encode(measuredZero));
    }

    [Fact]
    public void A_mapped_record_encodes_to_the_bytes_of_the_same_fields_written_out()
    {
        var fields = new RecordFields
        {
            ProviderId = "914403001922038216",
            StreamId = "cluster-a",
            Sequence = 42,
            JobId = "job-42",
            HolderCode = "9144030071526726XG",
            DeviceModel = "H100-SXM",
            DeviceCount = 8,
            ShareNumerator = 3,
            ShareDenominator = 7,
            StartUnixMs = 1_795_000_000_000,
            EndUnixMs = 1_795_000_300_000,
            Site = "sz-nanshan-dc1",
            DeviceUuids = ["GPU-0001", "GPU-0002"],
            EnergyMwh = 280_000,
            SmActiveBp = null,
        };

        Assert.Equal(Encode(fields), Encode(IngestMapping.ToEngine(Wire())));
    }

    [Fact]
    public void The_view_reads_the_batch_it_points_at_with_the_messages_own_count()
    {
        var view = new IngestRecordView();
        Assert.Empty(view);

        var first = new RepeatedField<UsageRecord>();
        for (ulong sequence = 1; sequence <= 3; sequence++)
        {
            UsageRecord record = Wire();
            record.Sequence = sequence;
            first.Add(record);
        }

        IReadOnlyList<IngestRecord> records = view.Over(first);
        Assert.Equal(3, records.Count);
        Assert.Equal([1ul, 2ul, 3ul], records.Select(r => r.Sequence));

        // Reused for the stream's next batch, the view forgets the last one.
        var second = new RepeatedField<UsageRecord> { Wire() };
        Assert.Equal(42ul, Assert.Single(view.Over(second)).Sequence);
    }

    private static byte[] Encode(in IngestRecord record) => Encode(RecordFields.From("914403001922038216", "cluster-a", record));

    private static byte[] Encode(in RecordFields fields)
    {
        var bytes = new byte[CanonicalEncoding.Length(fields)];
        Assert.Equal(bytes.Length, CanonicalEncoding.Encode(fields, bytes));
        return bytes;
    }
}
