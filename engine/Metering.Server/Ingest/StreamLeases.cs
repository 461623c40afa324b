using System.Collections.Concurrent;
using System.Globalization;
using Grpc.Core;
using Metering.Engine.Ingest;

namespace Metering.Server.Ingest;

/// <summary>
/// Keeps a stream single-writer inside this process: a new connection that opens a stream takes it
/// over from the connection holding it, which is cancelled and waited for before the newcomer
/// reads the stream head. A client that reconnects after a silent network drop thus never waits
/// for the dead connection to time out. Across processes the database's head check guards.
/// The newcomer waits at most <c>takeoverWaitMax</c> (the setting
/// Ingest:TakeoverWaitMax): a holder stuck in a commit keeps the stream until its commit ends.
/// </summary>
internal sealed class StreamLeases(TimeSpan takeoverWaitMax)
{
    private readonly ConcurrentDictionary<(string ProviderId, string StreamId), Lease> _leases = new();

    /// <summary>Leases with the default wait, <see cref="IngestLimits.TakeoverWaitMax"/>.</summary>
    public StreamLeases()
        : this(new IngestLimits().TakeoverWaitMax)
    {
    }

    public async Task<Lease> AcquireAsync(string providerId, string streamId, CancellationToken callCancelled)
    {
        var key = (providerId, streamId);
        var lease = new Lease(this, key, callCancelled);
        Lease? previous = null;
        _leases.AddOrUpdate(key, lease, (_, existing) =>
        {
            previous = existing;
            return lease;
        });

        if (previous is not null)
        {
            previous.TakenOver = true;
            await previous.CancelAsync();
            try
            {
                await previous.Released.WaitAsync(takeoverWaitMax, callCancelled);
            }
            catch (Exception e)
            {
                // Whether this caller gave up or the holder never let go, the new lease must not
                // stay registered without an owner: the next opener would wait on it in vain.
                lease.Dispose();
                if (e is TimeoutException)
                {
                    throw new RpcException(new Status(StatusCode.Unavailable, $"the stream's previous connection did not let go within {Wait(takeoverWaitMax)}; try again"));
                }

                throw;
            }
        }

        return lease;
    }

    public int ActiveCount => _leases.Count;

    private static string Wait(TimeSpan wait) =>
        wait.TotalMilliseconds % 1000 == 0
            ? string.Create(CultureInfo.InvariantCulture, $"{wait.TotalSeconds:0} s")
            : string.Create(CultureInfo.InvariantCulture, $"{wait.TotalMilliseconds:0} ms");

    internal sealed class Lease : IDisposable
    {
        private readonly StreamLeases _owner;
        private readonly (string, string) _key;
        private readonly CancellationTokenSource _cancellation;
        private readonly TaskCompletionSource _released = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public Lease(StreamLeases owner, (string, string) key, CancellationToken callCancelled)
        {
            _owner = owner;
            _key = key;
            _cancellation = CancellationTokenSource.CreateLinkedTokenSource(callCancelled);
        }

        /// <summary>Cancelled when the call ends or another connection takes the stream over.</summary>
        public CancellationToken Token => _cancellation.Token;

        public bool TakenOver { get; set; }

        public Task Released => _released.Task;

        public async Task CancelAsync()
        {
            try
            {
                await _cancellation.CancelAsync();
            }
            catch (ObjectDisposedException)
            {
                // The holder ended on its own between our lookup and the cancel: nothing to stop.
            }
        }

        public void Dispose()
        {
            _owner._leases.TryRemove(new KeyValuePair<(string, string), Lease>(_key, this));
            _cancellation.Dispose();
            _released.TrySetResult();
        }
    }
}
