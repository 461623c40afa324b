using System.Diagnostics;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Metering.Client.Channels;
using Metering.Client.Streaming;
using Metering.Protocol.V1;

namespace Metering.Bench.Load;

/// <summary>
/// The load's client on the baseline's terms (`--client prepared`): every stream's batches are
/// generated and serialised as <see cref="IngestRequest"/> messages before the clock starts, as
/// the binary COPY baseline's rows are encoded before its clock starts, and are then written to
/// the call as they are, through a marshaller that passes the bytes through. What the server
/// receives is byte for byte what the agent's streamer sends for the same records and batch
/// size, so what is stored and acknowledged is the same; only the client's record generation and
/// protobuf serialisation leave the timed part. Acknowledgements are read as the agent's
/// streamer reads them: each must be an ack that commits exactly the batch sent in its turn, with
/// a chain head and a signed receipt. There is no reconnect: on loopback a dropped call fails the
/// run instead.
/// </summary>
internal static class PreparedStreams
{
    /// <summary>One stream's serialised batch messages and the last sequence each one carries.</summary>
    internal sealed record Prepared(string StreamId, byte[][] Messages, ulong[] LastSequences)
    {
        public ulong Records => LastSequences.Length == 0 ? 0 : LastSequences[^1];

        public long Bytes => Messages.Sum(m => (long)m.Length);
    }

    // The ingest rpc, with requests that are already serialised: the same service and method
    // names as the generated client's, so the server cannot tell the two apart.
    private static readonly Method<byte[], IngestResponse> StreamMethod = new(
        MethodType.DuplexStreaming,
        IngestService.Descriptor.FullName,
        IngestService.Descriptor.FindMethodByName("Stream").Name,
        Marshallers.Create(static (byte[] message) => message, static (byte[] message) => message),
        Marshallers.Create(static (IngestResponse response) => response.ToByteArray(), IngestResponse.Parser.ParseFrom));

    /// <summary>Generates and serialises every batch of every stream (not timed).</summary>
    public static Prepared[] Prepare(LoadStream[] streams, int batchRecords)
    {
        var prepared = new Prepared[streams.Length];
        for (int i = 0; i < streams.Length; i++)
        {
            LoadStream stream = streams[i];
            int batches = (int)((stream.Records + (ulong)batchRecords - 1) / (ulong)batchRecords);
            var messages = new byte[batches][];
            var lastSequences = new ulong[batches];
            ulong next = 1;
            for (int b = 0; b < batches; b++)
            {
                var batch = new UsageBatch();
                ulong end = Math.Min(stream.Records, next + (ulong)batchRecords - 1);
                for (ulong sequence = next; sequence <= end; sequence++)
                {
                    batch.Records.Add(stream.RecordAt(sequence));
                }

                messages[b] = new IngestRequest { Batch = batch }.ToByteArray();
                lastSequences[b] = end;
                next = end + 1;
            }

            prepared[i] = new Prepared(stream.StreamId, messages, lastSequences);
        }

        return prepared;
    }

    /// <summary>
    /// Streams one stream's prepared batches over one call with at most <paramref name="windowBatches"/>
    /// unacknowledged, reporting each committed mark and each batch's send-to-acknowledgement time.
    /// </summary>
    public static async Task<StreamResult> RunAsync(GrpcChannel channel, string apiKey, Prepared stream, int batchRecords, int windowBatches,
        Action<ulong> committedMark, Action<TimeSpan> ackLatency)
    {
        using AsyncDuplexStreamingCall<byte[], IngestResponse> call = channel.CreateCallInvoker()
            .AsyncDuplexStreamingCall(StreamMethod, null, new CallOptions(MeteringChannel.Bearer(apiKey)));
        await call.RequestStream.WriteAsync(new IngestRequest { Open = new OpenStream { StreamId = stream.StreamId } }.ToByteArray());
        if (!await call.ResponseStream.MoveNext(CancellationToken.None) || call.ResponseStream.Current.KindCase != IngestResponse.KindOneofCase.Opened)
        {
            throw new InvalidOperationException($"{stream.StreamId}: the server did not answer 'open' with 'opened'.");
        }

        StreamOpened opened = call.ResponseStream.Current.Opened;
        if (opened.CommittedSequence != 0)
        {
            throw new InvalidOperationException($"{stream.StreamId}: a fresh stream opened at {opened.CommittedSequence}, not 0.");
        }

        if (opened.BatchRecordsMax < batchRecords)
        {
            throw new InvalidOperationException($"{stream.StreamId}: the batches were prepared with {batchRecords} records, above the server's {opened.BatchRecordsMax}.");
        }

        using var window = new SemaphoreSlim(windowBatches);
        var sentAt = new System.Collections.Concurrent.ConcurrentQueue<long>();
        using var failed = new CancellationTokenSource();
        Task sender = Task.Run(async () =>
        {
            foreach (byte[] message in stream.Messages)
            {
                await window.WaitAsync(failed.Token);
                sentAt.Enqueue(Stopwatch.GetTimestamp());
                await call.RequestStream.WriteAsync(message, failed.Token);
            }

            await call.RequestStream.CompleteAsync();
        });

        ulong committed = 0;
        byte[] head = [];
        int acknowledged = 0;
        try
        {
            while (await call.ResponseStream.MoveNext(CancellationToken.None))
            {
                // The same reading of each acknowledgement as the agent's streamer, held to what
                // this client sent in its turn: a prepared batch cannot adapt to a different answer.
                BatchAck ack = call.ResponseStream.Current.Ack ?? throw new InvalidOperationException($"{stream.StreamId}: expected an acknowledgement, got {call.ResponseStream.Current.KindCase}.");
                if (sentAt.TryDequeue(out long started))
                {
                    ackLatency(Stopwatch.GetElapsedTime(started));
                }

                ulong expected = stream.LastSequences[acknowledged];
                if (ack.CommittedSequence != expected || ack.LastSequence != expected || ack.ChainHead.Length != 32 || ack.Receipt is null || ack.Receipt.Signature.IsEmpty || ack.ReplayedRecords != 0)
                {
                    throw new InvalidOperationException($"{stream.StreamId}: acknowledgement {acknowledged + 1} committed {ack.CommittedSequence} (last {ack.LastSequence}), "
                        + $"where batch {acknowledged + 1} ends at {expected}, or came without a chain head or a signed receipt, or as a replay.");
                }

                committed = ack.CommittedSequence;
                head = ack.ChainHead.ToByteArray();
                acknowledged++;
                committedMark(committed);
                window.Release();
            }

            await sender;
        }
        catch
        {
            await failed.CancelAsync();
            throw;
        }

        if (acknowledged != stream.Messages.Length)
        {
            throw new InvalidOperationException($"{stream.StreamId}: {acknowledged} of {stream.Messages.Length} batches acknowledged before the server ended the call.");
        }

        return new StreamResult(stream.StreamId, committed, head, 1, 0);
    }
}
