using System.Buffers;
using System.IO.Pipelines;

namespace Metering.Engine.RawLogs;

/// <summary>Receives the lines of a log, one at a time, from <see cref="LogLineReader"/>.</summary>
public interface ILogLineSink
{
    /// <summary>
    /// One line without its line ending (LF or CRLF). <paramref name="endOffset"/> is the byte
    /// offset just past the line's ending, relative to the start of the file.
    /// </summary>
    void OnLine(ReadOnlySpan<byte> line, long lineNumber, long endOffset);

    /// <summary>A line longer than the limit; its bytes were discarded.</summary>
    void OnLineTooLong(long lineNumber, long endOffset, long length);

    /// <summary>True when the sink wants <see cref="FlushAsync"/> before it takes more lines.</summary>
    bool IsFull { get; }

    /// <summary>Commits what the sink holds, or begins to (an upload commits one flush while it parses the next).</summary>
    ValueTask FlushAsync(CancellationToken cancellationToken);
}

/// <summary>
/// Splits a byte stream into lines with a <see cref="PipeReader"/>: no allocation per line. A line
/// that spans buffer segments is copied into one scratch buffer of the line limit; a longer line
/// is reported and skipped to its end. CRLF and a missing final newline are handled.
/// </summary>
public sealed class LogLineReader(int lineBytesMax)
{
    private readonly byte[] _scratch = new byte[lineBytesMax];

    /// <summary>
    /// Reads to the end of <paramref name="reader"/>; offsets count from <paramref name="startOffset"/>,
    /// line numbers from <paramref name="startLine"/> + 1. Bytes after the last newline form a final
    /// line only when <paramref name="reachedEndOfFile"/> says the input ended with the file; an
    /// interrupted upload leaves them for its resumption.
    /// </summary>
    public async Task ReadAsync(PipeReader reader, ILogLineSink sink, long startOffset, long startLine, Func<bool> reachedEndOfFile, CancellationToken cancellationToken)
    {
        long offset = startOffset;
        long lineNumber = startLine;
        long discarding = -1; // bytes of an over-long line skipped so far, or -1
        while (true)
        {
            ReadResult result = await reader.ReadAsync(cancellationToken);
            ReadOnlySequence<byte> buffer = result.Buffer;
            while (!sink.IsFull)
            {
                SequencePosition? newline = buffer.PositionOf((byte)'\n');
                if (newline is null)
                {
                    break;
                }

                ReadOnlySequence<byte> line = buffer.Slice(0, newline.Value);
                long consumed = line.Length + 1;
                offset += consumed;
                lineNumber++;
                if (discarding >= 0)
                {
                    sink.OnLineTooLong(lineNumber, offset, discarding + line.Length);
                    discarding = -1;
                }
                else
                {
                    Deliver(sink, line, lineNumber, offset);
                }

                buffer = buffer.Slice(buffer.GetPosition(1, newline.Value));
            }

            if (sink.IsFull)
            {
                reader.AdvanceTo(buffer.Start);
                await sink.FlushAsync(cancellationToken);
                continue;
            }

            if (discarding >= 0 || buffer.Length > _scratch.Length)
            {
                // Inside a line longer than the limit: drop what we have and keep looking for its end.
                discarding = Math.Max(discarding, 0) + buffer.Length;
                offset += buffer.Length;
                buffer = buffer.Slice(buffer.End);
            }

            if (result.IsCompleted)
            {
                if (discarding >= 0 && reachedEndOfFile())
                {
                    sink.OnLineTooLong(++lineNumber, offset, discarding);
                }
                else if (!buffer.IsEmpty && reachedEndOfFile())
                {
                    // The last line has no newline.
                    offset += buffer.Length;
                    Deliver(sink, buffer, ++lineNumber, offset);
                }

                reader.AdvanceTo(buffer.End);
                await sink.FlushAsync(cancellationToken);
                return;
            }

            reader.AdvanceTo(buffer.Start, buffer.End);
        }
    }

    private void Deliver(ILogLineSink sink, ReadOnlySequence<byte> line, long lineNumber, long endOffset)
    {
        if (line.Length > _scratch.Length)
        {
            sink.OnLineTooLong(lineNumber, endOffset, line.Length);
            return;
        }

        ReadOnlySpan<byte> span;
        if (line.IsSingleSegment)
        {
            span = line.FirstSpan;
        }
        else
        {
            line.CopyTo(_scratch);
            span = _scratch.AsSpan(0, (int)line.Length);
        }

        if (span.Length > 0 && span[^1] == (byte)'\r')
        {
            span = span[..^1];
        }

        sink.OnLine(span, lineNumber, endOffset);
    }
}
