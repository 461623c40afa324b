using System.Security.Cryptography;
using System.Text;
using Dapper;
using Metering.Engine.Identity;
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
/// Every issue, pin and revocation is written to the registry history with the acting operator.
/// </summary>
public sealed class CredentialStore(NpgsqlDataSource dataSource, TimeProvider time)
{
    public const int KeyBytes = 32;
    public const int KeyLengthMax = 256;

    /// <summary>Longest subject, in characters (the table's check says the same).</summary>
    public const int SubjectLengthMax = 64;

    /// <summary>Longest label, in characters.</summary>
    public const int LabelLengthMax = 200;

    /// <summary>Most credentials one <see cref="ListAsync(long, int, CancellationToken)"/> page returns.</summary>
    public const int ListPageMax = 1000;

    /// <summary>
    /// Taken for the whole of a bootstrap: it conflicts with itself and with every insert, so two
    /// bootstraps, or a bootstrap and an issue, cannot both see "no operator key" and both write one.
    /// </summary>
    private const string BootstrapLock = "LOCK TABLE credentials IN SHARE ROW EXCLUSIVE MODE";

    /// <summary>
    /// A new key: <see cref="KeyBytes"/> random bytes in base64url without padding. One that would
    /// start with '-' is drawn again, because command lines (argparse, System.CommandLine) read
    /// "--api-key -x…" as a missing value followed by an option; that costs under 0.03 of a bit.
    /// </summary>
    public static string NewKey()
    {
        while (true)
        {
            string key = Convert.ToBase64String(RandomNumberGenerator.GetBytes(KeyBytes)).TrimEnd('=').Replace('+', '-').Replace('/', '_');
            if (key[0] != '-')
            {
                return key;
            }
        }
    }

    public static byte[] Hash(string key) => SHA256.HashData(Encoding.UTF8.GetBytes(key));

    /// <summary>Issues a key and returns it; it is not kept and cannot be shown again.</summary>
    /// <param name="clientCertificateSha256">Pins the key to the client certificate with this SHA-256 (mutual TLS), or null.</param>
    /// <exception cref="CredentialRefusedException">The subject, label or pin is invalid, or a provider subject is not a registered organisation.</exception>
    public async Task<(CredentialInfo Credential, string Key)> IssueAsync(Actor issuer, Role role, string subject, string label, CancellationToken cancellationToken,
        byte[]? clientCertificateSha256 = null)
    {
        subject = CheckIssue(role, subject, label, clientCertificateSha256);
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(cancellationToken);
        if (role == Role.Provider
            && !await connection.ExecuteScalarAsync<bool>("SELECT EXISTS (SELECT 1 FROM organisations WHERE provider_id = @subject)", new { subject }, transaction))
        {
            throw new CredentialRefusedException(CredentialRefusal.OrganisationUnknown, $"no organisation {subject} is registered; register it before issuing it a key");
        }

        var issued = await InsertAsync(connection, transaction, issuer, role, subject, label, clientCertificateSha256, "issue");
        await transaction.CommitAsync(cancellationToken);
        return issued;
    }

    /// <summary>
    /// Issues the first operator key, to <paramref name="name"/>, who is recorded as its issuer:
    /// nobody holds a key yet who could issue it. Refused while any unrevoked operator key
    /// exists, checked and written under one table lock so that concurrent bootstraps cannot both
    /// succeed. Only `metering key bootstrap`, run by whoever can open the database, calls this.
    /// </summary>
    /// <exception cref="CredentialRefusedException">An operator key exists (<see cref="CredentialRefusal.OperatorKeyExists"/>), or the name is invalid.</exception>
    public async Task<(CredentialInfo Credential, string Key)> BootstrapOperatorAsync(string name, string label, CancellationToken cancellationToken)
    {
        name = CheckIssue(Role.Operator, name, label, null);
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(cancellationToken);
        await connection.ExecuteAsync(BootstrapLock, transaction: transaction);
        long operators = await connection.ExecuteScalarAsync<long>(
            "SELECT count(*) FROM credentials WHERE role = 'operator' AND revoked_at IS NULL", transaction: transaction);
        if (operators > 0)
        {
            throw new CredentialRefusedException(CredentialRefusal.OperatorKeyExists,
                $"{operators} unrevoked operator key(s) exist; further keys are issued by an operator through the server");
        }

        var issued = await InsertAsync(connection, transaction, new Actor(Role.Operator, name), Role.Operator, name, label, null, "bootstrap");
        await transaction.CommitAsync(cancellationToken);
        return issued;
    }

    private async Task<(CredentialInfo Credential, string Key)> InsertAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, Actor issuer, Role role, string subject,
        string label, byte[]? clientCertificateSha256, string action)
    {
        string key = NewKey();
        DateTimeOffset now = time.GetUtcNow();
        long id = await connection.ExecuteScalarAsync<long>("""
            INSERT INTO credentials (key_sha256, role, subject, label, issued_by, issued_at, client_cert_sha256) VALUES (@hash, @role, @subject, @label, @by, @now, @pin)
            RETURNING credential_id
            """, new { hash = Hash(key), role = Actor.NameOf(role), subject, label, by = issuer.Subject, now = now.UtcDateTime, pin = clientCertificateSha256 }, transaction);
        await RecordAsync(connection, transaction, issuer, now, role == Role.Provider ? subject : null, id, action);
        return (new CredentialInfo(id, role, subject, label, issuer.Subject, now, null, null, clientCertificateSha256), key);
    }

    /// <summary>The trimmed subject, once subject, label and pin pass; a provider's subject must be a valid credit code.</summary>
    private static string CheckIssue(Role role, string subject, string label, byte[]? clientCertificateSha256)
    {
        CheckPin(clientCertificateSha256);
        subject = subject.Trim();
        if (subject.Length is 0 or > SubjectLengthMax)
        {
            throw new CredentialRefusedException(CredentialRefusal.SubjectInvalid, $"a credential's subject is 1 to {SubjectLengthMax} characters, not {subject.Length}");
        }

        if (label.Length > LabelLengthMax)
        {
            throw new CredentialRefusedException(CredentialRefusal.LabelInvalid, $"a credential's label is at most {LabelLengthMax} characters, not {label.Length}");
        }

        if (role == Role.Provider && !CreditCode.IsValid(subject))
        {
            throw new CredentialRefusedException(CredentialRefusal.CreditCodeInvalid, $"a provider credential's subject is its credit code; '{subject}' is not a valid one");
        }

        return subject;
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
            throw new CredentialRefusedException(CredentialRefusal.CredentialUnknown, $"there is no credential {credentialId}");
        }

        if (row.Value.RevokedAt is not null)
        {
            throw new CredentialRefusedException(CredentialRefusal.CredentialRevoked, $"credential {credentialId} {whenRevoked}");
        }

        await connection.ExecuteAsync(update, parameters(now), transaction);
        await RecordAsync(connection, transaction, actor, now, row.Value.Role == "provider" ? row.Value.Subject : null, credentialId, action);
        CredentialInfo changed = (await SelectAsync(connection, transaction, "WHERE credential_id = @credentialId", new { credentialId })).Single();
        await transaction.CommitAsync(cancellationToken);
        return changed;
    }

    /// <summary>Every credential, in id order (the server pages through <see cref="ListAsync(long, int, CancellationToken)"/> instead).</summary>
    public async Task<IReadOnlyList<CredentialInfo>> ListAsync(CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await SelectAsync(connection, null, "ORDER BY credential_id", null);
    }

    /// <summary>Up to <paramref name="limit"/> credentials with ids above <paramref name="afterCredentialId"/>, in id order.</summary>
    public async Task<IReadOnlyList<CredentialInfo>> ListAsync(long afterCredentialId, int limit, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(limit);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(limit, ListPageMax);
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await SelectAsync(connection, null, "WHERE credential_id > @afterCredentialId ORDER BY credential_id LIMIT @limit", new { afterCredentialId, limit });
    }

    private static async Task<IReadOnlyList<CredentialInfo>> SelectAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string where, object? parameters)
    {
        var rows = await connection.QueryAsync<(long Id, string Role, string Subject, string Label, string IssuedBy, DateTime IssuedAt, string? RevokedBy, DateTime? RevokedAt, byte[]? Pin)>(
            $"SELECT credential_id, role, subject, label, issued_by, issued_at, revoked_by, revoked_at, client_cert_sha256 FROM credentials {where}", parameters, transaction);
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
            throw new CredentialRefusedException(CredentialRefusal.PinInvalid,
                $"a client certificate pin is a SHA-256 of {SHA256.HashSizeInBytes} bytes, not {clientCertificateSha256.Length}");
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
