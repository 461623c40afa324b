using System.Globalization;
using System.Security.Cryptography;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Registry;
using Metering.Engine.Time;
using Metering.Probe.Attestation.Results;
using Npgsql;

namespace Metering.Engine.Capacity;

/// <summary>An operator's approval of one node key version: who, when and why.</summary>
public sealed record NodeKeyApproval(string ApprovedBy, DateTimeOffset ApprovedAt, string Reasons);

/// <summary>One registered version of a node's key, with the device UUIDs registered with it and its approval, if any.</summary>
public sealed record RegisteredNodeKey(string ProviderId, string NodeId, int KeyVersion, byte[] KeySha256, DateTimeOffset RegisteredAt,
    IReadOnlyList<string> DeviceUuids, NodeKeyApproval? Approval);

/// <summary>
/// Node keys bound to hardware: a key is registered with the UUIDs of its node's devices, signs
/// nothing until an operator approves it, and a report it signs must name exactly devices
/// registered with it. The key in force for a node is its latest approved version; a newer
/// version (a rotation) waits for its own approval while the approved one keeps signing, and
/// once approved it retires every older version. A device UUID belongs to one node at a time,
/// over all providers: a node holds the UUIDs of its key in force and of its latest registered
/// key. Writes take the provider's capacity lock and then one advisory lock per UUID, in
/// ascending order, so that two providers cannot claim one UUID at the same moment.
/// </summary>
public sealed class NodeKeyService(NpgsqlDataSource dataSource, CapacitySettings settings, TimeProvider time)
{
    /// <summary>Longest device UUID: NVML's are 40 characters (`GPU-` and a UUID), MIG ones longer; 96 is NVML's own buffer.</summary>
    public const int DeviceUuidLengthMax = 96;

    /// <summary>Most device UUIDs one key registers: what one probe report can hold.</summary>
    public const int DeviceUuidsMax = ProbeReport.DevicesMax;

    /// <summary>Registers a new key version for a node with its devices' UUIDs; it is unusable until approved.</summary>
    public async Task<RegisteredNodeKey> RegisterAsync(Actor actor, string creditCode, string nodeId, ReadOnlyMemory<byte> publicKeyDer, string? publicKeyPem,
        IReadOnlyList<string> deviceUuids, CancellationToken cancellationToken)
    {
        string code = FleetValidationService.OwnCode(actor, creditCode);
        FleetValidationService.CheckNodeId(nodeId);
        byte[] spki = NodeKeys.ParsePublicKey(publicKeyDer.Span, publicKeyPem);
        string[] uuids = CheckDeviceUuids(deviceUuids);
        byte[] fingerprint = SHA256.HashData(spki);
        DateTimeOffset now = time.GetUtcNow();
        return await FleetValidationService.InProviderTransactionAsync(dataSource, code, async (connection, transaction) =>
        {
            foreach (string uuid in uuids.Order(StringComparer.Ordinal))
            {
                await connection.ExecuteAsync("SELECT pg_advisory_xact_lock(@key)", new { key = FleetValidationService.LockKey("device-uuid", uuid) }, transaction);
            }

            var holder = await connection.QueryFirstOrDefaultAsync<(string Provider, string Node, string Uuid)?>("""
                SELECT k.provider_id, k.node_id, u
                FROM capacity_node_keys k CROSS JOIN LATERAL unnest(k.device_uuids) AS u
                WHERE k.device_uuids && @uuids AND u = ANY(@uuids) AND NOT (k.provider_id = @code AND k.node_id = @node)
                  AND (k.key_version = (SELECT max(l.key_version) FROM capacity_node_keys l WHERE l.provider_id = k.provider_id AND l.node_id = k.node_id)
                       OR k.key_version = (SELECT max(a.key_version) FROM capacity_node_key_approvals a WHERE a.provider_id = k.provider_id AND a.node_id = k.node_id))
                ORDER BY u LIMIT 1
                """, new { uuids, code, node = nodeId }, transaction);
            if (holder is { } taken)
            {
                // Another provider's node is not named: which provider owns which hardware is not this provider's business.
                string owner = taken.Provider == code ? $"node '{taken.Node}' of {code}" : "a node of another provider";
                throw new CapacityRefusedException(CapacityRefusalReason.DeviceUuidTaken,
                    $"device {taken.Uuid} is registered for {owner}; a device belongs to one node, so that node registers a key without it first",
                    new Dictionary<string, string> { ["device_uuid"] = taken.Uuid });
            }

            int version = await connection.ExecuteScalarAsync<int>(
                "SELECT coalesce(max(key_version), 0) + 1 FROM capacity_node_keys WHERE provider_id = @code AND node_id = @node",
                new { code, node = nodeId }, transaction);
            await connection.ExecuteAsync("""
                INSERT INTO capacity_node_keys (provider_id, node_id, key_version, public_key_spki, key_sha256, registered_at, registered_by, device_uuids)
                VALUES (@code, @node, @version, @spki, @fingerprint, @now, @by, @uuids)
                """, new { code, node = nodeId, version, spki, fingerprint, now = now.UtcDateTime, by = actor.ToString(), uuids }, transaction);
            return new RegisteredNodeKey(code, nodeId, version, fingerprint, Truncated(now), uuids, null);
        }, cancellationToken);
    }

    /// <summary>An operator approves a node's latest key version, named by version and fingerprint, with reasons.</summary>
    public async Task<RegisteredNodeKey> ApproveAsync(Actor actor, string creditCode, string nodeId, int keyVersion, string keySha256Hex, string reasons,
        CancellationToken cancellationToken)
    {
        if (actor.Role != Role.Operator)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.RoleNotAllowed, "only an operator approves a node key");
        }

        string code = FleetValidationService.CheckCreditCode(creditCode);
        FleetValidationService.CheckNodeId(nodeId);
        string why = reasons.Trim();
        if (why.Length == 0)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.ReasonRequired, "approving a node key needs its reasons, for example how the fingerprint was checked");
        }

        if (why.Length > settings.ReasonsMax)
        {
            throw FilingRules.Invalid($"reasons are at most {settings.ReasonsMax} characters");
        }

        if (keySha256Hex.Length != 64 || !keySha256Hex.All(char.IsAsciiHexDigit))
        {
            throw FilingRules.Invalid("key_sha256 is the key's fingerprint: 64 hex digits, as RegisterNodeKey returned it");
        }

        byte[] fingerprint = Convert.FromHexString(keySha256Hex);
        DateTimeOffset now = time.GetUtcNow();
        return await FleetValidationService.InProviderTransactionAsync(dataSource, code, async (connection, transaction) =>
        {
            var latest = await connection.QueryFirstOrDefaultAsync<(int Version, byte[] Sha256, DateTime RegisteredAt, string[] Uuids, bool Approved)?>("""
                SELECT k.key_version, k.key_sha256, k.registered_at, k.device_uuids,
                       EXISTS (SELECT 1 FROM capacity_node_key_approvals a WHERE a.provider_id = @code AND a.node_id = k.node_id AND a.key_version = k.key_version)
                FROM capacity_node_keys k WHERE k.provider_id = @code AND k.node_id = @node ORDER BY k.key_version DESC LIMIT 1
                """, new { code, node = nodeId }, transaction)
                ?? throw new CapacityRefusedException(CapacityRefusalReason.NodeKeyUnknown, $"node '{nodeId}' of {code} has no registered key");
            string? wrong = latest.Version != keyVersion ? $"the node's latest key is version {latest.Version}, not {keyVersion}"
                : latest.Approved ? $"key version {keyVersion} is approved already"
                : !CryptographicOperations.FixedTimeEquals(latest.Sha256, fingerprint) ? $"key version {keyVersion} has fingerprint {Convert.ToHexStringLower(latest.Sha256)}, not {keySha256Hex.ToLowerInvariant()}"
                : null;
            if (wrong is not null)
            {
                throw new CapacityRefusedException(CapacityRefusalReason.NodeKeyNotPending, $"key version {keyVersion} of node '{nodeId}' of {code} is not awaiting approval: {wrong}");
            }

            await connection.ExecuteAsync("""
                INSERT INTO capacity_node_key_approvals (provider_id, node_id, key_version, approved_at, approved_by, reasons) VALUES (@code, @node, @version, @now, @by, @why)
                """, new { code, node = nodeId, version = keyVersion, now = now.UtcDateTime, by = actor.ToString(), why }, transaction);
            return new RegisteredNodeKey(code, nodeId, keyVersion, latest.Sha256, ShanghaiTime.Instant(latest.RegisteredAt), latest.Uuids,
                new NodeKeyApproval(actor.ToString(), Truncated(now), why));
        }, cancellationToken);
    }

    /// <summary>Most nodes one listing returns.</summary>
    public const int ListNodesMax = 1_000;

    /// <summary>
    /// A page of a provider's node keys, node by node: each node's latest key and, where that is not
    /// approved, its key in force; with <paramref name="pendingOnly"/> only latest keys awaiting
    /// approval. The next page's start is the last node listed, or null after the last page.
    /// </summary>
    public async Task<(IReadOnlyList<RegisteredNodeKey> Keys, string? NextAfterNodeId)> ListAsync(string creditCode, bool pendingOnly, string afterNodeId, int limit,
        CancellationToken cancellationToken)
    {
        string code = FleetValidationService.CheckCreditCode(creditCode);
        if (afterNodeId.Length > FleetValidationService.NodeIdLengthMax)
        {
            throw FilingRules.Invalid($"after_node_id is a node id, at most {FleetValidationService.NodeIdLengthMax} characters");
        }

        if (limit is < 0 or > ListNodesMax)
        {
            throw FilingRules.Invalid($"limit is 1 to {ListNodesMax} nodes, or 0 for {ListNodesMax}");
        }

        int nodes = limit == 0 ? ListNodesMax : limit;
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var rows = (await connection.QueryAsync<KeyRow>(new CommandDefinition("""
            WITH nodes AS (
                SELECT k.node_id, max(k.key_version) AS latest,
                       (SELECT max(a.key_version) FROM capacity_node_key_approvals a WHERE a.provider_id = @code AND a.node_id = k.node_id) AS in_force
                FROM capacity_node_keys k WHERE k.provider_id = @code AND k.node_id > @after
                GROUP BY k.node_id
                HAVING NOT @pendingOnly
                    OR max(k.key_version) IS DISTINCT FROM (SELECT max(a.key_version) FROM capacity_node_key_approvals a WHERE a.provider_id = @code AND a.node_id = k.node_id)
                ORDER BY k.node_id LIMIT @nodes)
            SELECT k.node_id AS NodeId, k.key_version AS KeyVersion, k.key_sha256 AS KeySha256, k.registered_at AS RegisteredAt, k.device_uuids AS DeviceUuids,
                   a.approved_by AS ApprovedBy, a.approved_at AS ApprovedAt, a.reasons AS Reasons
            FROM nodes n
            JOIN capacity_node_keys k ON k.provider_id = @code AND k.node_id = n.node_id AND (k.key_version = n.latest OR (NOT @pendingOnly AND k.key_version = n.in_force))
            LEFT JOIN capacity_node_key_approvals a ON a.provider_id = k.provider_id AND a.node_id = k.node_id AND a.key_version = k.key_version
            ORDER BY k.node_id, k.key_version
            """, new { code, after = afterNodeId, pendingOnly, nodes }, cancellationToken: cancellationToken))).ToList();
        var keys = rows.Select(r => new RegisteredNodeKey(code, r.NodeId, r.KeyVersion, r.KeySha256, ShanghaiTime.Instant(r.RegisteredAt), r.DeviceUuids,
            r.ApprovedAt is { } at ? new NodeKeyApproval(r.ApprovedBy!, ShanghaiTime.Instant(at), r.Reasons!) : null)).ToList();
        bool full = keys.Select(k => k.NodeId).Distinct(StringComparer.Ordinal).Count() == nodes;
        return (keys, full ? keys[^1].NodeId : null);
    }

    private sealed class KeyRow
    {
        public string NodeId { get; init; } = "";
        public int KeyVersion { get; init; }
        public byte[] KeySha256 { get; init; } = [];
        public DateTime RegisteredAt { get; init; }
        public string[] DeviceUuids { get; init; } = [];
        public string? ApprovedBy { get; init; }
        public DateTime? ApprovedAt { get; init; }
        public string? Reasons { get; init; }
    }

    /// <summary>
    /// The cheap checks of a report against the node's keys, before any nonce is touched: the node
    /// has a key (NODE_KEY_UNKNOWN); the signature verifies with its key in force, else, if it
    /// verifies with a newer key not yet approved or with a key no operator approved, the key is
    /// not approved (NODE_KEY_NOT_APPROVED), else it is invalid (SIGNATURE_INVALID); and every
    /// device of the report is a distinct device registered with the key in force
    /// (DEVICE_UUID_MISMATCH). Two signature checks at most, each well under a millisecond.
    /// </summary>
    /// <returns>The version of the key in force that signed the report.</returns>
    internal static async Task<int> CheckReportAsync(NpgsqlConnection connection, string code, string node, ProbeReport report, byte[] encoded, byte[] signature)
    {
        var (version, uuids) = await CheckSignedAsync(connection, null, code, node, encoded, signature, "the report's canonical bytes", "report");
        CheckDevices(report.Devices.Select(d => (d.Index, d.Uuid)), uuids, node, version, "report");
        return version;
    }

    /// <summary>
    /// A signature by the node's key in force over <paramref name="signed"/>: the same key rules as
    /// a report's, for a commitment too, so that a key no operator approved cannot start the clock
    /// of a node's challenge either. <paramref name="what"/> names the signed bytes and
    /// <paramref name="whose"/> the thing signed, in the refusal's message.
    /// </summary>
    /// <returns>The version of the key in force and the device UUIDs registered with it.</returns>
    internal static async Task<(int Version, string[] DeviceUuids)> CheckSignedAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string code, string node,
        byte[] signed, byte[] signature, string what, string whose)
    {
        var keys = (await connection.QueryAsync<(int Version, byte[] Spki, string[] Uuids, bool InForce)>("""
            WITH approved AS (SELECT max(key_version) AS v FROM capacity_node_key_approvals WHERE provider_id = @code AND node_id = @node),
                 latest AS (SELECT max(key_version) AS v FROM capacity_node_keys WHERE provider_id = @code AND node_id = @node)
            SELECT k.key_version, k.public_key_spki, k.device_uuids, k.key_version IS NOT DISTINCT FROM (SELECT v FROM approved)
            FROM capacity_node_keys k
            WHERE k.provider_id = @code AND k.node_id = @node AND (k.key_version = (SELECT v FROM approved) OR k.key_version = (SELECT v FROM latest))
            ORDER BY k.key_version DESC
            """, new { code, node }, transaction)).ToList();
        if (keys.Count == 0)
        {
            throw new CapacityRefusedException(CapacityRefusalReason.NodeKeyUnknown, $"node '{node}' of {code} has no registered key; register one with RegisterNodeKey");
        }

        var inForce = keys.FirstOrDefault(k => k.InForce);
        var pending = keys.FirstOrDefault(k => !k.InForce);
        if (inForce.Spki is not null && NodeKeys.Verify(inForce.Spki, signed, signature))
        {
            return (inForce.Version, inForce.Uuids);
        }

        if (pending.Spki is not null && NodeKeys.Verify(pending.Spki, signed, signature))
        {
            string standing = inForce.Spki is null ? "the node has no approved key" : $"the node's key in force is version {inForce.Version}";
            throw new CapacityRefusedException(CapacityRefusalReason.NodeKeyNotApproved,
                $"the {whose} is signed with key version {pending.Version} of node '{node}', which no operator has approved ({standing}); an operator approves it with ApproveNodeKey");
        }

        throw new CapacityRefusedException(CapacityRefusalReason.SignatureInvalid, inForce.Spki is null
            ? $"the signature does not verify with the latest key (version {pending.Version}) of node '{node}' over {what} (ECDSA P-256, SHA-256); the node has no approved key"
            : $"the signature does not verify with key version {inForce.Version} of node '{node}', its key in force, over {what} (ECDSA P-256, SHA-256)");
    }

    /// <summary>Every device of a report or commitment names a distinct UUID registered with the key in force.</summary>
    internal static void CheckDevices(IEnumerable<(int Index, string Uuid)> devices, string[] registered, string node, int version, string whose)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (index, uuid) in devices)
        {
            string? wrong = uuid.Length == 0
                ? "reports no UUID (on CUDA the probe cannot read one yet: ILGPU 1.5.3 exposes no NVML UUID; on the CPU accelerator run the probe with --device-uuid)"
                : !registered.Contains(uuid, StringComparer.Ordinal) ? $"is {Shown(uuid)}, which is not registered with key version {version} of node '{node}'"
                : !seen.Add(uuid) ? $"is {Shown(uuid)} again: one device cannot stand for two"
                : null;
            if (wrong is not null)
            {
                throw new CapacityRefusedException(CapacityRefusalReason.DeviceUuidMismatch, $"device {index} of the {whose} {wrong}",
                    new Dictionary<string, string> { ["device"] = index.ToString(CultureInfo.InvariantCulture) });
            }
        }
    }

    /// <summary>1 to <see cref="DeviceUuidsMax"/> distinct UUIDs, each 1 to <see cref="DeviceUuidLengthMax"/> characters from [A-Za-z0-9._:/-].</summary>
    internal static string[] CheckDeviceUuids(IReadOnlyList<string> uuids)
    {
        if (uuids.Count is 0 or > DeviceUuidsMax)
        {
            throw FilingRules.Invalid($"a node key is registered with its node's device UUIDs: 1 to {DeviceUuidsMax}, not {uuids.Count}");
        }

        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (string uuid in uuids)
        {
            if (uuid.Length is 0 or > DeviceUuidLengthMax || !uuid.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or ':' or '/' or '-'))
            {
                throw FilingRules.Invalid($"device UUID '{Shown(uuid)}' must be 1 to {DeviceUuidLengthMax} characters from [A-Za-z0-9._:/-], as NVML gives it (GPU-…)");
            }

            if (!seen.Add(uuid))
            {
                throw FilingRules.Invalid($"device UUID '{uuid}' is listed twice");
            }
        }

        return [.. uuids];
    }

    private static string Shown(string uuid) => uuid.Length > DeviceUuidLengthMax ? uuid[..DeviceUuidLengthMax] + "…" : uuid;

    /// <summary>What PostgreSQL keeps of an instant: microseconds.</summary>
    private static DateTimeOffset Truncated(DateTimeOffset instant) => new(instant.UtcTicks - instant.UtcTicks % 10, TimeSpan.Zero);
}
