using System.Buffers.Binary;
using System.Diagnostics;

namespace Metering.Engine.Storage;

/// <summary>
/// Parses rows of PostgreSQL's binary COPY format (the "PGCOPY" file format of the COPY
/// documentation) from a stream, such as Npgsql's raw binary COPY of a <c>COPY (SELECT …) TO
/// STDOUT (FORMAT BINARY)</c>, into one large reused buffer, and exposes each field of the
/// current row as a slice of it: integers big-endian, text as UTF-8, timestamptz as microseconds
/// since 2000-01-01, bytea as its bytes. A reader of millions of rows then allocates nothing per
/// row and pays no per-field converter, which Npgsql's data reader and binary exporter do.
/// The caller's fixed column list is checked on every row. Not thread-safe.
/// </summary>
internal sealed class BinaryCopyReader
{
    /// <summary>The buffer the rows are read into by default: many rows per refill.</summary>
    public const int BufferBytes = 1024 * 1024;

    /// <summary>Largest buffer a reader may ask for.</summary>
    public const int BufferBytesMax = 64 * 1024 * 1024;

    private const int HeaderBytes = 11 + 4 + 4;

    private readonly Stream _stream;
    private readonly int[] _fieldStart;
    private readonly int[] _fieldLength;
    private readonly byte[] _buffer;
    private int _start;
    private int _end;
    private bool _streamEnded;
    private bool _headerRead;
    private bool _trailerRead;

    /// <param name="bufferBytes">The buffer's size; a row may take half of it. A reader whose rows may be long asks for more than the default.</param>
    public BinaryCopyReader(Stream stream, int fieldCount, int bufferBytes = BufferBytes)
        : this(stream, fieldCount, GC.AllocateUninitializedArray<byte>(CheckedSize(bufferBytes)))
    {
    }

    /// <summary>
    /// A reader that parses into the caller's <paramref name="buffer"/>, which it owns until the
    /// read ends: a caller that reads one COPY after another on a connection hands each reader the
    /// same large buffer instead of touching fresh memory for every statement.
    /// </summary>
    public BinaryCopyReader(Stream stream, int fieldCount, byte[] buffer)
    {
        Debug.Assert(fieldCount is > 0 and < 1600);
        CheckedSize(buffer.Length);
        _stream = stream;
        _buffer = buffer;
        _fieldStart = new int[fieldCount];
        _fieldLength = new int[fieldCount];
    }

    private static int CheckedSize(int bufferBytes)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(bufferBytes, 64 * 1024);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(bufferBytes, BufferBytesMax);
        return bufferBytes;
    }

    /// <summary>The longest row the reader accepts, half its buffer; a longer one is refused, not accommodated.</summary>
    public int RowBytesMax => _buffer.Length / 2;

    /// <summary>Rows read so far.</summary>
    public long Rows { get; private set; }

    /// <summary>
    /// Moves to the next row; false after the trailer. The fields of the row stay valid until the
    /// next call. Refills the buffer only when it does not hold a whole row.
    /// </summary>
    public async ValueTask<bool> ReadAsync(CancellationToken cancellationToken)
    {
        if (!_headerRead)
        {
            await EnsureAsync(HeaderBytes, cancellationToken);
            ReadHeader();
        }

        if (_trailerRead)
        {
            return false;
        }

        while (true)
        {
            int length = TakeRow();
            if (length == 0)
            {
                // The trailer: a field count of -1, then the end of the stream.
                _start += 2;
                _trailerRead = true;
                return false;
            }

            if (length > 0)
            {
                Rows++;
                return true;
            }

            await EnsureAsync(_end - _start + 1, cancellationToken);
        }
    }

    /// <summary>Whether field <paramref name="index"/> of the current row is NULL.</summary>
    public bool IsNull(int index) => _fieldLength[index] < 0;

    /// <summary>The field's bytes; empty for NULL.</summary>
    public ReadOnlySpan<byte> Field(int index) =>
        _fieldLength[index] <= 0 ? default : _buffer.AsSpan(_fieldStart[index], _fieldLength[index]);

    public long Int64(int index) => _fieldLength[index] == 8
        ? BinaryPrimitives.ReadInt64BigEndian(_buffer.AsSpan(_fieldStart[index], 8))
        : throw new InvalidDataException($"Field {index + 1} of row {Rows} is {_fieldLength[index]} bytes, not a bigint or timestamptz.");

    public int Int32(int index) => _fieldLength[index] == 4
        ? BinaryPrimitives.ReadInt32BigEndian(_buffer.AsSpan(_fieldStart[index], 4))
        : throw new InvalidDataException($"Field {index + 1} of row {Rows} is {_fieldLength[index]} bytes, not an integer.");

    private void ReadHeader()
    {
        ReadOnlySpan<byte> signature = [(byte)'P', (byte)'G', (byte)'C', (byte)'O', (byte)'P', (byte)'Y', (byte)'\n', 0xFF, (byte)'\r', (byte)'\n', 0];
        ReadOnlySpan<byte> header = _buffer.AsSpan(_start, HeaderBytes);
        if (!header[..signature.Length].SequenceEqual(signature))
        {
            throw new InvalidDataException("The COPY stream does not start with the binary COPY signature.");
        }

        int extension = BinaryPrimitives.ReadInt32BigEndian(header[15..]);
        if (extension != 0)
        {
            throw new InvalidDataException($"The COPY stream has a header extension of {extension} bytes, which this reader does not know.");
        }

        _start += HeaderBytes;
        _headerRead = true;
    }

    /// <summary>
    /// Takes the row at the start of the buffer in one pass over its field lengths: records where
    /// each field lies, moves past the row and returns its byte length; 0 for the trailer (not
    /// taken); -1 when the buffer does not hold the whole row yet (nothing taken, and the fields
    /// of the row before are no longer valid).
    /// </summary>
    private int TakeRow()
    {
        ReadOnlySpan<byte> row = _buffer.AsSpan(_start, _end - _start);
        if (row.Length < 2)
        {
            return -1;
        }

        short fields = BinaryPrimitives.ReadInt16BigEndian(row);
        if (fields == -1)
        {
            return 0;
        }

        int[] starts = _fieldStart;
        int[] lengths = _fieldLength;
        if (fields != starts.Length)
        {
            throw new InvalidDataException($"Row {Rows + 1} of the COPY stream has {fields} fields; {starts.Length} were expected.");
        }

        int rowBytesMax = RowBytesMax;
        int at = 2;
        for (int i = 0; i < starts.Length; i++)
        {
            if (row.Length < at + 4)
            {
                return -1;
            }

            int length = BinaryPrimitives.ReadInt32BigEndian(row[at..]);
            if (length < -1 || length > rowBytesMax)
            {
                throw new InvalidDataException($"Field {i + 1} of row {Rows + 1} of the COPY stream claims {length} bytes; a row is at most {rowBytesMax} bytes.");
            }

            at += 4;
            starts[i] = _start + at;
            lengths[i] = length;
            at += Math.Max(length, 0);
            if (at > rowBytesMax)
            {
                throw new InvalidDataException($"Row {Rows + 1} of the COPY stream is longer than {rowBytesMax} bytes.");
            }
        }

        if (row.Length < at)
        {
            return -1;
        }

        _start += at;
        return at;
    }

    /// <summary>Reads until the buffer holds at least <paramref name="bytes"/> unread bytes, moving the unread tail to the front first.</summary>
    private async ValueTask EnsureAsync(int bytes, CancellationToken cancellationToken)
    {
        Debug.Assert(bytes <= _buffer.Length);
        if (_start > 0)
        {
            _buffer.AsSpan(_start, _end - _start).CopyTo(_buffer);
            _end -= _start;
            _start = 0;
        }

        // Npgsql's raw COPY stream hands over at most one CopyData message (one row) per read, so
        // the buffer is filled most of the way before the rows in it are parsed.
        while (_end < bytes || (_end < _buffer.Length - RowBytesMax && !_streamEnded))
        {
            if (_streamEnded)
            {
                throw new InvalidDataException($"The COPY stream ended inside row {Rows + 1}, before its trailer.");
            }

            int read = await _stream.ReadAsync(_buffer.AsMemory(_end), cancellationToken);
            if (read == 0)
            {
                _streamEnded = true;
                continue;
            }

            _end += read;
        }
    }
}
