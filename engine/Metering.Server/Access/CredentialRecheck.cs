using System.Diagnostics;
using Grpc.Core;
using Metering.Protocol.V1;

namespace Metering.Server.Access;

/// <summary>How often an open stream looks its key up again.</summary>
public sealed record CredentialRecheckPolicy(TimeSpan Interval)
{
    /// <summary>A revoked key loses its open streams within this: the recheck goes to the database, not the authentication cache.</summary>
    public static readonly CredentialRecheckPolicy Default = new(TimeSpan.FromSeconds(5));

    /// <summary>Longest interval the server accepts: revocation must reach open streams within seconds.</summary>
    public static readonly TimeSpan IntervalMax = TimeSpan.FromMinutes(1);

    public void Validate()
    {
        if (Interval < TimeSpan.Zero || Interval > IntervalMax)
        {
            throw new ArgumentOutOfRangeException(nameof(Interval), Interval, $"The credential recheck interval must be 0 (every message) to {IntervalMax.TotalSeconds:0} s.");
        }
    }
}

/// <summary>
/// Streams outlive the check made when they open. Every policy interval a long call looks its key
/// up again, so that a revoked key loses an open stream within that time.
/// </summary>
internal sealed class CredentialRecheck(KeyLookupCache credentials, CredentialRecheckPolicy policy, ServerCallContext context)
{
    private long _checkedAt = Stopwatch.GetTimestamp();

    public async ValueTask CheckAsync(CancellationToken cancellationToken)
    {
        if (Stopwatch.GetElapsedTime(_checkedAt) < policy.Interval)
        {
            return;
        }

        if (AuthenticationInterceptor.KeyOf(context) is not { } key || !KeyLookupCache.IsWellFormed(key) || await credentials.LookUpAsync(key, cancellationToken) is null)
        {
            throw CallerRefusals.Refused(CallerRefusal.Unauthenticated, "the API key was revoked while the stream was open; nothing after the last acknowledgement was committed");
        }

        _checkedAt = Stopwatch.GetTimestamp();
    }
}
