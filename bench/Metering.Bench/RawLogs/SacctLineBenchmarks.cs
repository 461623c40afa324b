using System.Buffers;
using System.IO.Pipelines;
using System.Text;
using BenchmarkDotNet.Attributes;
using Metering.Engine.Catalog;
using Metering.Engine.RawLogs;
using Metering.Protocol.V1;
using Metering.Fixtures;

namespace Metering.Bench.RawLogs;

/// <summary>
/// Raw log parsing per line, without transport or database. <see cref="SplitAndTokenise"/> is the
/// part that must not allocate per line: PipeReader line splitting plus sacct field parsing and
/// checks. <see cref="SplitAndParseToRecords"/> adds the mapping lookups and the usage record
/// each metered line becomes (that record, and its job id string, are the allocation per line).
/// Not sealed: BenchmarkDotNet derives from benchmark classes.
/// </summary>
[MemoryDiagnoser]
public class SacctLineBenchmarks
{
    private const int Lines = 10_000;

    private ReadOnlySequence<byte> _log;
    private SacctParser _parser = null!;
    private LogLineReader _reader = null!;

    [GlobalSetup]
    public void Setup()
    {
        var text = new StringBuilder("JobID|Account|Partition|AllocTRES|Start|End|Elapsed|State\n");
        for (int job = 1; job <= Lines; job++)
        {
            int gpus = 1 << (job % 4);
            text.Append(System.Globalization.CultureInfo.InvariantCulture,
                $"{1_000_000 + job}|lab-vision|gpu-h100|billing={gpus * 8},cpu={gpus * 8},gres/gpu:h100={gpus},gres/gpu={gpus},mem=512G,node=1|2026-11-20T08:00:00|2026-11-20T10:30:00|02:30:00|COMPLETED\n");
        }

        _log = new ReadOnlySequence<byte>(Encoding.UTF8.GetBytes(text.ToString()));
        var mapping = new LogMapping { Site = "sz-bench", AccountHolders = { ["lab-vision"] = "9144030071526726XG" }, GresModels = { ["h100"] = "H100-SXM" } };
        _parser = new SacctParser(LogMappingRules.Create(EngineRecords.Of(mapping), DeviceCatalog.LoadEmbedded(), out _));
        _parser.ReadHeader("JobID|Account|Partition|AllocTRES|Start|End|Elapsed|State"u8);
        _reader = new LogLineReader(64 * 1024);
    }

    [Benchmark(OperationsPerInvoke = Lines)]
    public long SplitAndTokenise() => Run(buildRecords: false);

    [Benchmark(OperationsPerInvoke = Lines)]
    public long SplitAndParseToRecords() => Run(buildRecords: true);

    private long Run(bool buildRecords)
    {
        var sink = new CountingSink(_parser, buildRecords);
        _reader.ReadAsync(PipeReader.Create(_log), sink, 0, 0, () => true, CancellationToken.None).GetAwaiter().GetResult();
        return sink.Metered;
    }

    private sealed class CountingSink(SacctParser parser, bool buildRecords) : ILogLineSink
    {
        public long Metered { get; private set; }

        public bool IsFull => false;

        public void OnLine(ReadOnlySpan<byte> line, long lineNumber, long endOffset)
        {
            if (lineNumber == 1)
            {
                return;
            }

            LineOutcome outcome = buildRecords ? parser.Parse(line, out _, out _) : parser.ParseFields(line, out _, out _);
            if (outcome == LineOutcome.Record)
            {
                Metered++;
            }
        }

        public void OnLineTooLong(long lineNumber, long endOffset, long length)
        {
        }

        public ValueTask FlushAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;
    }
}
