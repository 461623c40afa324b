using System.Buffers.Binary;
using System.Text;
using Metering.Engine.Storage;

namespace Metering.Engine.Ingest;

/// <summary>
/// The fields of one usage record as the chain hash sees them. A plain struct so that the hot
/// path can describe a record without allocating; the verifier fills it from database rows.
/// </summary>
public readonly struct RecordFields
{
    public required string ProviderId { get; init; }
    public required string StreamId { get; init; }
    public required ulong Sequence { get; init; }
    public required string JobId { get; init; }
    public required string HolderCode { get; init; }
    public required string DeviceModel { get; init; }
    public required uint DeviceCount { get; init; }
    public required uint ShareNumerator { get; init; }
    public required uint ShareDenominator { get; init; }
    public required long StartUnixMs { get; init; }
    public required long EndUnixMs { get; init; }
    public required string Site { get; init; }
    public required IReadOnlyList<string> DeviceUuids { get; init; }
    public required ulong? EnergyMwh { get; init; }

    /// <summary>Mean SM activity in basis points; null when the record reports none, and then nothing of it is encoded.</summary>
    public required uint? SmActiveBp { get; init; }

    public static RecordFields From(string providerId, string streamId, in IngestRecord record) => new()
    {
        ProviderId = providerId,
        StreamId = streamId,
        Sequence = record.Sequence,
        JobId = record.JobId,
        HolderCode = record.HolderCode,
        DeviceModel = record.DeviceModel,
        DeviceCount = record.DeviceCount,
        ShareNumerator = record.ShareNumerator,
        ShareDenominator = record.ShareDenominator,
        StartUnixMs = record.StartUnixMs,
        EndUnixMs = record.EndUnixMs,
        Site = record.Site,
        DeviceUuids = record.DeviceUuids,
        EnergyMwh = record.EnergyMwh,
        SmActiveBp = record.SmActiveBp,
    };
}

/// <summary>
/// The canonical byte encoding of a usage record (format 1), documented byte by byte in
/// proto/metering/v1/canonical-encoding.md, and the chain hash built on it:
/// hash(n) = SHA-256(hash(n-1) || canonical(n)), with hash(0) = 32 zero bytes.
/// </summary>
public static class CanonicalEncoding
{
    public const byte FormatVersion = 1;

    /// <summary>The chain hash's length, as the store keeps it (SHA-256, 32 bytes).</summary>
    public const int HashBytes = UsageStore.ChainHashBytes;

    public const int StreamIdBytesMax = 64;
    public const int DeviceModelBytesMax = 32;

    /// <summary>
    /// The tag of the optional SM-activity field written after the fixed fields when a record
    /// carries it. A field added to format 1 is written only when present, as its tag and value,
    /// so that every record without it keeps the bytes, and the chain the hashes, it always had.
    /// </summary>
    public const byte SmActiveTag = 0x01;

    /// <summary>Bytes of the SM-activity field when present: its tag and a u32.</summary>
    public const int SmActiveBytes = 1 + 4;

    /// <summary>Bytes of a record that do not depend on its strings: the version, integers, flags and length prefixes.</summary>
    public const int FixedBytes =
        1            // format version
        + 8          // sequence
        + 4 * 3      // device count, share numerator, share denominator
        + 8 * 2      // start, end
        + 2          // device UUID count
        + 1 + 8      // energy flag and value
        + 2 * 6;     // length prefixes of provider, stream, job, holder, model, site

    /// <summary>Writes the canonical encoding into <paramref name="destination"/> and returns its length.</summary>
    /// <exception cref="ArgumentException">The destination is too small or a string is longer than a u16 length.</exception>
    public static int Encode(in RecordFields record, Span<byte> destination)
    {
        int at = 0;
        destination[at++] = FormatVersion;
        at += WriteString(record.ProviderId, destination[at..]);
        at += WriteString(record.StreamId, destination[at..]);
        BinaryPrimitives.WriteUInt64BigEndian(destination[at..], record.Sequence);
        at += 8;
        at += WriteString(record.JobId, destination[at..]);
        at += WriteString(record.HolderCode, destination[at..]);
        at += WriteString(record.DeviceModel, destination[at..]);
        BinaryPrimitives.WriteUInt32BigEndian(destination[at..], record.DeviceCount);
        at += 4;
        BinaryPrimitives.WriteUInt32BigEndian(destination[at..], record.ShareNumerator);
        at += 4;
        BinaryPrimitives.WriteUInt32BigEndian(destination[at..], record.ShareDenominator);
        at += 4;
        BinaryPrimitives.WriteInt64BigEndian(destination[at..], record.StartUnixMs);
        at += 8;
        BinaryPrimitives.WriteInt64BigEndian(destination[at..], record.EndUnixMs);
        at += 8;
        at += WriteString(record.Site, destination[at..]);
        IReadOnlyList<string> uuids = record.DeviceUuids;
        BinaryPrimitives.WriteUInt16BigEndian(destination[at..], checked((ushort)uuids.Count));
        at += 2;
        for (int i = 0; i < uuids.Count; i++)
        {
            at += WriteString(uuids[i], destination[at..]);
        }

        destination[at++] = record.EnergyMwh.HasValue ? (byte)1 : (byte)0;
        BinaryPrimitives.WriteUInt64BigEndian(destination[at..], record.EnergyMwh ?? 0);
        at += 8;
        if (record.SmActiveBp is uint smActiveBp)
        {
            destination[at++] = SmActiveTag;
            BinaryPrimitives.WriteUInt32BigEndian(destination[at..], smActiveBp);
            at += 4;
        }

        return at;
    }

    /// <summary>
    /// The exact length of a record's canonical encoding, or -1 when the record cannot be encoded
    /// (a string over 65,535 bytes or more than 65,535 device UUIDs).
    /// </summary>
    public static int Length(in RecordFields record)
    {
        IReadOnlyList<string> uuids = record.DeviceUuids;
        if (uuids.Count > ushort.MaxValue)
        {
            return -1;
        }

        long length = FixedBytes + (record.SmActiveBp.HasValue ? SmActiveBytes : 0);
        foreach (string value in (ReadOnlySpan<string>)[record.ProviderId, record.StreamId, record.JobId, record.HolderCode, record.DeviceModel, record.Site])
        {
            int bytes = Encoding.UTF8.GetByteCount(value);
            if (bytes > ushort.MaxValue)
            {
                return -1;
            }

            length += bytes;
        }

        for (int i = 0; i < uuids.Count; i++)
        {
            int bytes = Encoding.UTF8.GetByteCount(uuids[i]);
            if (bytes > ushort.MaxValue)
            {
                return -1;
            }

            length += 2 + bytes;
        }

        return length > int.MaxValue / 2 ? -1 : (int)length;
    }

    /// <summary>
    /// Computes hash(n) from hash(n-1) and the record. <paramref name="scratch"/> must hold
    /// 32 bytes plus the record's canonical length; the previous hash is copied in front of the
    /// encoding so that SHA-256 runs once over one contiguous span.
    /// </summary>
    public static void ChainHash(ReadOnlySpan<byte> previousHash, in RecordFields record, Span<byte> scratch, Span<byte> hash)
    {
        previousHash.CopyTo(scratch);
        int length = Encode(record, scratch[HashBytes..]);
        Sha256Digest.Hash(scratch[..(HashBytes + length)], hash);
    }

    private static int WriteString(string value, Span<byte> destination)
    {
        int length = Encoding.UTF8.GetBytes(value, destination[2..]);
        if (length > ushort.MaxValue)
        {
            throw new ArgumentException("A canonical string is longer than 65535 bytes.", nameof(value));
        }

        BinaryPrimitives.WriteUInt16BigEndian(destination, (ushort)length);
        return 2 + length;
    }
}
