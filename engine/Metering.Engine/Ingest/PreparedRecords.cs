using Metering.Engine.Catalog;
using Metering.Engine.Storage;

namespace Metering.Engine.Ingest;

/// <summary>A batch's new records, ready to commit: each with its usage, catalog entry and chain hash.</summary>
internal sealed class PreparedRecords : IUsageRows
{
    public PreparedRecords(int capacity)
    {
        Records = new IngestRecord[capacity];
        UsageNanoPflopsHours = new long[capacity];
        Models = new DeviceModel[capacity];
        Hashes = new byte[capacity * CanonicalEncoding.HashBytes];
    }

    public IngestRecord[] Records { get; }
    public long[] UsageNanoPflopsHours { get; }
    public DeviceModel[] Models { get; }

    /// <summary>The chain hashes, 32 bytes each, back to back.</summary>
    public byte[] Hashes { get; }

    public int Count { get; set; }

    public ReadOnlyMemory<byte> HashAt(int index) => Hashes.AsMemory(index * CanonicalEncoding.HashBytes, CanonicalEncoding.HashBytes);

    public UsageRow RowAt(int index)
    {
        ref readonly IngestRecord record = ref Records[index];
        return new UsageRow(record.Sequence, record.JobId, record.HolderCode, record.DeviceModel, record.DeviceCount, record.ShareNumerator, record.ShareDenominator,
            record.StartUnixMs, record.EndUnixMs, record.Site, record.DeviceUuids, record.EnergyMwh,
            Models[index].CatalogVersion, UsageNanoPflopsHours[index], HashAt(index), record.SmActiveBp);
    }

    public void Clear()
    {
        Array.Clear(Records, 0, Count);
        Array.Clear(Models, 0, Count);
        Count = 0;
    }
}
