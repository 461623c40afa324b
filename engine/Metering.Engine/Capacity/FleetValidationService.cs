using System.Data;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Catalog;
using Metering.Engine.Registry;
using Metering.Engine.Time;
using Metering.Probe.Attestation.Checksums;
using Metering.Probe.Attestation.Results;
using Npgsql;

namespace Metering.Engine.Capacity;

/// <summary>
/// Fleet validation: inventories, the probe sample, nonces, attestations and operator reviews, over
/// PostgreSQL (the node keys that sign attestations are <see cref="NodeKeyService"/>'s). Every write of one provider runs in a transaction that first takes
/// that provider's capacity lock (a transaction-scoped advisory lock), so two calls of one
/// provider are ordered; calls of different providers never wait for each other. A refusal
/// throws <see cref="CapacityRefusedException"/> or <see cref="RegistryRefusedException"/>
/// before anything is written, except that an attestation spends its nonce before its checksums
/// are verified, and one refused for its checksums or a forged rate is kept as evidence.
/// </summary>
public sealed partial class FleetValidationService(NpgsqlDataSource dataSource, DeviceCatalog catalog, CapacitySettings settings, TimeProvider time, VerificationGate verifications)
{
    public const int NodeIdLengthMax = 64;
    public const int SiteLengthMax = 64;

    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    public CapacitySettings Settings => settings;

    /// <summary>The gate every report verification passes; its count of started verifications is what tests and operators read.</summary>
    public VerificationGate Verifications => verifications;

    private Task<T> InTransactionAsync<T>(string code, Func<NpgsqlConnection, NpgsqlTransaction, Task<T>> work, CancellationToken cancellationToken) =>
        InProviderTransactionAsync(dataSource, code, work, cancellationToken);

    /// <summary>Runs the work in a transaction that holds the provider's capacity lock; refuses an unknown organisation first.</summary>
    internal static async Task<T> InProviderTransactionAsync<T>(NpgsqlDataSource dataSource, string code, Func<NpgsqlConnection, NpgsqlTransaction, Task<T>> work,
        CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(IsolationLevel.ReadCommitted, cancellationToken);
        if (!await connection.ExecuteScalarAsync<bool>("SELECT EXISTS (SELECT 1 FROM organisations WHERE provider_id = @code)", new { code }, transaction))
        {
            throw new RegistryRefusedException(RegistryRefusalReason.OrganisationUnknown, $"no organisation {code} is registered");
        }

        await connection.ExecuteAsync("SELECT pg_advisory_xact_lock(@key)", new { key = LockKey("capacity", code) }, transaction);
        T result = await work(connection, transaction);
        await transaction.CommitAsync(cancellationToken);
        return result;
    }

    /// <summary>A 64-bit advisory-lock key: the first 8 bytes of SHA-256 of the scope and the names.</summary>
    internal static long LockKey(string scope, string first, string? second = null)
    {
        byte[] hash = SHA256.HashData(System.Text.Encoding.UTF8.GetBytes($"metering/{scope}/{first}/{second}"));
        return System.Buffers.Binary.BinaryPrimitives.ReadInt64BigEndian(hash);
    }

    /// <summary>A provider acts for itself only.</summary>
    internal static string OwnCode(Actor actor, string creditCode)
    {
        string code = CheckCreditCode(creditCode);
        if (actor.Role != Role.Provider || actor.Subject != code)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.OtherProvider, $"capacity entries of {code} are written by {code} itself");
        }

        return code;
    }

    internal static string CheckCreditCode(string code) =>
        Identity.CreditCode.IsValid(code)
            ? code
            : throw new RegistryRefusedException(RegistryRefusalReason.CreditCodeInvalid, $"'{code}' is not a valid unified social credit code");

    internal static void CheckNodeId(string nodeId, CapacityRefusalReason? refusal = null)
    {
        if (nodeId.Length is 0 or > NodeIdLengthMax || !nodeId.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or ':' or '-'))
        {
            string detail = $"node id '{(nodeId.Length > 80 ? nodeId[..80] : nodeId)}' must be 1 to {NodeIdLengthMax} characters from [A-Za-z0-9._:-]";
            throw refusal is { } reason ? new CapacityRefusedException(reason, detail) : FilingRules.Invalid(detail);
        }
    }

    private static string DeviceVerdictName(DeviceVerdict verdict) => verdict switch
    {
        DeviceVerdict.Healthy => "healthy",
        DeviceVerdict.Unhealthy => "unhealthy",
        DeviceVerdict.ModelMismatch => "model_mismatch",
        DeviceVerdict.AwaitingReview => "awaiting_review",
        DeviceVerdict.Rejected => "rejected",
        _ => "undeclared",
    };

    private static DeviceVerdict DeviceVerdictOf(string name) => name switch
    {
        "healthy" => DeviceVerdict.Healthy,
        "unhealthy" => DeviceVerdict.Unhealthy,
        "model_mismatch" => DeviceVerdict.ModelMismatch,
        "awaiting_review" => DeviceVerdict.AwaitingReview,
        "rejected" => DeviceVerdict.Rejected,
        _ => DeviceVerdict.Undeclared,
    };

    private static DeviceResultOutcome DeviceOutcomeOf(DeviceVerdict verdict) => verdict switch
    {
        DeviceVerdict.Healthy => DeviceResultOutcome.DeviceHealthy,
        DeviceVerdict.Unhealthy => DeviceResultOutcome.DeviceUnhealthy,
        DeviceVerdict.ModelMismatch => DeviceResultOutcome.DeviceModelMismatch,
        DeviceVerdict.AwaitingReview => DeviceResultOutcome.DeviceAwaitingReview,
        DeviceVerdict.Rejected => DeviceResultOutcome.DeviceRejected,
        _ => DeviceResultOutcome.DeviceUndeclared,
    };

    private static string NodeVerdictName(NodeVerdict verdict) => verdict switch
    {
        NodeVerdict.Passed => "passed",
        NodeVerdict.Failed => "failed",
        _ => "awaiting_review",
    };

    private static string Shorten(byte[] nonce) => nonce.Length >= 4 ? Convert.ToHexStringLower(nonce.AsSpan(0, 4)) + "…" : "(not 32 bytes)";
}


/// <summary>A provider's completed, unexpired fleet validation: what the registry's verification stage takes.</summary>
public sealed record CurrentValidation(long ValidationId, int InventoryVersion, long VerifiedFp16Gflops, DateTimeOffset CompletedAt, DateTimeOffset ExpiresAt,
    int Nodes, int Sampled, int Failed, int PassRateLowerBoundPpm);
