using System.Buffers.Binary;
using System.Text;
using Metering.Engine.Ingest;
using Metering.Engine.Storage;

namespace Metering.Engine.Audit;

/// <summary>
/// Builds the canonical encoding of a stored row behind a 32-byte gap for the previous hash.
/// The provider and stream prefix is encoded once.
/// </summary>
internal sealed class RowEncoder
{
    private const long PostgresEpochUnixMs = 946_684_800_000;

    /// <summary>PostgreSQL's type oid of text, the element type a binary text[] names.</summary>
    private const uint TextTypeOid = 25;

    private readonly byte[] _prefix;

    public RowEncoder(string providerId, string streamId)
    {
        var prefix = new byte[1 + 2 + Encoding.UTF8.GetByteCount(providerId) + 2 + Encoding.UTF8.GetByteCount(streamId)];
        prefix[0] = CanonicalEncoding.FormatVersion;
        int at = 1;
        at += WriteString(Encoding.UTF8.GetBytes(providerId), prefix.AsSpan(at));
        WriteString(Encoding.UTF8.GetBytes(streamId), prefix.AsSpan(at));
        _prefix = prefix;
        Scratch = new byte[CanonicalEncoding.HashBytes + prefix.Length + ChainRows.ReadBufferBytes / 2];
    }

    /// <summary>
    /// The previous hash, then the encoding. Past the provider and stream prefix, a row takes no
    /// more bytes in the encoding than in binary COPY (the stored hash alone, which the encoding
    /// leaves out, outweighs the fields that grow: a NULL energy, and the tag before a utilisation figure), so any row the reader
    /// accepts fits; its length is checked against <see cref="ChainVerifier.CanonicalBytesMax"/>
    /// once it is built.
    /// </summary>
    public byte[] Scratch { get; }

    /// <summary>The encoding's length, or -1 with the reason when the row cannot be encoded.</summary>
    public int Encode(BinaryCopyReader row, out string? notEncodable)
    {
        notEncodable = null;
        for (int i = 0; i < ChainRows.FieldCount; i++)
        {
            // device_uuids, energy_mwh and sm_active_bp may be NULL; nothing else may.
            if (row.IsNull(i) && i is not 10 and not 11 and not 13)
            {
                notEncodable = $"column {i + 1} of the row is NULL";
                return -1;
            }
        }

        if (row.Field(12).Length != CanonicalEncoding.HashBytes)
        {
            notEncodable = $"the stored chain hash is {row.Field(12).Length} bytes, not 32";
            return -1;
        }

        // The query's column types fix these widths; a row that differs was not read as asked.
        if (row.Field(0).Length != 8 || row.Field(4).Length != 4 || row.Field(5).Length != 4 || row.Field(6).Length != 4
            || row.Field(7).Length != 8 || row.Field(8).Length != 8 || (!row.IsNull(11) && row.Field(11).Length != 8)
            || (!row.IsNull(13) && row.Field(13).Length != 4))
        {
            throw new InvalidDataException("A row of the chain read has a field of an unexpected width; the query and the table disagree.");
        }

        Span<byte> output = Scratch.AsSpan(CanonicalEncoding.HashBytes);
        _prefix.CopyTo(output);
        int at = _prefix.Length;
        row.Field(0).CopyTo(output[at..]);
        at += 8;
        if (!TryString(row.Field(1), output, ref at, "job_id", ref notEncodable)
            || !TryString(row.Field(2), output, ref at, "holder_code", ref notEncodable)
            || !TryString(row.Field(3), output, ref at, "device_model", ref notEncodable))
        {
            return -1;
        }

        // device_count, share_numerator, share_denominator: int4 on disk, u32 in the encoding.
        row.Field(4).CopyTo(output[at..]);
        row.Field(5).CopyTo(output[(at + 4)..]);
        row.Field(6).CopyTo(output[(at + 8)..]);
        at += 12;
        if (!TryTime(row.Int64(7), output, ref at, "start_at", ref notEncodable) || !TryTime(row.Int64(8), output, ref at, "end_at", ref notEncodable))
        {
            return -1;
        }

        if (!TryString(row.Field(9), output, ref at, "site", ref notEncodable)
            || !TryUuids(row.IsNull(10), row.Field(10), output, ref at, ref notEncodable))
        {
            return -1;
        }

        if (row.IsNull(11))
        {
            output[at++] = 0;
            BinaryPrimitives.WriteUInt64BigEndian(output[at..], 0);
        }
        else
        {
            output[at++] = 1;
            row.Field(11).CopyTo(output[at..]);
        }

        at += 8;

        // Absent stays absent: a NULL writes nothing, so rows from before the column verify as
        // they always did. An int4 on disk is the u32 of the encoding; the column's check keeps it
        // at 0..10,000, and a tamperer who lifts the check still changes the bytes hashed.
        if (!row.IsNull(13))
        {
            output[at++] = CanonicalEncoding.SmActiveTag;
            row.Field(13).CopyTo(output[at..]);
            at += 4;
        }

        if (at > ChainVerifier.CanonicalBytesMax)
        {
            notEncodable = $"the row's canonical encoding would exceed {ChainVerifier.CanonicalBytesMax} bytes";
            return -1;
        }

        return at;
    }

    private static bool TryString(ReadOnlySpan<byte> value, Span<byte> output, ref int at, string column, ref string? notEncodable)
    {
        if (value.Length > ushort.MaxValue)
        {
            notEncodable = $"{column} is {value.Length} bytes; the canonical encoding holds at most 65535";
            return false;
        }

        at += WriteString(value, output[at..]);
        return true;
    }

    /// <summary>A timestamptz (microseconds since 2000-01-01) as Unix milliseconds; the chain covers whole milliseconds only.</summary>
    private static bool TryTime(long postgresMicroseconds, Span<byte> output, ref int at, string column, ref string? notEncodable)
    {
        if (postgresMicroseconds % 1_000 != 0)
        {
            notEncodable = $"{column} has a sub-millisecond part ({postgresMicroseconds % 1_000} µs); ingest stores whole milliseconds";
            return false;
        }

        BinaryPrimitives.WriteInt64BigEndian(output[at..], postgresMicroseconds / 1_000 + PostgresEpochUnixMs);
        at += 8;
        return true;
    }

    /// <summary>
    /// A text[] in PostgreSQL's binary array format (dimensions, a has-NULL flag, the element type,
    /// each dimension's length and lower bound, then each element's length and UTF-8 bytes) as the
    /// encoding's u16 count and strings. Only a one-dimensional array without NULL elements (or an
    /// empty one) is a list of device UUIDs.
    /// </summary>
    private static bool TryUuids(bool isNull, ReadOnlySpan<byte> array, Span<byte> output, ref int at, ref string? notEncodable)
    {
        if (isNull)
        {
            BinaryPrimitives.WriteUInt16BigEndian(output[at..], 0);
            at += 2;
            return true;
        }

        if (array.Length < 12)
        {
            throw new InvalidDataException("device_uuids is not a binary array; the query and the table disagree.");
        }

        int dimensions = BinaryPrimitives.ReadInt32BigEndian(array);
        if (BinaryPrimitives.ReadUInt32BigEndian(array[8..]) != TextTypeOid)
        {
            throw new InvalidDataException("device_uuids is not an array of text; the query and the table disagree.");
        }

        if (dimensions == 0)
        {
            BinaryPrimitives.WriteUInt16BigEndian(output[at..], 0);
            at += 2;
            return true;
        }

        if (dimensions != 1)
        {
            notEncodable = $"device_uuids has {dimensions} dimensions; the canonical encoding holds a list";
            return false;
        }

        if (array.Length < 20)
        {
            throw new InvalidDataException("device_uuids is a truncated binary array.");
        }

        int count = BinaryPrimitives.ReadInt32BigEndian(array[12..]);
        if (count > ushort.MaxValue)
        {
            notEncodable = "device_uuids has more than 65535 elements";
            return false;
        }

        BinaryPrimitives.WriteUInt16BigEndian(output[at..], (ushort)count);
        int write = at + 2;
        int read = 20;
        for (int i = 0; i < count; i++)
        {
            if (array.Length - read < 4)
            {
                throw new InvalidDataException("device_uuids is a truncated binary array.");
            }

            int length = BinaryPrimitives.ReadInt32BigEndian(array[read..]);
            read += 4;
            if (length < 0)
            {
                notEncodable = $"device_uuids element {i + 1} is NULL";
                return false;
            }

            if (length > ushort.MaxValue)
            {
                notEncodable = $"a device UUID is {length} bytes; the canonical encoding holds at most 65535";
                return false;
            }

            if (array.Length - read < length)
            {
                throw new InvalidDataException("device_uuids is a truncated binary array.");
            }

            write += WriteString(array.Slice(read, length), output[write..]);
            read += length;
        }

        if (read != array.Length)
        {
            throw new InvalidDataException("device_uuids has bytes past its last element.");
        }

        at = write;
        return true;
    }

    private static int WriteString(ReadOnlySpan<byte> utf8, Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt16BigEndian(destination, (ushort)utf8.Length);
        utf8.CopyTo(destination[2..]);
        return 2 + utf8.Length;
    }
}
