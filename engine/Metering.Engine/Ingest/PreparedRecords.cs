using System.Diagnostics;
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

/// <summary>
/// Consecutive prepared batches of one stream read as one run of rows, so that a group commit
/// copies them after the stream's mark in one piece. Made per group, not per record.
/// </summary>
internal sealed class PreparedRun : IUsageRows
{
    private readonly List<PreparedRecords> _parts = [];

    private PreparedRun()
    {
    }

    public int Count { get; private set; }

    /// <summary><paramref name="rows"/> (a batch or a run already) followed by <paramref name="next"/>.</summary>
    public static PreparedRun Append(IUsageRows rows, PreparedRecords next)
    {
        PreparedRun run = rows as PreparedRun ?? new PreparedRun().With((PreparedRecords)rows);
        Debug.Assert(run.Count == 0 || next.Count == 0 || run.RowAt(run.Count - 1).Sequence + 1 == next.Records[0].Sequence,
            "A run holds one stream's batches in sequence order.");
        return run.With(next);
    }

    private PreparedRun With(PreparedRecords part)
    {
        _parts.Add(part);
        Count += part.Count;
        return this;
    }

    public UsageRow RowAt(int index)
    {
        foreach (PreparedRecords part in _parts)
        {
            if (index < part.Count)
            {
                return part.RowAt(index);
            }

            index -= part.Count;
        }

        throw new ArgumentOutOfRangeException(nameof(index));
    }
}
