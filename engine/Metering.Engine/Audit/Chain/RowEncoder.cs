using System.Buffers.Binary;
using System.Text;
using Metering.Engine.Ingest;

namespace Metering.Engine.Audit;

/// <summary>
/// Builds the canonical encoding of a stored row behind a 32-byte gap for the previous hash.
/// The provider and stream prefix is encoded once.
/// </summary>
internal sealed class RowEncoder
{
    private const long PostgresEpochUnixMs = 946_684_800_000;

    private readonly byte[] _prefix;

    public RowEncoder(string providerId, string streamId)
    {
        var prefix = new byte[1 + 2 + Encoding.UTF8.GetByteCount(providerId) + 2 + Encoding.UTF8.GetByteCount(streamId)];
        prefix[0] = CanonicalEncoding.FormatVersion;
        int at = 1;
        at += WriteString(Encoding.UTF8.GetBytes(providerId), prefix.AsSpan(at));
        WriteString(Encoding.UTF8.GetBytes(streamId), prefix.AsSpan(at));
        _prefix = prefix;
    }

    /// <summary>The previous hash, then the encoding.</summary>
    public byte[] Scratch { get; } = new byte[CanonicalEncoding.HashBytes + ChainVerifier.CanonicalBytesMax];

    /// <summary>The encoding's length, or -1 with the reason when the row cannot be encoded.</summary>
    public int Encode(RowReader row, out string? notEncodable)
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

        if (row.FieldLength(12) != CanonicalEncoding.HashBytes)
        {
            notEncodable = $"the stored chain hash is {row.FieldLength(12)} bytes, not 32";
            return -1;
        }

        if (!row.IsNull(13) && row.FieldLength(13) != 4)
        {
            notEncodable = $"sm_active_bp is {row.FieldLength(13)} bytes, not a 4-byte integer";
            return -1;
        }

        Span<byte> output = Scratch.AsSpan(CanonicalEncoding.HashBytes);
        int fixedBytes = _prefix.Length + 8 + 4 * 3 + 8 * 2 + 2 + 1 + 8 + 2 * 4 + (row.IsNull(13) ? 0 : CanonicalEncoding.SmActiveBytes);
        long length = fixedBytes + (long)row.FieldLength(1) + row.FieldLength(2) + row.FieldLength(3) + row.FieldLength(9) + UuidsBytes(row.Strings(10));
        if (length > ChainVerifier.CanonicalBytesMax)
        {
            notEncodable = $"the row's canonical encoding would exceed {ChainVerifier.CanonicalBytesMax} bytes";
            return -1;
        }

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

        if (!TryString(row.Field(9), output, ref at, "site", ref notEncodable) || !TryUuids(row, output, ref at, ref notEncodable))
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

    /// <summary>A one-dimensional text[] without NULL elements, as the u16 count and the strings.</summary>
    private static bool TryUuids(RowReader row, Span<byte> output, ref int at, ref string? notEncodable)
    {
        string?[]? uuids = row.Strings(10);
        if (uuids is null)
        {
            BinaryPrimitives.WriteUInt16BigEndian(output[at..], 0);
            at += 2;
            return true;
        }

        if (uuids.Length > ushort.MaxValue)
        {
            notEncodable = "device_uuids has more than 65535 elements";
            return false;
        }

        BinaryPrimitives.WriteUInt16BigEndian(output[at..], (ushort)uuids.Length);
        at += 2;
        for (int i = 0; i < uuids.Length; i++)
        {
            if (uuids[i] is not { } uuid)
            {
                notEncodable = $"device_uuids element {i + 1} is NULL";
                return false;
            }

            if (Encoding.UTF8.GetByteCount(uuid) > ushort.MaxValue)
            {
                notEncodable = $"a device UUID is {Encoding.UTF8.GetByteCount(uuid)} bytes; the canonical encoding holds at most 65535";
                return false;
            }

            BinaryPrimitives.WriteUInt16BigEndian(output[at..], (ushort)Encoding.UTF8.GetByteCount(uuid));
            at += 2 + Encoding.UTF8.GetBytes(uuid, output[(at + 2)..]);
        }

        return true;
    }

    /// <summary>Bytes the device UUIDs take in the encoding, past their count.</summary>
    private static long UuidsBytes(string?[]? uuids)
    {
        long bytes = 0;
        foreach (string? uuid in uuids ?? [])
        {
            bytes += 2 + (uuid is null ? 0 : Encoding.UTF8.GetByteCount(uuid));
        }

        return bytes;
    }

    private static int WriteString(ReadOnlySpan<byte> utf8, Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt16BigEndian(destination, (ushort)utf8.Length);
        utf8.CopyTo(destination[2..]);
        return 2 + utf8.Length;
    }
}
