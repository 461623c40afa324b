using System.Buffers.Binary;
using System.Diagnostics;

namespace Metering.Engine.Audit;

/// <summary>
/// Reads rows of PostgreSQL's binary COPY format (COPY ... TO STDOUT (FORMAT BINARY)) from a
/// stream into one reused buffer and exposes each field as a slice of it, so that a reader of
/// millions of rows allocates nothing per row. The audit paths use it instead of a data reader,
/// which materialises every text field as a string and every bytea as an array.
/// Not thread-safe; one reader per COPY.
/// </summary>
internal sealed class CopyRowReader
{
    /// <summary>The buffer starts here and is refilled in reads of up to this size.</summary>
    public const int BufferBytesInitial = 1024 * 1024;

    /// <summary>The longest row the reader accepts; a longer one is refused, not accommodated.</summary>
    public const int RowBytesMax = 16 * 1024 * 1024;

    private static ReadOnlySpan<byte> Signature => [(byte)'P', (byte)'G', (byte)'C', (byte)'O', (byte)'P', (byte)'Y', (byte)'\n', 0xFF, (byte)'\r', (byte)'\n', 0];

    private readonly Stream _source;
    private readonly int _fieldCount;
    private readonly int[] _fieldStart;
    private readonly int[] _fieldLength;
    private byte[] _buffer = new byte[BufferBytesInitial];
    private int _start;
    private int _end;
    private bool _sourceEnded;
    private bool _headerRead;

    public CopyRowReader(Stream source, int fieldCount)
    {
        Debug.Assert(fieldCount is > 0 and < 1600);
        _source = source;
        _fieldCount = fieldCount;
        _fieldStart = new int[fieldCount];
        _fieldLength = new int[fieldCount];
    }

    /// <summary>Bytes of COPY data consumed so far (rows and header).</summary>
    public long BytesRead { get; private set; }

    /// <summary>
    /// Moves to the next row; false at the end-of-data marker. The fields of the row stay valid
    /// until the next call.
    /// </summary>
    public async ValueTask<bool> ReadAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            int consumed = _headerRead ? ParseRow(_buffer.AsSpan(_start, _end - _start)) : ParseHeader(_buffer.AsSpan(_start, _end - _start));
            if (consumed > 0)
            {
                BytesRead += consumed;
                if (!_headerRead)
                {
                    _headerRead = true;
                    _start += consumed;
                    continue;
                }

                // Field offsets were taken relative to the slice; make them absolute.
                for (int i = 0; i < _fieldCount; i++)
                {
                    _fieldStart[i] += _start;
                }

                _start += consumed;
                return true;
            }

            if (consumed < 0)
            {
                // The trailer: a field count of -1.
                BytesRead += 2;
                _start += 2;
                return false;
            }

            if (!await FillAsync(cancellationToken))
            {
                throw new InvalidDataException($"The COPY data ended inside a row after {BytesRead} bytes.");
            }
        }
    }

    /// <summary>Whether field <paramref name="index"/> of the current row is NULL.</summary>
    public bool IsNull(int index) => _fieldLength[index] < 0;

    public ReadOnlySpan<byte> Field(int index) =>
        _fieldLength[index] < 0 ? default : _buffer.AsSpan(_fieldStart[index], _fieldLength[index]);

    public int FieldLength(int index) => _fieldLength[index];

    public long Int64(int index) => BinaryPrimitives.ReadInt64BigEndian(Field(index));

    public int Int32(int index) => BinaryPrimitives.ReadInt32BigEndian(Field(index));

    /// <summary>Parses the header; 0 when more bytes are needed.</summary>
    private static int ParseHeader(ReadOnlySpan<byte> data)
    {
        int fixedBytes = Signature.Length + 8;
        if (data.Length < fixedBytes)
        {
            return 0;
        }

        if (!data[..Signature.Length].SequenceEqual(Signature))
        {
            throw new InvalidDataException("The COPY data does not start with the binary COPY signature.");
        }

        int extension = BinaryPrimitives.ReadInt32BigEndian(data[(Signature.Length + 4)..]);
        if (extension < 0 || extension > 1024 * 1024)
        {
            throw new InvalidDataException($"The binary COPY header extension length {extension} is out of range.");
        }

        return data.Length < fixedBytes + extension ? 0 : fixedBytes + extension;
    }

    /// <summary>Parses one row; its byte length, 0 when more bytes are needed, -1 at the trailer.</summary>
    private int ParseRow(ReadOnlySpan<byte> data)
    {
        if (data.Length < 2)
        {
            return 0;
        }

        short fields = BinaryPrimitives.ReadInt16BigEndian(data);
        if (fields == -1)
        {
            return -1;
        }

        if (fields != _fieldCount)
        {
            throw new InvalidDataException($"A COPY row has {fields} fields; {_fieldCount} were selected.");
        }

        int at = 2;
        for (int i = 0; i < _fieldCount; i++)
        {
            if (data.Length - at < 4)
            {
                return 0;
            }

            int length = BinaryPrimitives.ReadInt32BigEndian(data[at..]);
            at += 4;
            if (length < -1 || length > RowBytesMax)
            {
                throw new InvalidDataException($"A COPY field claims {length} bytes.");
            }

            _fieldStart[i] = at;
            _fieldLength[i] = length;
            if (length > 0)
            {
                if (data.Length - at < length)
                {
                    return 0;
                }

                at += length;
            }
        }

        return at;
    }

    /// <summary>Keeps the unread bytes, makes room (growing up to the row limit) and reads more; false at the end of the source.</summary>
    private async ValueTask<bool> FillAsync(CancellationToken cancellationToken)
    {
        if (_sourceEnded)
        {
            return false;
        }

        int unread = _end - _start;
        if (unread == _buffer.Length)
        {
            if (_buffer.Length >= RowBytesMax + 2)
            {
                throw new InvalidDataException($"A COPY row is longer than {RowBytesMax} bytes.");
            }

            var larger = new byte[Math.Min(_buffer.Length * 2, RowBytesMax + 2)];
            _buffer.AsSpan(_start, unread).CopyTo(larger);
            _buffer = larger;
        }
        else if (_start > 0)
        {
            _buffer.AsSpan(_start, unread).CopyTo(_buffer);
        }

        _start = 0;
        _end = unread;
        int read = await _source.ReadAsync(_buffer.AsMemory(_end), cancellationToken);
        if (read == 0)
        {
            _sourceEnded = true;
            return false;
        }

        _end += read;
        return true;
    }
}
