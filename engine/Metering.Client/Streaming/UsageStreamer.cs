using System.Diagnostics;
using Grpc.Core;
using Grpc.Net.Client;
using Metering.Client.Channels;
using Metering.Client.Receipts;
using Metering.Protocol.V1;

namespace Metering.Client.Streaming;

/// <summary>How the streamer batches, pipelines and reconnects.</summary>
public sealed class StreamerOptions
{
    /// <summary>Records per batch; capped by what the server announces.</summary>
    public int BatchRecords { get; set; } = 2_000;

    /// <summary>Batches sent ahead of their acknowledgements.</summary>
    public int WindowBatches { get; set; } = 4;

    /// <summary>Reconnect attempts in a row before giving up.</summary>
    public int ReconnectAttemptsMax { get; set; } = 20;

    /// <summary>First wait before a reconnect; doubles up to 5 s.</summary>
    public TimeSpan ReconnectDelay { get; set; } = TimeSpan.FromMilliseconds(100);

    /// <summary>For demonstrations: cut the connection once, after this many records were sent.</summary>
    public ulong? DropOnceAfterRecords { get; set; }

    /// <summary>Called after each acknowledgement with the committed mark.</summary>
    public Action<ulong>? Committed { get; set; }

    /// <summary>Called with each batch's send-to-acknowledgement time.</summary>
    public Action<TimeSpan>? AckLatency { get; set; }

    /// <summary>Called when the stream reconnects, with the reason.</summary>
    public Action<string>? Reconnecting { get; set; }

    /// <summary>
    /// For a live platform: the highest sequence its accounting holds so far. When the agent has
    /// sent everything up to it, it is idle and looks again every <see cref="IdlePollInterval"/>.
    /// Null (the default): every record up to the run's last sequence exists from the start, as
    /// when a past day is replayed, and the agent is never idle.
    /// </summary>
    public Func<ulong>? RecordedThrough { get; set; }

    /// <summary>How often an idle agent looks again at <see cref="RecordedThrough"/>.</summary>
    public TimeSpan IdlePollInterval { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>
    /// Off (null) by default. While the agent is idle it sends a heartbeat whenever it has sent
    /// nothing for this long, so that the server's audit can tell an idle platform from a dead one
    /// (its silence threshold is two hours by default). The server records at most one heartbeat
    /// minute per stream, so an interval of up to a minute loses nothing. An interval shorter than
    /// twice the spacing the server's heartbeats_per_minute_max allows is raised to that, so that
    /// heartbeats bunched by the network stay within it.
    /// </summary>
    public TimeSpan? HeartbeatInterval { get; set; }

    /// <summary>Called with each heartbeat's acknowledgement.</summary>
    public Action<HeartbeatAck>? HeartbeatAcknowledged { get; set; }

    /// <summary>
    /// What the server acknowledged for the stream before this streamer started (its committed
    /// mark and chain head, as an agent that restarts keeps them): a server that reopens the
    /// stream behind it, or at it with another head, is refused as one that lost acknowledged
    /// records (<see cref="ServerBehindException"/>). Null: only this streamer's own
    /// acknowledgements are compared.
    /// </summary>
    public (ulong CommittedSequence, byte[] ChainHead)? AcknowledgedBefore { get; set; }

    /// <summary>
    /// Where the server's signed receipts go: one for every acknowledged batch, and one for the
    /// point a reconnect resumes from. Null: receipts are not kept (they then prove nothing later).
    /// </summary>
    public ReceiptsFile? Receipts { get; set; }
}

/// <summary>The end of a streaming run.</summary>
public sealed record StreamResult(string StreamId, ulong CommittedSequence, byte[] ChainHead, int Connections, ulong ReplayedRecords);

/// <summary>
/// Streams one usage stream to the server and survives disconnects: on every (re)connect it asks
/// the server where the stream stands and continues with the next record, so nothing is lost and
/// nothing is sent twice after an acknowledgement. Records are produced on demand by sequence
/// number, as a platform reading its own accounting database would; a live platform says how far
/// its accounting has got, and while the agent waits for more it can send heartbeats.
/// </summary>
public sealed class UsageStreamer(GrpcChannel channel, string apiKey, StreamerOptions options)
{
    private readonly IngestService.IngestServiceClient _client = new(channel);
    private bool _dropped;
    private ulong _acknowledged = options.AcknowledgedBefore?.CommittedSequence ?? 0;
    private byte[]? _acknowledgedHead = options.AcknowledgedBefore?.ChainHead;

    public async Task<StreamResult> RunAsync(string streamId, Func<ulong, UsageRecord> recordAt, ulong lastSequence, CancellationToken cancellationToken)
    {
        if (options.HeartbeatInterval <= TimeSpan.Zero || options.IdlePollInterval <= TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(options), "HeartbeatInterval and IdlePollInterval must be positive.");
        }

        Metadata headers = MeteringChannel.Bearer(apiKey);
        int connections = 0;
        int failuresInRow = 0;
        ulong replayed = 0;
        TimeSpan delay = options.ReconnectDelay;
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            connections++;
            ulong committedBefore = Volatile.Read(ref _acknowledged);
            using var connection = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            try
            {
                var outcome = await RunConnectionAsync(streamId, recordAt, lastSequence, headers, connection, cancellationToken);
                replayed += outcome.Replayed;
                if (outcome.Committed >= lastSequence)
                {
                    return new StreamResult(streamId, outcome.Committed, outcome.Head, connections, replayed);
                }

                failuresInRow = 0;
            }
            catch (RpcException e) when (IsTransient(e, cancellationToken))
            {
                // A connection that moved the stream on before it failed starts the count afresh:
                // the limit is on failures in a row, not over the agent's life.
                if (Volatile.Read(ref _acknowledged) > committedBefore)
                {
                    failuresInRow = 0;
                    delay = options.ReconnectDelay;
                }

                if (++failuresInRow > options.ReconnectAttemptsMax)
                {
                    throw;
                }

                options.Reconnecting?.Invoke($"{e.StatusCode}: {e.Status.Detail}");
                await Task.Delay(delay, cancellationToken);
                delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, TimeSpan.FromSeconds(5).Ticks));
            }
        }
    }

    private async Task<(ulong Committed, byte[] Head, ulong Replayed)> RunConnectionAsync(
        string streamId, Func<ulong, UsageRecord> recordAt, ulong lastSequence, Metadata headers, CancellationTokenSource connection, CancellationToken runCancelled)
    {
        using AsyncDuplexStreamingCall<IngestRequest, IngestResponse> call = _client.Stream(headers, cancellationToken: connection.Token);
        await call.RequestStream.WriteAsync(new IngestRequest { Open = new OpenStream { StreamId = streamId } }, connection.Token);
        if (!await call.ResponseStream.MoveNext(connection.Token) || call.ResponseStream.Current.KindCase != IngestResponse.KindOneofCase.Opened)
        {
            throw new RpcException(new Grpc.Core.Status(StatusCode.Internal, "the server did not answer 'open' with 'opened'"));
        }

        StreamOpened opened = call.ResponseStream.Current.Opened;
        ulong committed = opened.CommittedSequence;
        byte[] head = opened.ChainHead.ToByteArray();
        CheckNotBehind(streamId, committed, head);
        if (opened.Receipt is not null)
        {
            // The mark the stream reopens at comes with a signed receipt: it is acknowledged too.
            _acknowledgedHead = head;
            Volatile.Write(ref _acknowledged, committed);
        }

        if (opened.Receipt is not null)
        {
            // The acknowledgement of the last batch may have been lost with the connection; the
            // resume point's receipt covers everything up to it.
            options.Receipts?.Append(streamId, committed, head, opened.Receipt);
        }

        int batchRecords = (int)Math.Min((uint)options.BatchRecords, opened.BatchRecordsMax);
        TimeSpan? heartbeatEvery = options.HeartbeatInterval is TimeSpan every && opened.HeartbeatsPerMinuteMax > 0
            ? TimeSpan.FromTicks(Math.Max(every.Ticks, TimeSpan.FromMinutes(2).Ticks / opened.HeartbeatsPerMinuteMax))
            : options.HeartbeatInterval;
        if (committed >= lastSequence)
        {
            await call.RequestStream.CompleteAsync();
            return (committed, head, 0);
        }

        using var window = new SemaphoreSlim(options.WindowBatches);
        var sentAt = new System.Collections.Concurrent.ConcurrentQueue<long>();
        ulong replayed = 0;

        Exception? sendFailure = null;
        long lastSentAt = Stopwatch.GetTimestamp();

        // Nothing to send: wait a poll interval, or less if a heartbeat falls due sooner, and send
        // the heartbeat when the stream has been quiet for the whole heartbeat interval.
        async Task IdleAsync()
        {
            TimeSpan wait = options.IdlePollInterval;
            if (heartbeatEvery is TimeSpan every)
            {
                TimeSpan quiet = Stopwatch.GetElapsedTime(lastSentAt);
                if (quiet >= every)
                {
                    var heartbeat = new Heartbeat { ClientUnixMs = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() };
                    await call.RequestStream.WriteAsync(new IngestRequest { Heartbeat = heartbeat }, connection.Token);
                    lastSentAt = Stopwatch.GetTimestamp();
                    quiet = TimeSpan.Zero;
                }

                wait = every - quiet < wait ? every - quiet : wait;
            }

            await Task.Delay(wait, connection.Token);
        }

        async Task SendAsync()
        {
            ulong next = committed + 1;
            while (next <= lastSequence)
            {
                ulong available = Math.Min(lastSequence, options.RecordedThrough?.Invoke() ?? lastSequence);
                if (next > available)
                {
                    await IdleAsync();
                    continue;
                }

                await window.WaitAsync(connection.Token);
                var batch = new UsageBatch();
                ulong end = Math.Min(available, next + (ulong)batchRecords - 1);
                for (ulong sequence = next; sequence <= end; sequence++)
                {
                    batch.Records.Add(recordAt(sequence));
                }

                sentAt.Enqueue(Stopwatch.GetTimestamp());
                await call.RequestStream.WriteAsync(new IngestRequest { Batch = batch }, connection.Token);
                lastSentAt = Stopwatch.GetTimestamp();
                next = end + 1;
                if (!_dropped && options.DropOnceAfterRecords is ulong dropAt && next > dropAt)
                {
                    // Simulates a network failure: the call is torn down with batches in flight.
                    _dropped = true;
                    await connection.CancelAsync();
                    return;
                }
            }

            await call.RequestStream.CompleteAsync();
        }

        Task sender = Task.Run(async () =>
        {
            try
            {
                await SendAsync();
            }
            catch (IOException)
            {
                // The transport broke under a write (a server killed mid-stream resets its TLS
                // connection): end this connection, and the loop below reports it as a drop to
                // reconnect from, as the reader would.
                await connection.CancelAsync();
            }
            catch (Exception e) when (e is not OperationCanceledException and not RpcException)
            {
                // A failure to produce records is the agent's own fault, not the network's: stop
                // this connection and report it rather than wait for acknowledgements forever.
                sendFailure = e;
                await connection.CancelAsync();
            }
        }, connection.Token);

        try
        {
            while (await call.ResponseStream.MoveNext(connection.Token))
            {
                if (call.ResponseStream.Current.KindCase == IngestResponse.KindOneofCase.HeartbeatAck)
                {
                    options.HeartbeatAcknowledged?.Invoke(call.ResponseStream.Current.HeartbeatAck);
                    continue;
                }

                BatchAck ack = call.ResponseStream.Current.Ack ?? throw new RpcException(new Grpc.Core.Status(StatusCode.Internal, "expected an acknowledgement"));
                if (sentAt.TryDequeue(out long started))
                {
                    options.AckLatency?.Invoke(Stopwatch.GetElapsedTime(started));
                }

                committed = ack.CommittedSequence;
                head = ack.ChainHead.ToByteArray();
                _acknowledgedHead = head;
                Volatile.Write(ref _acknowledged, committed);
                replayed += ack.ReplayedRecords;
                if (ack.Receipt is not null)
                {
                    options.Receipts?.Append(streamId, committed, head, ack.Receipt);
                }

                options.Committed?.Invoke(committed);
                window.Release();
            }

            await sender;
        }
        catch (Exception) when (sendFailure is not null)
        {
            throw new InvalidOperationException($"The agent failed to produce or send records: {sendFailure.Message}", sendFailure);
        }
        catch (Exception) when (connection.IsCancellationRequested && !runCancelled.IsCancellationRequested)
        {
            // Our own simulated drop: report it as the transport would.
            throw new RpcException(new Grpc.Core.Status(StatusCode.Unavailable, "connection dropped"));
        }

        return (committed, head, replayed);
    }

    /// <summary>
    /// A server that reopens the stream behind a mark it acknowledged, or at that mark with
    /// another chain head, lost or rewrote records it promised to keep (an asynchronous failover,
    /// a restore from backup, an insider). Streaming on would paper over it with records sent
    /// again, so the streamer stops and says so; it is never retried. A mark ahead of the last
    /// acknowledgement is normal: an acknowledgement lost with the connection.
    /// </summary>
    private void CheckNotBehind(string streamId, ulong committed, byte[] head)
    {
        ulong acknowledged = Volatile.Read(ref _acknowledged);
        if (committed < acknowledged)
        {
            throw new ServerBehindException(streamId, acknowledged, committed,
                $"{streamId}: the server reopened the stream at {committed}, behind {acknowledged}, which it acknowledged before: acknowledged records were lost (a failover without synchronous replication, or a restore). Stopped without sending anything.");
        }

        if (committed == acknowledged && _acknowledgedHead is { } known && acknowledged > 0 && !head.AsSpan().SequenceEqual(known))
        {
            throw new ServerBehindException(streamId, acknowledged, committed,
                $"{streamId}: the server holds chain head {Convert.ToHexStringLower(head)} at {committed}, where it acknowledged {Convert.ToHexStringLower(known)}: the stream was rewritten. Stopped without sending anything.");
        }
    }

    /// <summary>Failures worth a reconnect; refusals of content (bad records, gaps, tampering) are not.</summary>
    private static bool IsTransient(RpcException e, CancellationToken runCancelled) =>
        !runCancelled.IsCancellationRequested && e.StatusCode is StatusCode.Unavailable or StatusCode.Aborted or StatusCode.Cancelled
            or StatusCode.DeadlineExceeded or StatusCode.Internal or StatusCode.Unknown;

    /// <summary>The machine-readable refusal reason of an error, or null.</summary>
    public static string? ReasonOf(RpcException e) => MeteringChannel.ReasonOf(e);
}

/// <summary>
/// The server reopened a stream behind, or apart from, what it acknowledged to this streamer: an
/// evidence failure, not a network one, which the streamer never retries.
/// </summary>
public sealed class ServerBehindException(string streamId, ulong acknowledgedSequence, ulong reopenedSequence, string message) : Exception(message)
{
    public string StreamId { get; } = streamId;

    /// <summary>The highest mark the server had acknowledged.</summary>
    public ulong AcknowledgedSequence { get; } = acknowledgedSequence;

    /// <summary>The mark the server reopened the stream at.</summary>
    public ulong ReopenedSequence { get; } = reopenedSequence;
}
