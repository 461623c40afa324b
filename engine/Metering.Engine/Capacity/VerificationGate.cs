using System.Collections.Concurrent;

namespace Metering.Engine.Capacity;

/// <summary>
/// Admits report verifications, the CPU-heavy recomputation of opened leaves. A provider holds
/// at most one verification at a time: a second call of that provider is refused while the first
/// runs (<see cref="TryEnter"/>), before it spends its nonce. Over all providers at most
/// <c>concurrentMax</c> verifications run; the rest wait for a slot, and since each provider
/// has at most one waiter the queue is bounded by the number of providers. The gate lives in
/// the server process: one server instance verifies a provider's reports.
/// </summary>
public sealed class VerificationGate : IDisposable
{
    private readonly ConcurrentDictionary<string, byte> _providers = new(StringComparer.Ordinal);
    private readonly SemaphoreSlim _slots;
    private long _started;

    public VerificationGate(int concurrentMax)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(concurrentMax, 1);
        _slots = new SemaphoreSlim(concurrentMax, concurrentMax);
    }

    /// <summary>Verifications started since the server started: what a flood of copies would drive up, counted rather than timed.</summary>
    public long Started => Interlocked.Read(ref _started);

    /// <summary>Takes the provider's one place; false when a verification of that provider holds it.</summary>
    public bool TryEnter(string providerId) => _providers.TryAdd(providerId, 0);

    /// <summary>Gives the provider's place back.</summary>
    public void Leave(string providerId) => _providers.TryRemove(providerId, out _);

    /// <summary>Runs one verification once a slot is free.</summary>
    public async Task<T> RunAsync<T>(Func<T> verification, CancellationToken cancellationToken)
    {
        await _slots.WaitAsync(cancellationToken);
        try
        {
            Interlocked.Increment(ref _started);
            return verification();
        }
        finally
        {
            _slots.Release();
        }
    }

    public void Dispose() => _slots.Dispose();
}
