using System.Security.Cryptography;
using System.Text;
using Dapper;
using Metering.Engine.Identity;
using Metering.Engine.Registry;
using Metering.Protocol.V1;
using Npgsql;

namespace Metering.Engine.Access;

/// <summary>An issued credential as listed (never with its key); a pinned one names the client certificate it needs.</summary>
public sealed record CredentialInfo(long CredentialId, Role Role, string Subject, string Label, string IssuedBy, DateTimeOffset IssuedAt, string? RevokedBy, DateTimeOffset? RevokedAt,
    byte[]? ClientCertificateSha256 = null);

/// <summary>Who a key belongs to, and the SHA-256 of the client certificate it is pinned to, if any.</summary>
public sealed record Authentication(Actor Actor, byte[]? ClientCertificateSha256);

/// <summary>
/// API keys, issued and revoked by operators. Only each key's SHA-256 is stored: a key is looked
/// up by its hash, so no stored secret is ever compared. Keys are 256 random bits, base64url.
/// Every issue and revocation is written to the registry history.
/// </summary>
public sealed class CredentialStore(NpgsqlDataSource dataSource, TimeProvider time)
{
    public const int KeyBytes = 32;
    public const int KeyLengthMax = 256;

    public static string NewKey() => Convert.ToBase64String(RandomNumberGenerator.GetBytes(KeyBytes)).TrimEnd('=').Replace('+', '-').Replace('/', '_');

    public static byte[] Hash(string key) => SHA256.HashData(Encoding.UTF8.GetBytes(key));

    /// <summary>Issues a key and returns it; it is not kept and cannot be shown again.</summary>
    /// <param name="clientCertificateSha256">Pins the key to the client certificate with this SHA-256 (mutual TLS), or null.</param>
    public async Task<(CredentialInfo Credential, string Key)> IssueAsync(Actor issuer, Role role, string subject, string label, CancellationToken cancellationToken,
        byte[]? clientCertificateSha256 = null)
    {
        CheckPin(clientCertificateSha256);
        subject = subject.Trim();
        if (role == Role.Provider && !CreditCode.IsValid(subject))
        {
            throw new RegistryRefusedException(RegistryRefusal.CreditCodeInvalid, $"a provider credential's subject is its credit code; '{subject}' is not a valid one");
        }

        if (subject.Length is 0 or > 64 || label.Length > 200)
        {
            throw FilingRules.Invalid("a credential needs a subject of 1 to 64 characters and a label of at most 200");
        }

        string key = NewKey();
        DateTimeOffset now = time.GetUtcNow();
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(cancellationToken);
        if (role == Role.Provider
            && !await connection.ExecuteScalarAsync<bool>("SELECT EXISTS (SELECT 1 FROM organisations WHERE provider_id = @subject)", new { subject }, transaction))
        {
            throw new RegistryRefusedException(RegistryRefusal.OrganisationUnknown, $"no organisation {subject} is registered; register it before issuing it a key");
        }

        long id = await connection.ExecuteScalarAsync<long>("""
            INSERT INTO credentials (key_sha256, role, subject, label, issued_by, issued_at, client_cert_sha256) VALUES (@hash, @role, @subject, @label, @by, @now, @pin)
            RETURNING credential_id
            """, new { hash = Hash(key), role = Actor.NameOf(role), subject, label, by = issuer.Subject, now = now.UtcDateTime, pin = clientCertificateSha256 }, transaction);
        await RecordAsync(connection, transaction, issuer, now, role == Role.Provider ? subject : null, id, "issue");
        await transaction.CommitAsync(cancellationToken);
        return (new CredentialInfo(id, role, subject, label, issuer.Subject, now, null, null, clientCertificateSha256), key);
    }

    /// <summary>
    /// Pins a credential to the client certificate with this SHA-256, or unpins it (null). From then
    /// on its key is accepted only over a connection that presented that certificate.
    /// </summary>
    public Task<CredentialInfo> PinAsync(Actor pinner, long credentialId, byte[]? clientCertificateSha256, CancellationToken cancellationToken)
    {
        CheckPin(clientCertificateSha256);
        return ChangeUnrevokedAsync(pinner, credentialId, clientCertificateSha256 is null ? "unpin" : "pin", "is revoked",
            "UPDATE credentials SET client_cert_sha256 = @pin WHERE credential_id = @credentialId",
            _ => new { pin = clientCertificateSha256, credentialId }, cancellationToken);
    }

    public Task<CredentialInfo> RevokeAsync(Actor revoker, long credentialId, CancellationToken cancellationToken) =>
        ChangeUnrevokedAsync(revoker, credentialId, "revoke", "is already revoked",
            "UPDATE credentials SET revoked_by = @by, revoked_at = @now WHERE credential_id = @credentialId",
            now => new { by = revoker.Subject, now = now.UtcDateTime, credentialId }, cancellationToken);

    /// <summary>
    /// Changes a credential that is not revoked, under its row lock, and records the change in the
    /// registry history in the same transaction; a revoked one stays as it is.
    /// </summary>
    private async Task<CredentialInfo> ChangeUnrevokedAsync(Actor actor, long credentialId, string action, string whenRevoked, string update,
        Func<DateTimeOffset, object> parameters, CancellationToken cancellationToken)
    {
        DateTimeOffset now = time.GetUtcNow();
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(cancellationToken);
        var row = await connection.QueryFirstOrDefaultAsync<(string Role, string Subject, DateTime? RevokedAt)?>(
            "SELECT role, subject, revoked_at FROM credentials WHERE credential_id = @credentialId FOR UPDATE", new { credentialId }, transaction);
        if (row is null)
        {
            throw FilingRules.Invalid($"there is no credential {credentialId}");
        }

        if (row.Value.RevokedAt is not null)
        {
            throw new RegistryRefusedException(RegistryRefusal.StatusChangeInvalid, $"credential {credentialId} {whenRevoked}");
        }

        await connection.ExecuteAsync(update, parameters(now), transaction);
        await RecordAsync(connection, transaction, actor, now, row.Value.Role == "provider" ? row.Value.Subject : null, credentialId, action);
        await transaction.CommitAsync(cancellationToken);
        return (await ListAsync(cancellationToken)).First(c => c.CredentialId == credentialId);
    }

    public async Task<IReadOnlyList<CredentialInfo>> ListAsync(CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var rows = await connection.QueryAsync<(long Id, string Role, string Subject, string Label, string IssuedBy, DateTime IssuedAt, string? RevokedBy, DateTime? RevokedAt, byte[]? Pin)>(
            "SELECT credential_id, role, subject, label, issued_by, issued_at, revoked_by, revoked_at, client_cert_sha256 FROM credentials ORDER BY credential_id");
        return rows.Select(r =>
        {
            Actor.TryParse(r.Role, out Role role);
            return new CredentialInfo(r.Id, role, r.Subject, r.Label, r.IssuedBy, Utc(r.IssuedAt), r.RevokedBy, r.RevokedAt is { } at ? Utc(at) : null, r.Pin);
        }).ToList();
    }

    private long _lookups;

    /// <summary>Key look-ups that went to the database since the store was made (the server's cache and per-peer limit keep this down).</summary>
    public long Lookups => Interlocked.Read(ref _lookups);

    /// <summary>The actor a key belongs to, or null for an unknown, revoked or malformed key.</summary>
    public async Task<Actor?> AuthenticateAsync(string? key, CancellationToken cancellationToken) =>
        (await FindAsync(key, cancellationToken))?.Actor;

    /// <summary>The actor a key belongs to and its client certificate pin, or null for an unknown, revoked or malformed key.</summary>
    public async Task<Authentication?> FindAsync(string? key, CancellationToken cancellationToken)
    {
        if (key is not { Length: > 0 and <= KeyLengthMax })
        {
            return null;
        }

        Interlocked.Increment(ref _lookups);
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var row = await connection.QueryFirstOrDefaultAsync<(string Role, string Subject, byte[]? Pin)?>(
            "SELECT role, subject, client_cert_sha256 FROM credentials WHERE key_sha256 = @hash AND revoked_at IS NULL", new { hash = Hash(key) });
        return row is { } r && Actor.TryParse(r.Role, out Role role) ? new Authentication(new Actor(role, r.Subject), r.Pin) : null;
    }

    private static void CheckPin(byte[]? clientCertificateSha256)
    {
        if (clientCertificateSha256 is not null && clientCertificateSha256.Length != SHA256.HashSizeInBytes)
        {
            throw FilingRules.Invalid($"a client certificate pin is a SHA-256 of {SHA256.HashSizeInBytes} bytes, not {clientCertificateSha256.Length}");
        }
    }

    private static Task RecordAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, Actor actor, DateTimeOffset now, string? providerId, long id, string action) =>
        connection.ExecuteAsync("""
            INSERT INTO registry_history (actor, role, at, provider_id, entity, entity_key, action, after)
            SELECT @actor, @role, @now, @providerId, 'credential', credential_id::text, @action, to_jsonb(c) - 'key_sha256'
            FROM credentials c WHERE credential_id = @id
            """, new { actor = actor.Subject, role = actor.RoleName, now = now.UtcDateTime, providerId, id, action }, transaction);

    private static DateTimeOffset Utc(DateTime value) => new(DateTime.SpecifyKind(value, DateTimeKind.Utc));
}
