using System.Collections;
using Google.Protobuf.Collections;
using Metering.Engine.Ingest;
using Metering.Protocol.V1;

namespace Metering.Server.Ingest;

/// <summary>Maps the wire's usage records to the engine's, field for field.</summary>
internal static class IngestMapping
{
    /// <summary>The engine's view of one message record; the strings and the UUID list are the message's own.</summary>
    public static IngestRecord ToEngine(UsageRecord record) => new(
        record.Sequence,
        record.JobId,
        record.HolderCode,
        record.DeviceModel,
        record.DeviceCount,
        record.ShareNumerator,
        record.ShareDenominator,
        record.StartUnixMs,
        record.EndUnixMs,
        record.Site,
        record.DeviceUuids,
        record.HasEnergyMwh ? record.EnergyMwh : null,
        record.HasSmActiveBp ? record.SmActiveBp : null);
}

/// <summary>
/// A batch message's records as the engine reads them, one per stream and reused for each batch,
/// so that mapping allocates nothing per batch or per record: each read builds the engine's struct
/// from the message's record. <see cref="Count"/> is the message's own, so an oversize batch is
/// refused with its real size and never copied. Not thread-safe: a stream has a single writer.
/// </summary>
internal sealed class IngestRecordView : IReadOnlyList<IngestRecord>
{
    private RepeatedField<UsageRecord> _records = [];

    /// <summary>Points the view at a batch's records, which it holds no longer than the stream holds the message.</summary>
    public IngestRecordView Over(RepeatedField<UsageRecord> records)
    {
        _records = records;
        return this;
    }

    public int Count => _records.Count;

    public IngestRecord this[int index] => IngestMapping.ToEngine(_records[index]);

    public IEnumerator<IngestRecord> GetEnumerator()
    {
        for (int i = 0; i < _records.Count; i++)
        {
            yield return this[i];
        }
    }

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();
}
