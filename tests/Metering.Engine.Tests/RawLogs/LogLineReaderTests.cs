using System.IO.Pipelines;
using System.Text;
using Metering.Engine.RawLogs;

namespace Metering.Engine.Tests.RawLogs;

public sealed class LogLineReaderTests
{
    [Fact]
    public async Task Lines_are_the_same_wherever_the_input_is_split()
    {
        byte[] input = Encoding.UTF8.GetBytes("alpha\r\nbeta\n\ngamma delta\nε-utf8\nlast-without-newline");
        var expected = await ReadAsync(input, [input.Length], endOfFile: true);
        Assert.Equal(["1:alpha@7", "2:beta@12", "3:@13", "4:gamma delta@25", "5:ε-utf8@33", "6:last-without-newline@53"], expected.Lines);

        for (int split = 0; split <= input.Length; split++)
        {
            var actual = await ReadAsync(input, [split, input.Length - split], endOfFile: true);
            Assert.Equal(expected.Lines, actual.Lines);
        }
    }

    [Fact]
    public async Task Lines_spanning_many_buffer_segments_are_joined()
    {
        // Tiny segments, all written before the reader starts, so every line crosses segment
        // boundaries inside one buffer and takes the copying path.
        byte[] input = Encoding.UTF8.GetBytes("first line\r\nsecond, a little longer\nthird\n");
        var pipe = new Pipe(new PipeOptions(minimumSegmentSize: 4));
        foreach (byte b in input)
        {
            await pipe.Writer.WriteAsync(new[] { b });
        }

        await pipe.Writer.CompleteAsync();
        var sink = new CollectingSink();
        await new LogLineReader(64).ReadAsync(pipe.Reader, sink, 0, 0, () => true, CancellationToken.None);
        Assert.Equal(["1:first line@12", "2:second, a little longer@36", "3:third@42"], sink.Lines);
    }

    [Fact]
    public async Task Single_byte_chunks_give_the_same_lines()
    {
        byte[] input = Encoding.UTF8.GetBytes("one\ntwo\r\nthree\n");
        var actual = await ReadAsync(input, Enumerable.Repeat(1, input.Length).ToArray(), endOfFile: true);
        Assert.Equal(["1:one@4", "2:two@9", "3:three@15"], actual.Lines);
    }

    [Fact]
    public async Task Trailing_bytes_of_an_interrupted_input_are_left_for_the_resumption()
    {
        byte[] input = Encoding.UTF8.GetBytes("one\ntwo\nthr");
        var actual = await ReadAsync(input, [input.Length], endOfFile: false);
        Assert.Equal(["1:one@4", "2:two@8"], actual.Lines);
    }

    [Fact]
    public async Task A_line_over_the_limit_is_reported_and_skipped_to_its_end()
    {
        string longLine = new('x', 100);
        byte[] input = Encoding.UTF8.GetBytes($"short\n{longLine}\nafter\n");
        foreach (int split in new[] { 3, 10, 50, 104, input.Length })
        {
            var actual = await ReadAsync(input, [split, input.Length - split], endOfFile: true, lineBytesMax: 32);
            Assert.Equal(["1:short@6", "3:after@113"], actual.Lines);
            Assert.Equal(["2:100@107"], actual.TooLong);
        }
    }

    [Fact]
    public async Task Offsets_and_line_numbers_continue_from_a_resumed_position()
    {
        byte[] input = Encoding.UTF8.GetBytes("c\nd\n");
        var sink = new CollectingSink();
        var pipe = new Pipe();
        await pipe.Writer.WriteAsync(input);
        await pipe.Writer.CompleteAsync();
        await new LogLineReader(64).ReadAsync(pipe.Reader, sink, startOffset: 100, startLine: 7, () => true, CancellationToken.None);
        Assert.Equal(["8:c@102", "9:d@104"], sink.Lines);
    }

    [Fact]
    public async Task A_full_sink_is_flushed_before_it_takes_more_lines()
    {
        byte[] input = Encoding.UTF8.GetBytes("1\n2\n3\n4\n5\n");
        var sink = new CollectingSink { Capacity = 2 };
        await ReadIntoAsync(sink, input, [input.Length], endOfFile: true, lineBytesMax: 64);
        Assert.Equal([2, 2, 1], sink.FlushedCounts);
    }

    private static async Task<CollectingSink> ReadAsync(byte[] input, int[] chunks, bool endOfFile, int lineBytesMax = 1024)
    {
        var sink = new CollectingSink();
        await ReadIntoAsync(sink, input, chunks, endOfFile, lineBytesMax);
        return sink;
    }

    private static async Task ReadIntoAsync(CollectingSink sink, byte[] input, int[] chunks, bool endOfFile, int lineBytesMax)
    {
        var pipe = new Pipe();
        Task reading = new LogLineReader(lineBytesMax).ReadAsync(pipe.Reader, sink, 0, 0, () => endOfFile, CancellationToken.None);
        int at = 0;
        foreach (int length in chunks)
        {
            await pipe.Writer.WriteAsync(input.AsMemory(at, length));
            at += length;
        }

        await pipe.Writer.CompleteAsync();
        await reading;
    }

    private sealed class CollectingSink : ILogLineSink
    {
        private int _pending;

        public List<string> Lines { get; } = [];
        public List<string> TooLong { get; } = [];
        public List<int> FlushedCounts { get; } = [];
        public int Capacity { get; init; } = int.MaxValue;

        public bool IsFull => _pending >= Capacity;

        public void OnLine(ReadOnlySpan<byte> line, long lineNumber, long endOffset)
        {
            Lines.Add($"{lineNumber}:{Encoding.UTF8.GetString(line)}@{endOffset}");
            _pending++;
        }

        public void OnLineTooLong(long lineNumber, long endOffset, long length) => TooLong.Add($"{lineNumber}:{length}@{endOffset}");

        public ValueTask FlushAsync(CancellationToken cancellationToken)
        {
            if (_pending > 0)
            {
                FlushedCounts.Add(_pending);
            }

            _pending = 0;
            return ValueTask.CompletedTask;
        }
    }
}
