using System.IO.Pipelines;
using Google.Protobuf;
using Grpc.Core;
using Metering.Engine.Ingest;
using Metering.Engine.RawLogs;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Metering.Engine.Access;
using Metering.Engine.Signing;
using Metering.Server.Access;
using Metering.Server.Ingest;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Metering.Server.RawLogs;

/// <summary>
/// Raw log uploads: chunks go into a <see cref="Pipe"/> as they arrive; the parser reads lines from
/// the other end and commits them through the same ingest session a stream uses.
/// </summary>
internal sealed partial class RawLogGrpcService(
    UsageStore usageStore,
    UploadStore uploadStore,
    RecordValidator validator,
    StreamLeases leases,
    AdmissionGate gate,
    KeyLookupCache credentials,
    CredentialRecheckPolicy recheckPolicy,
    TimeProvider time,
    ReceiptSigner receipts,
    IHostApplicationLifetime lifetime,
    ILogger<RawLogGrpcService> logger) : RawLogService.RawLogServiceBase
{
    private const int ReportedErrorsMax = 100;
    private const int ChunkBytesMax = 1024 * 1024;

    public override async Task<UploadReport> GetUpload(GetUploadRequest request, ServerCallContext context)
    {
        Actor caller = AuthenticationInterceptor.Caller(context);
        UploadState state = await uploadStore.GetAsync(caller.Subject, request.UploadId, context.CancellationToken)
            ?? throw Refused(StatusCode.NotFound, RawLogRefusal.UploadNotFound, $"no upload '{request.UploadId}' from this provider");
        return await ReportAsync(state, null, context.CancellationToken);
    }

    public override async Task<UploadReport> UploadLog(IAsyncStreamReader<LogChunk> requestStream, ServerCallContext context)
    {
        Actor caller = AuthenticationInterceptor.Caller(context);
        if (!await requestStream.MoveNext(context.CancellationToken) || requestStream.Current.KindCase != LogChunk.KindOneofCase.Header)
        {
            throw Refused(StatusCode.FailedPrecondition, RawLogRefusal.HeaderMissing, "the first message of an upload must be its header");
        }

        UploadHeader header = requestStream.Current.Header;
        LogMappingSpec mapping = RawLogMapping.ToEngine(header.Mapping ?? new LogMapping());
        LogMappingRules rules = CheckHeader(header, mapping);
        string mappingSha256 = LogMappingRules.Fingerprint(mapping);
        UploadState upload;
        try
        {
            upload = await uploadStore.GetOrCreateAsync(caller.Subject, header.UploadId, header.StreamId, header.Format.ToString(), mappingSha256, (long)header.TotalBytes, context.CancellationToken);
        }
        catch (Npgsql.PostgresException e) when (e.SqlState == Npgsql.PostgresErrorCodes.CheckViolation)
        {
            throw Refused(StatusCode.InvalidArgument, RawLogRefusal.HeaderInvalid, "total_bytes is negative");
        }

        if (upload.StreamId != header.StreamId || upload.Format != header.Format.ToString() || upload.TotalBytes != (long)header.TotalBytes)
        {
            throw Refused(StatusCode.FailedPrecondition, RawLogRefusal.UploadMismatch,
                $"upload '{upload.UploadId}' is known as {upload.TotalBytes} bytes of {upload.Format} into stream '{upload.StreamId}'");
        }

        if (upload.MappingSha256 != mappingSha256)
        {
            // Lines already committed were mapped with the first mapping; mixing two would make
            // one file's records disagree. A corrected mapping goes with a new upload id, and the
            // jobs already metered are recognised and skipped.
            throw Refused(StatusCode.FailedPrecondition, RawLogRefusal.UploadMismatch,
                $"upload '{upload.UploadId}' was started with another mapping; send the corrected mapping under a new upload id (jobs already metered are skipped as duplicates)");
        }

        CheckOffset(header, upload);
        if (upload.Complete)
        {
            // A repeated upload of a finished file: nothing to do, and nothing is committed twice.
            return await ReportAsync(upload, null, context.CancellationToken);
        }

        using var callOrShutdown = CancellationTokenSource.CreateLinkedTokenSource(context.CancellationToken, lifetime.ApplicationStopping);
        using StreamLeases.Lease lease = await leases.AcquireAsync(caller.Subject, header.StreamId, callOrShutdown.Token);
        // A call that held the stream until now may have advanced this upload: read it afresh.
        upload = await uploadStore.GetAsync(caller.Subject, header.UploadId, lease.Token) ?? upload;
        CheckOffset(header, upload);
        if (upload.Complete)
        {
            return await ReportAsync(upload, null, context.CancellationToken);
        }

        StreamHead head = await usageStore.OpenStreamAsync(caller.Subject, header.StreamId, lease.Token);
        AdmissionSnapshot admission = await gate.LoadAsync(caller.Subject, lease.Token);
        // The upload's flushes are the provider's commits too: as many are in flight as a provider's
        // group commits, each copying its rows while the one ahead of it commits.
        var session = new IngestSession(usageStore, validator, time, gate, admission, header.StreamId, head, context.Peer, validator.Limits.UploadFlushRecordsMax,
            batchesInFlightMax: validator.Limits.GroupCommitsInFlightMax);
        UploadProcessor processor;
        try
        {
            processor = new UploadProcessor(session, validator, uploadStore, upload, RawLogMapping.ToEngine(header.Format), rules, time);
        }
        catch (UploadRefusedException refused)
        {
            throw Refused(RawLogRefusals.StatusFor(refused.Reason), RawLogRefusals.ToWire(refused.Reason), refused.Message);
        }

        LogStarted(logger, caller.Subject, upload.UploadId, header.StreamId, upload.CommittedOffset, upload.TotalBytes);
        // The parser holds at most one line unconsumed, so the writer must be allowed more than
        // the longest line ahead of it, or a long line would stall both ends.
        long pauseBytes = Math.Max(8L * ChunkBytesMax, validator.Limits.RawLineBytesMax + 2L * ChunkBytesMax);
        var pipe = new Pipe(new PipeOptions(pauseWriterThreshold: pauseBytes, resumeWriterThreshold: pauseBytes / 2, useSynchronizationContext: false));
        var received = new ReceivedBytes { Position = (long)header.Offset };
        var reader = new LogLineReader(validator.Limits.RawLineBytesMax);
        Task parsing = ParseAsync(reader, pipe.Reader, processor, upload, () => received.Position == upload.TotalBytes, lease.Token);
        try
        {
            try
            {
                await ReceiveAsync(requestStream, pipe.Writer, upload, received, parsing, new CredentialRecheck(credentials, recheckPolicy, context), lease.Token);
            }
            catch (Exception failure)
            {
                // Stop the parser without a final flush: nothing read after the failure commits.
                await pipe.Writer.CompleteAsync(failure);
                await parsing.ContinueWith(static _ => { }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
                throw;
            }

            await pipe.Writer.CompleteAsync();
            await parsing;
        }
        catch (UploadRefusedException refused)
        {
            throw Refused(RawLogRefusals.StatusFor(refused.Reason), RawLogRefusals.ToWire(refused.Reason), refused.Message);
        }
        catch (IngestRefusedException refused)
        {
            throw Errors.From(refused);
        }
        catch (OperationCanceledException) when (lease.TakenOver)
        {
            throw Errors.Refused(StatusCode.Aborted, IngestRefusal.StreamTakenOver, "another connection opened this upload's stream; resume from the committed offset");
        }
        catch (OperationCanceledException) when (lifetime.ApplicationStopping.IsCancellationRequested)
        {
            throw new RpcException(new Status(StatusCode.Unavailable, "the server is shutting down; resume the upload from its committed offset"));
        }
        catch (UploadMovedException moved)
        {
            throw Refused(StatusCode.Aborted, RawLogRefusal.UploadBusy, moved.Message);
        }
        catch (Exception e) when (e is not RpcException && ReplicationDurability.IsDatabaseLostWithin(e))
        {
            throw Errors.DatabaseUnavailable("resume the upload from its committed offset");
        }

        LogFinished(logger, caller.Subject, upload.UploadId, upload.CommittedOffset, upload.Records, upload.LinesRefused);
        return await ReportAsync(upload, session, context.CancellationToken);
    }

    private static void CheckOffset(UploadHeader header, UploadState upload)
    {
        if (header.Offset > (ulong)upload.CommittedOffset)
        {
            throw Refused(StatusCode.FailedPrecondition, RawLogRefusal.OffsetGap,
                $"the upload is committed up to byte {upload.CommittedOffset}; send from there, not from {header.Offset}",
                new Dictionary<string, string> { ["expected"] = upload.CommittedOffset.ToString(System.Globalization.CultureInfo.InvariantCulture) });
        }
    }

    /// <summary>
    /// Parses until the pipe ends and the last flush has committed; on failure waits for a flush
    /// still committing, then completes the pipe so that the receiving side stops writing.
    /// </summary>
    private static async Task ParseAsync(LogLineReader reader, PipeReader pipe, UploadProcessor processor, UploadState upload, Func<bool> reachedEndOfFile, CancellationToken cancellationToken)
    {
        try
        {
            await reader.ReadAsync(pipe, processor, upload.CommittedOffset, upload.Lines, reachedEndOfFile, cancellationToken);
            if (reachedEndOfFile())
            {
                // A line the parser held for what follows it has nothing more to wait for.
                processor.EndOfFile();
                await processor.FlushAsync(cancellationToken);
            }

            await processor.EndFlushAsync();
        }
        catch (Exception)
        {
            // The lease must outlive every write of the call: a flush begun before the failure
            // commits or fails before the call ends.
            await processor.AbandonFlushAsync();
            throw;
        }
        finally
        {
            await pipe.CompleteAsync();
        }
    }

    /// <summary>Copies data chunks into the pipe, dropping bytes the upload has already committed.</summary>
    private static async Task ReceiveAsync(IAsyncStreamReader<LogChunk> requestStream, PipeWriter writer, UploadState upload, ReceivedBytes received, Task parsing, CredentialRecheck recheck, CancellationToken cancellationToken)
    {
        long skip = upload.CommittedOffset - received.Position;
        while (await requestStream.MoveNext(cancellationToken))
        {
            await recheck.CheckAsync(cancellationToken);
            LogChunk chunk = requestStream.Current;
            if (chunk.KindCase != LogChunk.KindOneofCase.Data)
            {
                throw Refused(StatusCode.FailedPrecondition, RawLogRefusal.HeaderMissing, "an upload has one header, first");
            }

            ReadOnlyMemory<byte> data = chunk.Data.Memory;
            if (data.Length > ChunkBytesMax)
            {
                throw Refused(StatusCode.InvalidArgument, RawLogRefusal.HeaderInvalid, $"a data chunk holds at most {ChunkBytesMax} bytes");
            }

            if (received.Position + data.Length > upload.TotalBytes)
            {
                throw Refused(StatusCode.InvalidArgument, RawLogRefusal.UploadOverrun, $"more than the announced {upload.TotalBytes} bytes arrived");
            }

            received.Position += data.Length;
            if (skip > 0)
            {
                int dropped = (int)Math.Min(skip, data.Length);
                data = data[dropped..];
                skip -= dropped;
            }

            if (data.IsEmpty)
            {
                continue;
            }

            FlushResult flushed = await writer.WriteAsync(data, cancellationToken);
            if (flushed.IsCompleted)
            {
                // The parser stopped early (a refusal): its exception tells why.
                await parsing;
                return;
            }
        }
    }

    /// <summary>
    /// The file offset just past the last byte received. The parser reads it once the pipe is
    /// complete, to tell a finished file from an interrupted call; completing the pipe orders the
    /// write before that read.
    /// </summary>
    private sealed class ReceivedBytes
    {
        public long Position;
    }

    private LogMappingRules CheckHeader(UploadHeader header, LogMappingSpec mapping)
    {
        if (!IngestGrpcService.IsValidStreamId(header.UploadId))
        {
            throw Refused(StatusCode.InvalidArgument, RawLogRefusal.HeaderInvalid, "upload_id must be 1 to 64 characters from [A-Za-z0-9._:-]");
        }

        if (!IngestGrpcService.IsValidStreamId(header.StreamId))
        {
            throw Refused(StatusCode.InvalidArgument, RawLogRefusal.HeaderInvalid, "stream_id must be 1 to 64 characters from [A-Za-z0-9._:-]");
        }

        if (header.Format is not (LogFormat.SacctParsable2 or LogFormat.JsonLines))
        {
            throw Refused(StatusCode.InvalidArgument, RawLogRefusal.HeaderInvalid, "format must be SACCT_PARSABLE2 or JSON_LINES");
        }

        if (header.TotalBytes > (ulong)validator.Limits.RawUploadBytesMax)
        {
            throw Refused(StatusCode.ResourceExhausted, RawLogRefusal.UploadTooLarge, $"the file has {header.TotalBytes} bytes; one upload takes at most {validator.Limits.RawUploadBytesMax}");
        }

        if (header.Offset > header.TotalBytes)
        {
            throw Refused(StatusCode.InvalidArgument, RawLogRefusal.HeaderInvalid, "offset lies past total_bytes");
        }

        if (header.Format == LogFormat.SacctParsable2 && mapping.SmActiveProperty is not null)
        {
            throw Refused(StatusCode.InvalidArgument, RawLogRefusal.HeaderInvalid, "sacct has no SM-activity figure: sm_active_property applies to JSON_LINES only");
        }

        LogMappingRules rules = LogMappingRules.Create(mapping, validator.Catalog, out string? problem, validator.Limits.SiteBytesMax);
        return problem is null ? rules : throw Refused(StatusCode.InvalidArgument, RawLogRefusal.HeaderInvalid, problem);
    }

    private async Task<UploadReport> ReportAsync(UploadState upload, IngestSession? session, CancellationToken cancellationToken)
    {
        var report = new UploadReport
        {
            UploadId = upload.UploadId,
            StreamId = upload.StreamId,
            CommittedOffset = (ulong)upload.CommittedOffset,
            Lines = (ulong)upload.Lines,
            Records = (ulong)upload.Records,
            LinesSkipped = (ulong)upload.LinesSkipped,
            LinesRefused = (ulong)upload.LinesRefused,
            LinesDuplicate = (ulong)upload.LinesDuplicate,
            Complete = upload.Complete,
        };
        foreach (UploadLineError error in await uploadStore.ErrorsAsync(upload.ProviderId, upload.UploadId, ReportedErrorsMax, cancellationToken))
        {
            report.Errors.Add(new LineError { Line = (ulong)error.Line, Reason = error.Reason, Message = error.Message });
        }

        StreamHead head = session is not null
            ? new StreamHead(session.CommittedSequence, session.ChainHead)
            : await usageStore.ReadStreamHeadAsync(upload.ProviderId, upload.StreamId, cancellationToken);
        report.CommittedSequence = head.CommittedSequence;
        report.ChainHead = ByteString.CopyFrom(head.ChainHash);
        if (head.CommittedSequence > 0)
        {
            report.Receipt = ReceiptMessages.ToMessage(receipts.Sign(upload.ProviderId, upload.StreamId, head.CommittedSequence, head.ChainHash));
        }

        return report;
    }

    private static RpcException Refused(StatusCode code, RawLogRefusal reason, string message, Dictionary<string, string>? metadata = null) =>
        Errors.Refused(code, ProtocolNames.Of(reason), message, metadata);

    [LoggerMessage(EventId = 3001, Level = LogLevel.Information, Message = "Upload {ProviderId}/{UploadId} into stream {StreamId} from byte {Offset} of {TotalBytes}")]
    private static partial void LogStarted(ILogger logger, string providerId, string uploadId, string streamId, long offset, long totalBytes);

    [LoggerMessage(EventId = 3002, Level = LogLevel.Information, Message = "Upload {ProviderId}/{UploadId} at byte {Offset}: {Records} records committed, {Refused} lines refused")]
    private static partial void LogFinished(ILogger logger, string providerId, string uploadId, long offset, long records, long refused);
}
