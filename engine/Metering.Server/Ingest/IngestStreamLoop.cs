using System.Diagnostics;
using Google.Protobuf;
using Grpc.Core;
using Metering.Engine.Ingest;
using Metering.Engine.Signing;
using Metering.Engine.Telemetry;
using Metering.Protocol.V1;
using Metering.Server.Access;
using Metering.Server.Hosting;

namespace Metering.Server.Ingest;

/// <summary>
/// The messages of one open ingest stream, answered in the order they came. A batch that follows
/// the last one begun is begun ahead (<see cref="IngestSession.BeginAhead(IReadOnlyList{IngestRecord}, CancellationToken)"/>): validated, chained
/// and queued for the provider's next group commit while the batch before it may still be
/// committing, so that a client with two or more batches in flight keeps its provider's groups
/// full. The next message is read while the oldest commit runs, with a read that the commit's
/// failure cancels, so a failure is reported at once and not when the client next sends.
///
/// Order is kept by one rule: nothing is written to the client, and nothing is refused, before
/// every batch ahead of it has been acknowledged; a batch is acknowledged only after the commit
/// that holds it. A batch whose commit failed ends the call with that failure, after every later
/// batch in flight has ended unwritten (each continues the one that failed).
/// </summary>
internal sealed class IngestStreamLoop(
    IAsyncStreamReader<IngestRequest> requestStream,
    IServerStreamWriter<IngestResponse> responseStream,
    IngestSession session,
    string providerId,
    CredentialRecheck recheck,
    ReplicationMonitor replication,
    ReceiptSigner receipts,
    CancellationToken streamToken)
{
    // The batches in flight, oldest first, each with its records (which a registry change sends
    // through AppendAsync again) and the time its message arrived. Each holds a view of its own:
    // a view points at its message's records until the batch ends.
    private readonly Queue<InFlight> _inFlight = new();
    private readonly Stack<IngestRecordView> _views = new();
    private readonly IngestRecordView _appendView = new();

    /// <summary>
    /// The records of the batch being answered (acknowledged or refused): the batch a refusal that
    /// ends the call belongs to, which need not be the last message read.
    /// </summary>
    public int AnsweringRecords { get; private set; }

    public async Task RunAsync()
    {
        try
        {
            while (await MoveNextAsync())
            {
                long receivedTimestamp = Stopwatch.GetTimestamp();
                IngestRequest request = requestStream.Current;
                await InOrderAsync(recheck.CheckAsync(streamToken).AsTask());
                switch (request.KindCase)
                {
                    case IngestRequest.KindOneofCase.Heartbeat:
                        await EndInFlightAsync();
                        await HeartbeatAsync(request.Heartbeat);
                        break;
                    case IngestRequest.KindOneofCase.Batch:
                        await BatchAsync(request.Batch, receivedTimestamp);
                        break;
                    case IngestRequest.KindOneofCase.None:
                        await EndInFlightAsync();
                        throw IngestGrpcService.NoKind();
                    default:
                        await EndInFlightAsync();
                        throw Errors.Refused(StatusCode.FailedPrecondition, IngestRefusal.StreamNotOpen, "the stream is already open; send only batches and heartbeats after 'open'");
                }
            }

            await EndInFlightAsync();
        }
        finally
        {
            // The stream is let go (to a takeover, or to nobody) only once no batch of it can
            // still commit; the call's own error, if any, says what happened.
            await session.AbandonAheadAsync();
        }
    }

    private async Task BatchAsync(UsageBatch batch, long receivedTimestamp)
    {
        if (replication.Refusal() is { } beforeAppend)
        {
            await EndInFlightAsync();
            throw beforeAppend;
        }

        AnsweringRecords = batch.Records.Count;
        IngestRecordView records = _views.TryPop(out IngestRecordView? free) ? free.Over(batch.Records) : new IngestRecordView().Over(batch.Records);
        if (!session.CanBeginAhead(records))
        {
            // A replay, a gap, an empty batch, or a stream that takes one batch at a time: after
            // everything ahead of it, and through the path that answers each of those.
            _views.Push(records);
            await EndInFlightAsync();
            AnsweringRecords = batch.Records.Count;
            await AcknowledgeAsync(await session.AppendAsync(_appendView.Over(batch.Records), streamToken), receivedTimestamp);
            return;
        }

        try
        {
            session.BeginAhead(records, streamToken);
        }
        catch (IngestRefusedException)
        {
            _views.Push(records);
            await EndInFlightAsync();
            AnsweringRecords = batch.Records.Count;
            throw;
        }

        _inFlight.Enqueue(new InFlight(records, receivedTimestamp));
        if (session.AheadCount == session.AheadMax)
        {
            // No slot for the next batch: it waits, unread, until the oldest is acknowledged.
            await EndOldestAsync();
        }
    }

    /// <summary>
    /// Reads the next message while the oldest batch's commit runs. A commit that ends first is
    /// acknowledged at once; one that fails cancels the read and ends the call with its error.
    /// </summary>
    private async Task<bool> MoveNextAsync()
    {
        if (_inFlight.Count == 0)
        {
            return await requestStream.MoveNext(streamToken);
        }

        using var readCancel = CancellationTokenSource.CreateLinkedTokenSource(streamToken);
        Task<bool> read = requestStream.MoveNext(readCancel.Token);
        while (_inFlight.Count > 0 && !read.IsCompleted)
        {
            Task oldest = session.OldestAhead;
            if (await Task.WhenAny(read, oldest) != oldest)
            {
                break;
            }

            try
            {
                await EndOldestAsync();
            }
            catch (Exception)
            {
                // Nothing more is read from a call that ends here; the read is let go before the
                // error leaves, so that no read is left pending on the request body.
                await readCancel.CancelAsync();
                try
                {
                    await read;
                }
                catch (Exception)
                {
                    // Cancelled, or the call ended anyway: the commit's error is what the client hears.
                }

                throw;
            }
        }

        return await read;
    }

    /// <summary>Acknowledges every batch in flight, oldest first.</summary>
    private async Task EndInFlightAsync()
    {
        while (_inFlight.Count > 0)
        {
            await EndOldestAsync();
        }
    }

    /// <summary>Waits for an awaited check of the message and, should it refuse, refuses only after the batches ahead are acknowledged.</summary>
    private async Task InOrderAsync(Task check)
    {
        try
        {
            await check;
        }
        catch (RpcException)
        {
            await EndInFlightAsync();
            throw;
        }
    }

    /// <summary>
    /// Waits for the oldest batch's commit and acknowledges it. When the registry changed the
    /// provider under it, none of the batches in flight committed: they are checked again against
    /// what the registry says now and appended one by one, each acknowledged or refused in turn.
    /// </summary>
    private async Task EndOldestAsync()
    {
        AnsweringRecords = _inFlight.Peek().Records.Count;
        if (await session.EndOldestAheadAsync() is { } outcome)
        {
            InFlight done = _inFlight.Dequeue();
            _views.Push(done.Records);
            await AcknowledgeAsync(outcome, done.ReceivedTimestamp);
            return;
        }

        await session.RestartAheadAsync(streamToken);
        while (_inFlight.TryDequeue(out InFlight again))
        {
            AnsweringRecords = again.Records.Count;
            BatchOutcome appended = await session.AppendAsync(again.Records, streamToken);
            _views.Push(again.Records);
            await AcknowledgeAsync(appended, again.ReceivedTimestamp);
        }
    }

    private async Task AcknowledgeAsync(BatchOutcome outcome, long receivedTimestamp)
    {
        // Replication may have been lost while the batch committed. Then it stays committed but
        // unacknowledged: the client sends it again after reconnecting and gets the replay's
        // acknowledgement, or, after a failover that lost it, commits it anew.
        if (replication.Refusal() is { } afterCommit)
        {
            throw afterCommit;
        }

        // Signed after the commit, outside its transaction and any lock: one signature per batch,
        // whatever its size, so the cost stays off the per-record path.
        SignedReceipt receipt = receipts.Sign(providerId, session.StreamId, outcome.CommittedSequence, outcome.ChainHead);
        await responseStream.WriteAsync(new IngestResponse
        {
            Ack = new BatchAck
            {
                FirstSequence = outcome.FirstSequence,
                LastSequence = outcome.LastSequence,
                CommittedSequence = outcome.CommittedSequence,
                ChainHead = UnsafeByteOperations.UnsafeWrap(outcome.ChainHead),
                ReplayedRecords = (uint)outcome.ReplayedRecords,
                Receipt = ReceiptMessages.ToMessage(receipt),
            },
        }, streamToken);
        MeteringTelemetry.Acknowledged(receivedTimestamp);
    }

    private async Task HeartbeatAsync(Heartbeat heartbeat)
    {
        if (replication.Refusal() is { } heartbeatNotDurable)
        {
            throw heartbeatNotDurable;
        }

        HeartbeatOutcome beat = await session.HeartbeatAsync(heartbeat.HasClientUnixMs ? heartbeat.ClientUnixMs : null, streamToken);
        MeteringTelemetry.Heartbeat(providerId, beat.Recorded);
        await responseStream.WriteAsync(new IngestResponse
        {
            HeartbeatAck = new HeartbeatAck
            {
                MinuteUnixMs = beat.MinuteUnixMs,
                ServerUnixMs = beat.ServerUnixMs,
                Recorded = beat.Recorded,
                CommittedSequence = beat.CommittedSequence,
            },
        }, streamToken);
    }

    private readonly record struct InFlight(IngestRecordView Records, long ReceivedTimestamp);
}
