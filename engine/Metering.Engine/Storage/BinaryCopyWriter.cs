using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;

namespace Metering.Engine.Storage;

/// <summary>
/// Encodes rows in PostgreSQL's binary COPY format (the "PGCOPY" file format of the COPY
/// documentation) into one pooled buffer, which the caller sends in chunks over a raw binary COPY.
/// The ingest hot path uses it instead of Npgsql's binary importer, which resolves a converter
/// and binds a parameter for every field; here a field is a length prefix and a few bytes.
/// Not thread-safe. Dispose returns the buffer to the pool.
/// </summary>
internal sealed class BinaryCopyWriter : IDisposable
{
    /// <summary>The caller sends the buffer once it holds at least this many bytes.</summary>
    public const int ChunkBytes = 64 * 1024;

    // Room for one more row after the chunk threshold, so that growing is the exception.
    private const int InitialBytes = ChunkBytes + 16 * 1024;

    private const int TextTypeOid = 25;
    private const int NullLength = -1;

    // Milliseconds from the Unix epoch to PostgreSQL's timestamp epoch, 2000-01-01 UTC.
    private const long PostgresEpochUnixMs = 946_684_800_000;

    private byte[] _buffer;
    private int _length;

    public BinaryCopyWriter()
    {
        _buffer = ArrayPool<byte>.Shared.Rent(InitialBytes);
    }

    /// <summary>The bytes written since the last <see cref="Clear"/>.</summary>
    public ReadOnlyMemory<byte> Written => _buffer.AsMemory(0, _length);

    public int Length => _length;

    public void Clear() => _length = 0;

    /// <summary>The 11-byte signature, the flags word and an empty header extension.</summary>
    public void WriteHeader()
    {
        ReadOnlySpan<byte> signature = [(byte)'P', (byte)'G', (byte)'C', (byte)'O', (byte)'P', (byte)'Y', (byte)'\n', 0xFF, (byte)'\r', (byte)'\n', 0];
        Span<byte> span = Reserve(signature.Length + 8);
        signature.CopyTo(span);
        BinaryPrimitives.WriteInt32BigEndian(span[signature.Length..], 0);
        BinaryPrimitives.WriteInt32BigEndian(span[(signature.Length + 4)..], 0);
        _length += signature.Length + 8;
    }

    /// <summary>The end-of-data marker: a field count of -1.</summary>
    public void WriteTrailer() => WriteInt16(-1);

    public void StartRow(short fieldCount) => WriteInt16(fieldCount);

    public void WriteNull() => WriteInt32(NullLength);

    public void WriteInt32Field(int value)
    {
        Span<byte> span = Reserve(8);
        BinaryPrimitives.WriteInt32BigEndian(span, 4);
        BinaryPrimitives.WriteInt32BigEndian(span[4..], value);
        _length += 8;
    }

    public void WriteInt64Field(long value)
    {
        Span<byte> span = Reserve(12);
        BinaryPrimitives.WriteInt32BigEndian(span, 8);
        BinaryPrimitives.WriteInt64BigEndian(span[4..], value);
        _length += 12;
    }

    /// <summary>A timestamptz: microseconds since 2000-01-01 UTC.</summary>
    public void WriteTimestampField(long unixMs) => WriteInt64Field((unixMs - PostgresEpochUnixMs) * 1_000);

    /// <summary>A text value as UTF-8, the client encoding Npgsql sets on every connection.</summary>
    public void WriteTextField(string value)
    {
        Span<byte> span = Reserve(4 + Encoding.UTF8.GetMaxByteCount(value.Length));
        int length = Encoding.UTF8.GetBytes(value, span[4..]);
        BinaryPrimitives.WriteInt32BigEndian(span, length);
        _length += 4 + length;
    }

    public void WriteByteaField(ReadOnlySpan<byte> value)
    {
        Span<byte> span = Reserve(4 + value.Length);
        BinaryPrimitives.WriteInt32BigEndian(span, value.Length);
        value.CopyTo(span[4..]);
        _length += 4 + value.Length;
    }

    /// <summary>A one-dimensional text[] without nulls, lower bound 1.</summary>
    public void WriteTextArrayField(IReadOnlyList<string> values)
    {
        const int ArrayHeaderBytes = 5 * 4;
        Span<byte> span = Reserve(4 + ArrayHeaderBytes);
        int fieldStart = _length;
        BinaryPrimitives.WriteInt32BigEndian(span[4..], 1);               // dimensions
        BinaryPrimitives.WriteInt32BigEndian(span[8..], 0);               // no null elements
        BinaryPrimitives.WriteInt32BigEndian(span[12..], TextTypeOid);    // element type
        BinaryPrimitives.WriteInt32BigEndian(span[16..], values.Count);   // length of the dimension
        BinaryPrimitives.WriteInt32BigEndian(span[20..], 1);              // its lower bound
        _length += 4 + ArrayHeaderBytes;
        for (int i = 0; i < values.Count; i++)
        {
            WriteTextField(values[i]);
        }

        // The field's length prefix is known only now; the buffer may have moved, so index it afresh.
        BinaryPrimitives.WriteInt32BigEndian(_buffer.AsSpan(fieldStart), _length - fieldStart - 4);
    }

    public void Dispose()
    {
        byte[] buffer = _buffer;
        _buffer = [];
        ArrayPool<byte>.Shared.Return(buffer);
    }

    private void WriteInt16(short value)
    {
        BinaryPrimitives.WriteInt16BigEndian(Reserve(2), value);
        _length += 2;
    }

    private void WriteInt32(int value)
    {
        BinaryPrimitives.WriteInt32BigEndian(Reserve(4), value);
        _length += 4;
    }

    /// <summary>At least <paramref name="bytes"/> of free space at the end of what is written; the caller advances the length.</summary>
    private Span<byte> Reserve(int bytes)
    {
        Debug.Assert(bytes >= 0);
        if (_buffer.Length - _length < bytes)
        {
            Grow(bytes);
        }

        return _buffer.AsSpan(_length);
    }

    private void Grow(int bytes)
    {
        byte[] larger = ArrayPool<byte>.Shared.Rent(checked(Math.Max(_buffer.Length * 2, _length + bytes)));
        _buffer.AsSpan(0, _length).CopyTo(larger);
        ArrayPool<byte>.Shared.Return(_buffer);
        _buffer = larger;
    }
}
