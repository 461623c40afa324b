using System.Diagnostics;
using System.Globalization;
using System.IO.Pipelines;
using System.Text;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Metering.Engine.Catalog;
using Metering.Engine.Ingest;
using Metering.Engine.RawLogs;
using Metering.Engine.Signing;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Metering.Server.Hosting;
using Metering.Fixtures;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Metering.Bench.Load;

/// <summary>
/// Raw log parsing and upload, in one run: generates a Slurm `sacct --parsable2` file (1 GiB by
/// default), times the parser over all of it on one thread (line splitting with a PipeReader and
/// full parsing into usage records), then uploads a prefix of it through RawLogService to a server
/// on a fresh durable embedded PostgreSQL and times records committed per second. Then, on the same
/// server and database, the same records (moved one day later, so that they neither meet the
/// uploaded ones in the fleet check nor count as the same usage) are streamed over the gRPC ingest
/// path with the stream bench's tool and settings, and the two rates are compared: a cost that
/// lands on the upload path alone shows as a falling upload_vs_stream. The last line of stdout is
/// the RESULT line.
/// </summary>
internal static class RawLogLoad
{
    // Admitted by Admissions.SeedAsync, which issues its key as OtherProvider.
    private const string Provider = TestRecords.OtherProvider;
    private const string Header = "JobID|Account|Partition|AllocTRES|Start|End|Elapsed|State";
    private static readonly string[] Accounts = ["lab-vision", "lab-speech", "lab-robotics", "lab-llm", "lab-bio", "lab-chem", "lab-fin", "lab-map"];
    private const long DayMs = 86_400_000;
    private static readonly (string Partition, string Gres)[] Pools = [("gpu-h100", "h100"), ("gpu-a100", "a100"), ("gpu-h20", ""), ("gpu-l40s", "l40s")];

    public static async Task<int> RunAsync(string[] args)
    {
        Dictionary<string, string>? values = BenchArguments.Pairs(args, out string? error);
        if (values is null || !values.TryGetValue("data-dir", out string? dataDirectory))
        {
            Console.Error.WriteLine($"error: {error ?? "--data-dir is required"}");
            Console.Error.WriteLine("usage: Metering.Bench rawlog --data-dir DIR [--bytes 1073741824] [--ingest-lines 1000000] [--file PATH] [--streams 4] [--batch 5000] [--window 4]");
            return 2;
        }

        long bytes = BenchArguments.Long(values, "bytes", 1L << 30);
        long ingestLines = BenchArguments.Long(values, "ingest-lines", 1_000_000);
        // The stream phase's defaults are bench/run-ingest's.
        var stream = new StreamSettings((int)BenchArguments.Long(values, "streams", 4), (int)BenchArguments.Long(values, "batch", 5_000), (int)BenchArguments.Long(values, "window", 4));
        if (stream.Streams is < 1 or > 64 || stream.BatchRecords is < 1 or > 100_000 || stream.WindowBatches is < 1 or > 64)
        {
            Console.Error.WriteLine("error: --streams must be 1 to 64, --batch 1 to 100000, --window 1 to 64");
            return 2;
        }

        string file = Path.GetFullPath(values.GetValueOrDefault("file", Path.Combine("bench", "out", "sacct.txt")));
        DateTime day = DateTime.UtcNow.Date.AddDays(-30);

        long lines = await GenerateAsync(file, bytes, day);
        Console.WriteLine($"rawlog: {file}: {new FileInfo(file).Length:N0} bytes, {lines:N0} lines");

        // Warm the parser (and the page cache) on a first pass, then time a second.
        await ParseAsync(file);
        var (seconds, records) = await ParseAsync(file);
        double parseMbPerSecond = new FileInfo(file).Length / 1e6 / seconds;
        Console.WriteLine($"rawlog: parsed {records:N0} records in {seconds:0.00} s on one thread: {parseMbPerSecond:0.0} MB/s");

        string prefix = file + ".prefix";
        await WritePrefixAsync(file, prefix, ingestLines);
        var (ingestPerSecond, streamPerSecond) = await UploadAndStreamAsync(prefix, Path.GetFullPath(dataDirectory), stream);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"RESULT parse_mb_per_s={parseMbPerSecond:0.0} ingest_records_per_s={ingestPerSecond:0} stream_records_per_s={streamPerSecond:0} upload_vs_stream={ingestPerSecond / streamPerSecond:0.00}"));
        return 0;
    }

    /// <summary>Writes the file afresh, about <paramref name="bytes"/> long; returns its lines, the header included.</summary>
    private static async Task<long> GenerateAsync(string file, long bytes, DateTime day)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(file)!);
        var stopwatch = Stopwatch.StartNew();
        long lines = 0;
        await using (var output = new StreamWriter(file, false, new UTF8Encoding(false), 1 << 20))
        {
            await output.WriteAsync(Header + "\n");
            long written = Header.Length + 1;
            var line = new StringBuilder(256);
            for (long job = 1; written < bytes; job++)
            {
                line.Clear();
                AppendJob(line, job, day);
                await output.WriteAsync(line);
                written += line.Length;
                lines++;
            }
        }

        Console.WriteLine($"rawlog: generated {lines:N0} job lines in {stopwatch.Elapsed.TotalSeconds:0.0} s");
        return lines + 1;
    }

    /// <summary>One finished GPU allocation, deterministic in the job number.</summary>
    private static void AppendJob(StringBuilder line, long job, DateTime day)
    {
        var (partition, gres) = Pools[job % Pools.Length];
        int gpus = 1 << (int)(job % 4);
        DateTime start = day.AddSeconds(job * 7 % 80_000);
        TimeSpan length = TimeSpan.FromSeconds(60 + job * 13 % 6_000);
        DateTime end = start + length;
        string tres = gres.Length > 0 ? $"billing={gpus * 8},cpu={gpus * 8},gres/gpu:{gres}={gpus},gres/gpu={gpus},mem={gpus * 64}G,node=1" : $"billing={gpus * 8},cpu={gpus * 8},gres/gpu={gpus},mem={gpus * 64}G,node=1";
        line.Append(CultureInfo.InvariantCulture, $"{1_000_000 + job}|{Accounts[job % Accounts.Length]}|{partition}|{tres}|{start:yyyy-MM-ddTHH:mm:ss}|{end:yyyy-MM-ddTHH:mm:ss}|{length:hh\\:mm\\:ss}|COMPLETED\n");
    }

    private static LogMapping Mapping()
    {
        var mapping = new LogMapping { Site = "sz-bench-dc", UtcOffsetMinutes = 0 };
        string[] holders = ["9144030071526726XG", "91440300MA5G2XK3P1", "12440300455765421T", "91440300083412345N", "91440300MA5DC0RJ75", "52440300MA5FTQ7L2H", "91440300MA5H19UY86", "12440300G348188022"];
        for (int i = 0; i < Accounts.Length; i++)
        {
            mapping.AccountHolders[Accounts[i]] = holders[i];
        }

        mapping.GresModels["h100"] = "H100-SXM";
        mapping.GresModels["a100"] = "A100-SXM";
        mapping.GresModels["l40s"] = "L40S";
        mapping.PartitionModels["gpu-h20"] = "H20";
        return mapping;
    }

    /// <summary>Splits and parses the whole file on the calling thread; returns seconds and records.</summary>
    private static async Task<(double Seconds, long Records)> ParseAsync(string file)
    {
        var rules = LogMappingRules.Create(EngineRecords.Of(Mapping()), DeviceCatalog.LoadEmbedded(), out string? problem);
        if (problem is not null)
        {
            throw new InvalidOperationException(problem);
        }

        var sink = new CountingSink(new SacctParser(rules));
        var stopwatch = Stopwatch.StartNew();
        await using (var stream = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan))
        {
            PipeReader reader = PipeReader.Create(stream, new StreamPipeReaderOptions(bufferSize: 1 << 20, minimumReadSize: 1 << 19));
            await new LogLineReader(64 * 1024).ReadAsync(reader, sink, 0, 0, () => true, CancellationToken.None);
        }

        stopwatch.Stop();
        if (sink.Refused > 0)
        {
            throw new InvalidOperationException($"{sink.Refused} generated lines were refused; the generator and parser disagree.");
        }

        return (stopwatch.Elapsed.TotalSeconds, sink.Records);
    }

    private static async Task WritePrefixAsync(string file, string prefix, long lines)
    {
        using var reader = new StreamReader(file);
        await using var writer = new StreamWriter(prefix, false, new UTF8Encoding(false), 1 << 20);
        for (long i = 0; i <= lines && await reader.ReadLineAsync() is string line; i++)
        {
            await writer.WriteAsync(line + "\n");
        }
    }

    private sealed record StreamSettings(int Streams, int BatchRecords, int WindowBatches);

    private static async Task<(double Upload, double Stream)> UploadAndStreamAsync(string file, string dataDirectory, StreamSettings settings)
    {
        using ILoggerFactory logging = LoggerFactory.Create(builder => builder
            .AddConsole(console => console.LogToStandardErrorThreshold = LogLevel.Trace)
            .SetMinimumLevel(LogLevel.Warning));
        ILogger logger = logging.CreateLogger("metering.bench.rawlog");
        IngestLoad.DeleteCluster(dataDirectory);
        await using EmbeddedPostgres postgres = await EmbeddedPostgres.StartAsync(new EmbeddedPostgresOptions { DataDirectory = dataDirectory, Durable = true }, logger);
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(postgres.ConnectionString);
        await new Migrator(dataSource, logger).MigrateAsync();
        string apiKey = (await Admissions.SeedAsync(dataSource)).OtherProvider;

        await using MeteringServer server = await MeteringServer.StartAsync(new ServerSettings
        {
            SigningKey = ServerSigningKey.CreateNew(),
            Listen = new Uri("http://127.0.0.1:0"),
            ConnectionString = postgres.RuntimeConnectionString,
            ConfigureLogging = builder => builder.AddConsole(console => console.LogToStandardErrorThreshold = LogLevel.Trace).SetMinimumLevel(LogLevel.Warning),
        });
        using var channel = GrpcChannel.ForAddress(server.Address);
        var client = new RawLogService.RawLogServiceClient(channel);
        long length = new FileInfo(file).Length;
        var stopwatch = Stopwatch.StartNew();
        using var call = client.UploadLog(new Metadata { { "authorization", "Bearer " + apiKey } });
        await call.RequestStream.WriteAsync(new LogChunk
        {
            Header = new UploadHeader { UploadId = "bench", StreamId = "slurm-bench", Format = LogFormat.SacctParsable2, Mapping = Mapping(), TotalBytes = (ulong)length },
        });
        await using (FileStream input = File.OpenRead(file))
        {
            byte[] buffer = new byte[256 * 1024];
            int read;
            while ((read = await input.ReadAsync(buffer)) > 0)
            {
                await call.RequestStream.WriteAsync(new LogChunk { Data = ByteString.CopyFrom(buffer, 0, read) });
            }
        }

        await call.RequestStream.CompleteAsync();
        UploadReport report = await call;
        stopwatch.Stop();
        if (!report.Complete || report.LinesRefused > 0)
        {
            throw new InvalidOperationException($"The upload ended incomplete or with refused lines: {report}");
        }

        Console.WriteLine($"rawlog: uploaded {length:N0} bytes, {report.Records:N0} records committed in {stopwatch.Elapsed.TotalSeconds:0.00} s (durable, fsync on)");
        double uploadPerSecond = report.Records / stopwatch.Elapsed.TotalSeconds;

        // The stream phase starts right after a checkpoint, as the stream bench's does.
        await IngestLoad.CheckpointAsync(dataSource);

        LoadStream[] streams = StreamsOf(file, settings.Streams);
        long records = streams.Sum(s => (long)s.Records);
        if (records != (long)report.Records)
        {
            throw new InvalidOperationException($"The upload committed {report.Records} records; the file holds {records}.");
        }

        Console.WriteLine($"stream: the same {records:N0} records one day later over {settings.Streams} streams, batches of {settings.BatchRecords:N0}, window {settings.WindowBatches}");
        var (seconds, _, results) = await IngestLoad.StreamRecordsAsync(channel, apiKey, streams, settings.BatchRecords, settings.WindowBatches);
        long streamed = results.Sum(r => (long)r.CommittedSequence);
        if (streamed != records)
        {
            throw new InvalidOperationException($"The streams committed {streamed} records of {records}.");
        }

        Console.WriteLine($"stream: {records:N0} records committed in {seconds:0.00} s (durable, fsync on)");
        return (uploadPerSecond, records / seconds);
    }

    /// <summary>
    /// The file's records dealt round-robin to <paramref name="count"/> streams, each parsed when
    /// the streamer asks for it (the client pays the parse, as the server does for the upload) and
    /// moved one day later.
    /// </summary>
    private static LoadStream[] StreamsOf(string file, int count)
    {
        byte[] bytes = File.ReadAllBytes(file);
        var starts = new List<int>();
        for (int at = Array.IndexOf(bytes, (byte)'\n') + 1; at < bytes.Length; at = Array.IndexOf(bytes, (byte)'\n', at) + 1)
        {
            starts.Add(at);
        }

        var rules = LogMappingRules.Create(EngineRecords.Of(Mapping()), DeviceCatalog.LoadEmbedded(), out string? problem);
        if (problem is not null)
        {
            throw new InvalidOperationException(problem);
        }

        var streams = new LoadStream[Math.Min(count, Math.Max(1, starts.Count))];
        for (int k = 0; k < streams.Length; k++)
        {
            int stream = k;
            var parser = new SacctParser(rules);
            parser.ReadHeader(Encoding.UTF8.GetBytes(Header));
            streams[k] = new LoadStream($"slurm-bench-stream-{k}", sequence =>
            {
                int line = (int)((long)(sequence - 1) * streams.Length + stream);
                int end = Array.IndexOf(bytes, (byte)'\n', starts[line]);
                if (parser.Parse(bytes.AsSpan(starts[line], end - starts[line]), out IngestRecord record, out LineRefusal refusal) != LineOutcome.Record)
                {
                    throw new InvalidOperationException($"Line {line + 2} is no record: {refusal.Message}");
                }

                return EngineRecords.ToWire(record with { Sequence = sequence, StartUnixMs = record.StartUnixMs + DayMs, EndUnixMs = record.EndUnixMs + DayMs });
            }, (ulong)((starts.Count - stream + streams.Length - 1) / streams.Length));
        }

        return streams;
    }

    private sealed class CountingSink(SacctParser parser) : ILogLineSink
    {
        public long Records { get; private set; }

        public long Refused { get; private set; }

        public bool IsFull => false;

        public void OnLine(ReadOnlySpan<byte> line, long lineNumber, long endOffset)
        {
            if (!parser.HasHeader)
            {
                parser.ReadHeader(line);
                return;
            }

            switch (parser.Parse(line, out _, out _))
            {
                case LineOutcome.Record: Records++; break;
                case LineOutcome.Refused: Refused++; break;
            }
        }

        public void OnLineTooLong(long lineNumber, long endOffset, long length) => Refused++;

        public ValueTask FlushAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;
    }
}
