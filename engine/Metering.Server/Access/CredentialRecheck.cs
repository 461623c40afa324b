using System.Diagnostics;
using Grpc.Core;
using Metering.Engine.Access;
using Metering.Protocol.V1;

namespace Metering.Server.Access;

/// <summary>How often an open stream looks its key up again.</summary>
public sealed record CredentialRecheckPolicy(TimeSpan Interval)
{
    public static readonly CredentialRecheckPolicy Default = new(TimeSpan.FromSeconds(30));
}

/// <summary>
/// Streams outlive the check made when they open. Every policy interval a long call looks its key
/// up again, so that a revoked key loses an open stream within that time.
/// </summary>
internal sealed class CredentialRecheck(CredentialStore credentials, CredentialRecheckPolicy policy, ServerCallContext context)
{
    private long _checkedAt = Stopwatch.GetTimestamp();

    public async ValueTask CheckAsync(CancellationToken cancellationToken)
    {
        if (Stopwatch.GetElapsedTime(_checkedAt) < policy.Interval)
        {
            return;
        }

        if (await credentials.AuthenticateAsync(AuthenticationInterceptor.KeyOf(context), cancellationToken) is null)
        {
            throw Errors.Refused(StatusCode.Unauthenticated, IngestRefusal.Unauthenticated, "the API key was revoked while the stream was open; nothing after the last acknowledgement was committed");
        }

        _checkedAt = Stopwatch.GetTimestamp();
    }
}
