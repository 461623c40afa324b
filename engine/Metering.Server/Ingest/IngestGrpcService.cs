using Google.Protobuf;
using Grpc.Core;
using Metering.Engine.Ingest;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Metering.Engine.Access;
using Metering.Engine.Signing;
using Metering.Engine.Telemetry;
using Metering.Server.Access;
using Metering.Server.Hosting;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Metering.Server.Ingest;

/// <summary>
/// The ingest stream: open → opened (high-water mark and chain head) → batches, each acknowledged
/// after its commit, and heartbeats while the platform has nothing to report. Any refusal ends the call with a status; the client reconnects and resumes
/// from the mark the server reports.
/// </summary>
internal sealed partial class IngestGrpcService(
    UsageStore store,
    GroupCommitter committer,
    RecordValidator validator,
    StreamLeases leases,
    AdmissionGate gate,
    KeyLookupCache credentials,
    CredentialRecheckPolicy recheckPolicy,
    CallLimiter limiter,
    TimeProvider time,
    ReceiptSigner receipts,
    ReplicationMonitor replication,
    IHostApplicationLifetime lifetime,
    ILogger<IngestGrpcService> logger) : IngestService.IngestServiceBase
{
    public override async Task Stream(IAsyncStreamReader<IngestRequest> requestStream, IServerStreamWriter<IngestResponse> responseStream, ServerCallContext context)
    {
        Actor caller = AuthenticationInterceptor.Caller(context);
        if (!await requestStream.MoveNext(context.CancellationToken))
        {
            return;
        }

        if (requestStream.Current.KindCase == IngestRequest.KindOneofCase.None)
        {
            throw NoKind();
        }

        if (requestStream.Current.KindCase != IngestRequest.KindOneofCase.Open)
        {
            throw Errors.Refused(StatusCode.FailedPrecondition, IngestRefusal.StreamNotOpen, "the first message on an ingest stream must be 'open'");
        }

        string streamId = requestStream.Current.Open.StreamId;
        if (!IsValidStreamId(streamId))
        {
            throw Errors.Refused(StatusCode.InvalidArgument, IngestRefusal.StreamIdInvalid,
                $"stream_id must be 1 to {CanonicalEncoding.StreamIdBytesMax} characters from [A-Za-z0-9._:-]");
        }

        // Per-caller limits come before anything is read or written for the stream.
        using IDisposable admitted = limiter.AdmitStream(caller.Subject, streamId);

        // A stream ends when its call ends, when another connection takes it over, or when the
        // server shuts down; in the last case the client sees UNAVAILABLE and reconnects elsewhere.
        using var callOrShutdown = CancellationTokenSource.CreateLinkedTokenSource(context.CancellationToken, lifetime.ApplicationStopping);
        using StreamLeases.Lease lease = await leases.AcquireAsync(caller.Subject, streamId, callOrShutdown.Token);
        IngestStreamLoop? loop = null;
        try
        {
            // The registry is asked first: an opener it refuses outright leaves no stream row.
            AdmissionSnapshot admission = await gate.LoadAsync(caller.Subject, lease.Token);
            if (IngestSession.CheckOpen(admission, streamId) is { IsRefused: true } notAdmitted)
            {
                throw new IngestRefusedException(notAdmitted);
            }

            // The mark a stream opens at must survive a failover: without a synchronous standby
            // it might not, and the client would resume from a mark the next primary never saw.
            if (replication.Refusal() is { } notDurable)
            {
                throw notDurable;
            }

            StreamHead head = await store.OpenStreamAsync(caller.Subject, streamId, lease.Token);
            var session = new IngestSession(store, validator, time, gate, admission, streamId, head, context.Peer, committer: committer,
                batchesInFlightMax: validator.Limits.StreamBatchesInFlightMax);
            LogOpened(logger, caller.Subject, streamId, head.CommittedSequence, context.Peer);
            using MeteringTelemetry.OpenStream openStream = MeteringTelemetry.StreamOpened(caller.Subject);
            await responseStream.WriteAsync(new IngestResponse
            {
                Opened = new StreamOpened
                {
                    StreamId = streamId,
                    CommittedSequence = head.CommittedSequence,
                    ChainHead = ByteString.CopyFrom(head.ChainHash),
                    BatchRecordsMax = (uint)validator.Limits.BatchRecordsMax,
                    CatalogVersion = validator.Catalog.VersionAt(time.GetUtcNow().ToUnixTimeMilliseconds()).Version,
                    HeartbeatsPerMinuteMax = (uint)validator.Limits.HeartbeatsPerMinuteMax,
                    Receipt = head.CommittedSequence == 0 ? null
                        : ReceiptMessages.ToMessage(receipts.Sign(caller.Subject, streamId, head.CommittedSequence, head.ChainHash)),
                },
            }, lease.Token);

            var recheck = new CredentialRecheck(credentials, recheckPolicy, context);
            loop = new IngestStreamLoop(requestStream, responseStream, session, caller.Subject, recheck, replication, receipts, lease.Token);
            await loop.RunAsync();
        }
        catch (IngestRefusedException refused)
        {
            LogRefused(logger, caller.Subject, streamId, ProtocolNames.Of(IngestRefusals.ToWire(refused.Refusal.Reason)), refused.Message);
            MeteringTelemetry.Refused(caller.Subject, ProtocolNames.Of(IngestRefusals.ToWire(refused.Refusal.Reason)), loop?.AnsweringRecords ?? 0);
            throw Errors.From(refused);
        }
        catch (Exception e) when (lease.TakenOver && e is not RpcException)
        {
            // Whatever the takeover interrupted (a wait, a write, a COPY the cancellation ended)
            // surfaces here; the client is told what happened, not how it was interrupted.
            LogTakenOver(logger, caller.Subject, streamId);
            throw Errors.Refused(StatusCode.Aborted, IngestRefusal.StreamTakenOver, "another connection opened this stream");
        }
        catch (OperationCanceledException) when (lifetime.ApplicationStopping.IsCancellationRequested)
        {
            throw new RpcException(new Status(StatusCode.Unavailable, "the server is shutting down; reconnect to resume"));
        }
        catch (Exception e) when (e is not RpcException && ReplicationDurability.IsDatabaseLostWithin(e))
        {
            // A failover ends the call here: the primary vanished under a commit or a read, or a
            // demoted one refused a write. The client reconnects, and the data source finds the
            // new primary (Target Session Attributes=primary) when the stream opens again.
            LogDatabaseUnavailable(logger, caller.Subject, streamId, e.Message);
            throw Errors.DatabaseUnavailable("nothing unacknowledged was kept, reconnect to resume");
        }
    }

    /// <summary>A message with no kind; one whose bytes do not parse is refused before it gets here (Hosting/MalformedMessageRefusal).</summary>
    internal static RpcException NoKind() =>
        Errors.Refused(StatusCode.InvalidArgument, IngestRefusal.MessageMalformed, "the message sets no kind: send exactly one of open, batch and heartbeat");

    internal static bool IsValidStreamId(string streamId)
    {
        if (streamId.Length is 0 or > CanonicalEncoding.StreamIdBytesMax)
        {
            return false;
        }

        foreach (char c in streamId)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or ':' or '-'))
            {
                return false;
            }
        }

        return true;
    }

    [LoggerMessage(EventId = 2001, Level = LogLevel.Information, Message = "Stream {ProviderId}/{StreamId} opened at {CommittedSequence} by {Peer}")]
    private static partial void LogOpened(ILogger logger, string providerId, string streamId, ulong committedSequence, string peer);

    [LoggerMessage(EventId = 2002, Level = LogLevel.Warning, Message = "Stream {ProviderId}/{StreamId} refused a message: {Reason}: {Detail}")]
    private static partial void LogRefused(ILogger logger, string providerId, string streamId, string reason, string detail);

    [LoggerMessage(EventId = 2004, Level = LogLevel.Warning, Message = "Stream {ProviderId}/{StreamId} lost the database: {Detail}")]
    private static partial void LogDatabaseUnavailable(ILogger logger, string providerId, string streamId, string detail);

    [LoggerMessage(EventId = 2003, Level = LogLevel.Information, Message = "Stream {ProviderId}/{StreamId} was taken over by a newer connection")]
    private static partial void LogTakenOver(ILogger logger, string providerId, string streamId);
}
