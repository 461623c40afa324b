using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Metering.Client.Receipts;
using Metering.Protocol.V1;

namespace Metering.Cli.Commands;

/// <summary>
/// `metering ingest-file`: uploads a Slurm accounting or JSON Lines log through RawLogService,
/// resuming from the server's committed offset after any interruption.
/// </summary>
internal static class IngestFileCommand
{
    private const int ChunkBytes = 256 * 1024;
    private const int AttemptsMax = 10;

    public static Command Create()
    {
        var file = new Argument<FileInfo>("file") { Description = "The log file." };
        var connection = new ServerConnection();
        var stream = new Option<string>("--stream") { Description = "The usage stream the records go to (one per log source).", Required = true };
        var format = new Option<string>("--format") { Description = "sacct (sacct --parsable2 output) or jsonl (JSON Lines).", Required = true };
        format.AcceptOnlyFromAmong("sacct", "jsonl");
        var mapping = new Option<FileInfo>("--mapping")
        {
            Description = "JSON mapping: {\"accountHolders\": {account: credit code}, \"gresModels\": {type: model}, \"partitionModels\": {partition: model}, \"site\": \"...\", \"utcOffsetMinutes\": 480, \"meterSteps\": false}.",
            Required = true,
        };
        var uploadId = new Option<string?>("--upload-id") { Description = "The upload's id; defaults to the first 32 hex digits of the file's SHA-256." };
        var receipts = new Option<FileInfo?>("--receipts") { Description = "Append the server's signed receipt for the stream's head after the upload to this file (JSON Lines), for `metering audit check-receipts`." };
        var output = OutputOption.Sections("ingest-file");
        var command = new Command("ingest-file", "Upload a scheduler log (Slurm sacct or JSON Lines); good lines are committed as usage records, bad lines are reported with their numbers (exit 7). Safe to repeat and to interrupt: it resumes where the server stands. "
            + "--output json gives one object: upload (the counts, complete) and refusedLines.\n\n" + ExitCodes.Table)
        {
            file, stream, format, mapping, uploadId, receipts, output,
        };
        connection.AddTo(command);
        command.SetAction(async (parse, cancellationToken) =>
        {
            FileInfo log = parse.GetValue(file)!;
            string? key = connection.ResolveApiKey(parse);
            if (!log.Exists)
            {
                return Fail($"no file at {log.FullName}");
            }

            if (key is null)
            {
                return Fail($"give --api-key or set {ServerConnection.ApiKeyVariable}");
            }

            LogMapping logMapping;
            try
            {
                logMapping = JsonParser.Default.Parse<LogMapping>(await File.ReadAllTextAsync(parse.GetValue(mapping)!.FullName, cancellationToken));
            }
            catch (Exception e) when (e is InvalidProtocolBufferException or InvalidJsonException or IOException)
            {
                return Fail($"mapping file: {e.Message}");
            }

            var header = new UploadHeader
            {
                UploadId = parse.GetValue(uploadId) ?? await FileIdAsync(log, cancellationToken),
                StreamId = parse.GetValue(stream)!,
                Format = parse.GetValue(format) == "sacct" ? LogFormat.SacctParsable2 : LogFormat.JsonLines,
                Mapping = logMapping,
                TotalBytes = (ulong)log.Length,
            };
            if (!connection.TryOpen(parse, out GrpcChannel? channel, out string? error))
            {
                return Fail(error);
            }

            using GrpcChannel opened = channel;
            var client = new RawLogService.RawLogServiceClient(channel);
            Metadata headers = ServerConnection.Bearer(key);
            try
            {
                UploadReport report = await UploadAsync(client, headers, log, header, cancellationToken);
                bool json = parse.GetValue(output) == OutputFormat.Json;
                if (json)
                {
                    PrintJson(report);
                }
                else
                {
                    Print(report);
                }

                if (parse.GetValue(receipts) is { } receiptsFile && report.Receipt is not null)
                {
                    using var kept = new ReceiptsFile(receiptsFile.FullName);
                    kept.Append(report.StreamId, report.CommittedSequence, report.ChainHead.Span, report.Receipt);
                    // Under json, standard output holds the object alone.
                    (json ? Console.Error : Console.Out).WriteLine($"Receipt for {report.StreamId} #{report.CommittedSequence:N0} appended to {receiptsFile.FullName}.");
                }

                // Refused lines are not a refusal of the upload: the good lines are committed and
                // a rerun changes nothing, so they get their own code rather than 4 or 0.
                return !report.Complete ? ExitCodes.Unexpected : report.LinesRefused > 0 ? ExitCodes.LinesRefused : ExitCodes.Success;
            }
            catch (RpcException e)
            {
                return ClientCommand.Refused(e, parse.GetValue(connection.Server)!);
            }
        });
        return command;
    }

    internal static async Task<UploadReport> UploadAsync(RawLogService.RawLogServiceClient client, Metadata headers, FileInfo log, UploadHeader header, CancellationToken cancellationToken)
    {
        var clock = Stopwatch.StartNew();
        for (int attempt = 1; ; attempt++)
        {
            ulong offset = await CommittedOffsetAsync(client, headers, header.UploadId, cancellationToken);
            header.Offset = offset;
            Console.Error.WriteLine($"Uploading {log.Name} ({log.Length:N0} bytes) as {header.UploadId} from byte {offset:N0}");
            try
            {
                using var call = client.UploadLog(headers, cancellationToken: cancellationToken);
                await call.RequestStream.WriteAsync(new LogChunk { Header = header }, cancellationToken);
                await using (FileStream input = log.OpenRead())
                {
                    input.Position = (long)offset;
                    byte[] buffer = new byte[ChunkBytes];
                    long sent = (long)offset;
                    long lastReport = 0;
                    int read;
                    while ((read = await input.ReadAsync(buffer, cancellationToken)) > 0)
                    {
                        await call.RequestStream.WriteAsync(new LogChunk { Data = ByteString.CopyFrom(buffer, 0, read) }, cancellationToken);
                        sent += read;
                        if (clock.ElapsedMilliseconds - lastReport >= 1000)
                        {
                            lastReport = clock.ElapsedMilliseconds;
                            Console.Error.WriteLine($"  sent {sent:N0} / {log.Length:N0} bytes ({100.0 * sent / Math.Max(1, log.Length):0.0}%), {sent / 1048576.0 / clock.Elapsed.TotalSeconds:0.0} MiB/s");
                        }
                    }
                }

                await call.RequestStream.CompleteAsync();
                return await call;
            }
            catch (RpcException e) when (attempt < AttemptsMax && e.StatusCode is StatusCode.Unavailable or StatusCode.Aborted or StatusCode.Internal or StatusCode.Unknown)
            {
                Console.Error.WriteLine($"  interrupted ({e.StatusCode}: {e.Status.Detail}); resuming from the server's committed offset");
                await Task.Delay(TimeSpan.FromMilliseconds(200 * attempt), cancellationToken);
            }
        }
    }

    private static async Task<ulong> CommittedOffsetAsync(RawLogService.RawLogServiceClient client, Metadata headers, string uploadId, CancellationToken cancellationToken)
    {
        try
        {
            return (await client.GetUploadAsync(new GetUploadRequest { UploadId = uploadId }, headers, cancellationToken: cancellationToken)).CommittedOffset;
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.NotFound)
        {
            return 0;
        }
    }

    private static async Task<string> FileIdAsync(FileInfo log, CancellationToken cancellationToken)
    {
        await using FileStream input = log.OpenRead();
        return Convert.ToHexStringLower(await SHA256.HashDataAsync(input, cancellationToken))[..32];
    }

    private static void Print(UploadReport report)
    {
        var table = new TextTable("upload", "bytes committed", "lines", "records", "skipped", "duplicate", "refused", "stream", "sequence");
        table.Add(report.UploadId, report.CommittedOffset.ToString("N0", CultureInfo.InvariantCulture), report.Lines.ToString("N0", CultureInfo.InvariantCulture),
            report.Records.ToString("N0", CultureInfo.InvariantCulture), report.LinesSkipped.ToString("N0", CultureInfo.InvariantCulture),
            report.LinesDuplicate.ToString("N0", CultureInfo.InvariantCulture),
            report.LinesRefused.ToString("N0", CultureInfo.InvariantCulture), report.StreamId, report.CommittedSequence.ToString("N0", CultureInfo.InvariantCulture));
        table.Write(Console.Out);
        if (report.Errors.Count > 0)
        {
            Console.WriteLine();
            var errors = new TextTable("line", "reason", "detail");
            foreach (LineError error in report.Errors)
            {
                errors.Add(error.Line.ToString(CultureInfo.InvariantCulture), error.Reason, error.Message);
            }

            errors.Write(Console.Out);
            if (report.LinesRefused > (ulong)report.Errors.Count)
            {
                Console.WriteLine($"… and {report.LinesRefused - (ulong)report.Errors.Count:N0} more refused lines.");
            }
        }

        Console.WriteLine(report.Complete ? "Upload complete." : "Upload incomplete: run the same command again to resume.");
    }

    /// <summary>The report as one object: the upload's counts, and the refused lines the server listed (it lists at most a few; refused counts them all).</summary>
    private static void PrintJson(UploadReport report)
    {
        var upload = new Rows(Column.DataOnly("uploadId"), Column.DataOnly("bytesCommitted"), Column.DataOnly("lines"), Column.DataOnly("records"), Column.DataOnly("skipped"),
            Column.DataOnly("duplicate"), Column.DataOnly("refused"), Column.DataOnly("streamId"), Column.DataOnly("committedSequence"), Column.DataOnly("complete"));
        upload.Add(report.UploadId, Cell.Data(report.CommittedOffset), Cell.Data(report.Lines), Cell.Data(report.Records), Cell.Data(report.LinesSkipped),
            Cell.Data(report.LinesDuplicate), Cell.Data(report.LinesRefused), report.StreamId, Cell.Data(report.CommittedSequence), Cell.Data(report.Complete));
        var refused = new Rows(Column.DataOnly("line"), Column.DataOnly("reason"), Column.DataOnly("detail"));
        foreach (LineError error in report.Errors)
        {
            refused.Add(Cell.Data(error.Line), error.Reason, error.Message);
        }

        new Sections().One("upload", upload).Many("refusedLines", refused).WriteJson(Console.Out);
    }

    private static int Fail(string message)
    {
        Console.Error.WriteLine($"error: {message}");
        return ExitCodes.Usage;
    }
}
