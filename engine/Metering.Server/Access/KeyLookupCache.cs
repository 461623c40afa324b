using System.Collections.Concurrent;
using System.Diagnostics;
using Metering.Engine.Access;
using Metering.Engine.Telemetry;
using Metering.Protocol.V1;

namespace Metering.Server.Access;

/// <summary>
/// Key look-ups, valid or not, remembered for <see cref="CallLimits.AuthenticationCacheMs"/>, so
/// that a busy client does not cost one database query per call; and the keys seen valid in the
/// last <see cref="SeenValidFor"/>, which the per-peer limit on unknown keys lets through.
/// Entries are held by the key's SHA-256, never the key. Each map holds at most
/// <see cref="CallLimits.AuthenticationCacheEntriesMax"/> entries; a full one is emptied, which
/// costs one look-up per key, not memory without bound. A revocation reaches new calls within
/// the cache time; open streams' rechecks look the key up afresh.
/// </summary>
internal sealed class KeyLookupCache(CredentialStore credentials, CallLimits limits)
{
    /// <summary>How long a key seen valid is exempt from its peer's unknown-key limit.</summary>
    public static readonly TimeSpan SeenValidFor = TimeSpan.FromMinutes(10);

    private readonly ConcurrentDictionary<string, (Authentication? Found, long At)> _results = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, long> _seenValid = new(StringComparer.Ordinal);

    /// <summary>Bumped by every <see cref="Forget"/>; a look-up that spans one is not remembered.</summary>
    private long _generation;

    /// <summary>Whether a key is worth looking up at all: non-empty and not longer than any issued key.</summary>
    public static bool IsWellFormed(string? key) => key is { Length: > 0 and <= CredentialStore.KeyLengthMax };

    /// <summary>The remembered result for <paramref name="key"/> while it is fresh.</summary>
    public bool TryGetFresh(string key, out Authentication? found)
    {
        if (_results.TryGetValue(Id(key), out var entry) && Stopwatch.GetElapsedTime(entry.At).TotalMilliseconds < limits.AuthenticationCacheMs)
        {
            found = entry.Found;
            MeteringTelemetry.KeyLookup(cacheHit: true);
            return true;
        }

        found = null;
        return false;
    }

    /// <summary>Whether <paramref name="key"/> was valid at a look-up within <see cref="SeenValidFor"/>.</summary>
    public bool WasSeenValid(string key) => _seenValid.TryGetValue(Id(key), out long at) && Stopwatch.GetElapsedTime(at) < SeenValidFor;

    /// <summary>Looks the key up in the database and remembers the answer: its actor and its client-certificate pin.</summary>
    public async Task<Authentication?> LookUpAsync(string key, CancellationToken cancellationToken)
    {
        // A look-up that read the database before a revocation committed must not land in the
        // cache after Forget() emptied it: it is remembered only if no Forget() came in between.
        long generation = Volatile.Read(ref _generation);
        MeteringTelemetry.KeyLookup(cacheHit: false);
        Authentication? found = await credentials.FindAsync(key, cancellationToken);
        string id = Id(key);
        long now = Stopwatch.GetTimestamp();
        if (limits.AuthenticationCacheMs > 0 && Volatile.Read(ref _generation) == generation)
        {
            Remember(_results, id, (found, now));
        }

        if (found is not null)
        {
            Remember(_seenValid, id, now);
        }

        return found;
    }

    /// <summary>The fresh remembered answer, or a look-up (for calls already authenticated, which need no per-peer limit).</summary>
    public async ValueTask<Authentication?> AuthenticateAsync(string? key, CancellationToken cancellationToken)
    {
        if (!IsWellFormed(key))
        {
            return null;
        }

        return TryGetFresh(key!, out Authentication? found) ? found : await LookUpAsync(key!, cancellationToken);
    }

    /// <summary>
    /// Drops every remembered answer, after a credential was revoked or its pin changed through this
    /// server: the next call with any key is looked up afresh. Entries are held by key hash, not
    /// by credential, so they cannot be dropped one by one; the cost is one look-up per active key.
    /// </summary>
    public void Forget()
    {
        Interlocked.Increment(ref _generation);
        _results.Clear();
    }

    private void Remember<T>(ConcurrentDictionary<string, T> map, string id, T value)
    {
        if (map.Count >= limits.AuthenticationCacheEntriesMax && !map.ContainsKey(id))
        {
            map.Clear();
        }

        map[id] = value;
    }

    private static string Id(string key) => Convert.ToBase64String(CredentialStore.Hash(key));
}
