using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using Npgsql;

namespace Metering.Engine.Audit;

/// <summary>
/// Reads the rows of an Npgsql data reader into one reused buffer and exposes each field as a
/// slice of it in PostgreSQL's binary representation: integers big-endian, text as UTF-8,
/// timestamptz as microseconds since 2000-01-01, bytea as its bytes. The audit paths hash those
/// bytes; going through a buffer of their own keeps a reader of millions of rows from
/// allocating a string per text field and an array per hash (text is read with GetChars into a
/// reused char buffer, bytea with GetBytes). A text[] field is read as strings; only
/// <see cref="Strings"/> gives it. Not thread-safe; one per data reader.
/// </summary>
internal sealed class RowReader
{
    /// <summary>The longest row the reader accepts; a longer one is refused, not accommodated.</summary>
    public const int RowBytesMax = 16 * 1024 * 1024;

    private enum Kind
    {
        Int64,
        Int32,
        Text,
        Timestamp,
        Bytes,
        TextArray,
    }

    private static readonly long PostgresEpochTicks = new DateTime(2000, 1, 1, 0, 0, 0, DateTimeKind.Utc).Ticks;

    private readonly NpgsqlDataReader _reader;
    private readonly Kind[] _kinds;
    private readonly int[] _fieldStart;
    private readonly int[] _fieldLength;
    private readonly string?[]?[] _strings;
    private byte[] _buffer = new byte[64 * 1024];
    private char[] _chars = new char[4 * 1024];

    public RowReader(NpgsqlDataReader reader, int fieldCount)
    {
        Debug.Assert(fieldCount is > 0 and < 1600);
        if (reader.FieldCount != fieldCount)
        {
            throw new InvalidDataException($"The query returns {reader.FieldCount} columns; {fieldCount} were expected.");
        }

        _reader = reader;
        _kinds = new Kind[fieldCount];
        _fieldStart = new int[fieldCount];
        _fieldLength = new int[fieldCount];
        _strings = new string?[]?[fieldCount];
        for (int i = 0; i < fieldCount; i++)
        {
            _kinds[i] = reader.GetDataTypeName(i) switch
            {
                "bigint" => Kind.Int64,
                "integer" => Kind.Int32,
                "text" => Kind.Text,
                "timestamp with time zone" => Kind.Timestamp,
                "bytea" => Kind.Bytes,
                "text[]" => Kind.TextArray,
                string other => throw new InvalidDataException($"Column {i + 1} is of type {other}, which the row reader does not read."),
            };
        }
    }

    /// <summary>
    /// Moves to the next row; false at the end. The fields of the row stay valid until the next call.
    /// </summary>
    public async ValueTask<bool> ReadAsync(CancellationToken cancellationToken)
    {
        if (!await _reader.ReadAsync(cancellationToken))
        {
            return false;
        }

        int at = 0;
        for (int i = 0; i < _kinds.Length; i++)
        {
            _fieldStart[i] = at;
            _strings[i] = null;
            if (_reader.IsDBNull(i))
            {
                _fieldLength[i] = -1;
                continue;
            }

            int length;
            switch (_kinds[i])
            {
                case Kind.Int64:
                    Reserve(at, 8);
                    BinaryPrimitives.WriteInt64BigEndian(_buffer.AsSpan(at), _reader.GetInt64(i));
                    length = 8;
                    at += 8;
                    break;
                case Kind.Int32:
                    Reserve(at, 4);
                    BinaryPrimitives.WriteInt32BigEndian(_buffer.AsSpan(at), _reader.GetInt32(i));
                    length = 4;
                    at += 4;
                    break;
                case Kind.Timestamp:
                    Reserve(at, 8);
                    BinaryPrimitives.WriteInt64BigEndian(_buffer.AsSpan(at), Microseconds(_reader.GetFieldValue<DateTime>(i)));
                    length = 8;
                    at += 8;
                    break;
                case Kind.Text:
                    length = PutText(ref at, i);
                    break;
                case Kind.Bytes:
                    length = PutBytes(ref at, i);
                    break;
                default:
                    length = PutStrings(i);
                    break;
            }

            _fieldLength[i] = length;
        }

        return true;
    }

    /// <summary>Whether field <paramref name="index"/> of the current row is NULL.</summary>
    public bool IsNull(int index) => _fieldLength[index] < 0;

    /// <summary>The field's bytes; empty for NULL and for a text[] field.</summary>
    public ReadOnlySpan<byte> Field(int index) =>
        _fieldLength[index] <= 0 ? default : _buffer.AsSpan(_fieldStart[index], _fieldLength[index]);

    /// <summary>The field's length in bytes, -1 for NULL; for a text[] field, its element count.</summary>
    public int FieldLength(int index) => _fieldLength[index];

    public long Int64(int index) => BinaryPrimitives.ReadInt64BigEndian(Field(index));

    /// <summary>The elements of a text[] field; null when the field is NULL.</summary>
    public string?[]? Strings(int index) => _strings[index];

    private int PutText(ref int at, int index)
    {
        long chars = _reader.GetChars(index, 0, null, 0, 0);
        if (chars > RowBytesMax)
        {
            throw new InvalidDataException($"A text field of {chars} characters is longer than a row may be ({RowBytesMax} bytes).");
        }

        if (chars > _chars.Length)
        {
            _chars = new char[Math.Max((int)chars, _chars.Length * 2)];
        }

        int read = (int)_reader.GetChars(index, 0, _chars, 0, (int)chars);
        int bytes = Encoding.UTF8.GetByteCount(_chars.AsSpan(0, read));
        Reserve(at, bytes);
        int written = Encoding.UTF8.GetBytes(_chars.AsSpan(0, read), _buffer.AsSpan(at));
        at += written;
        return written;
    }

    private int PutBytes(ref int at, int index)
    {
        long length = _reader.GetBytes(index, 0, null, 0, 0);
        if (length > RowBytesMax)
        {
            throw new InvalidDataException($"A bytea field of {length} bytes is longer than a row may be ({RowBytesMax} bytes).");
        }

        Reserve(at, (int)length);
        int read = length == 0 ? 0 : (int)_reader.GetBytes(index, 0, _buffer, at, (int)length);
        at += read;
        return read;
    }

    private int PutStrings(int index)
    {
        string?[] values = _reader.GetFieldValue<string?[]>(index);
        _strings[index] = values;
        return values.Length;
    }

    /// <summary>Makes room for <paramref name="length"/> more bytes at <paramref name="at"/>, up to the row limit.</summary>
    private void Reserve(int at, int length)
    {
        if ((long)at + length > RowBytesMax)
        {
            throw new InvalidDataException($"A row is longer than {RowBytesMax} bytes.");
        }

        if (at + length > _buffer.Length)
        {
            var larger = new byte[Math.Min(Math.Max(_buffer.Length * 2, at + length), RowBytesMax)];
            _buffer.AsSpan(0, at).CopyTo(larger);
            _buffer = larger;
        }
    }

    private static long Microseconds(DateTime instant) => (instant.ToUniversalTime().Ticks - PostgresEpochTicks) / 10;
}
