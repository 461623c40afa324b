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

/// <summary>Fleet validation, the reads: a provider's validation as the provider, operators and auditors read it, and the one in force.</summary>
public sealed partial class FleetValidationService
{
    /// <summary>A provider's validation, or its latest when <paramref name="validationId"/> is 0; null when there is none.</summary>
    public async Task<FleetValidationRecord?> GetAsync(string creditCode, long validationId, CancellationToken cancellationToken)
    {
        string code = CheckCreditCode(creditCode);
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        long? id = validationId != 0 ? validationId
            : await connection.ExecuteScalarAsync<long?>("SELECT max(validation_id) FROM capacity_validations WHERE provider_id = @code", new { code });
        return id is { } found ? await ReadValidationAsync(connection, null, code, found) : null;
    }

    /// <summary>The provider's current fleet validation: its latest completed one, unless that has expired.</summary>
    public static async Task<CurrentValidation?> CurrentAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string providerId, DateTimeOffset now)
    {
        var row = await connection.QueryFirstOrDefaultAsync<(long Id, int Inventory, long Verified, DateTime Completed, DateTime Expires, int Nodes, int Sampled, int Failed, int Ppm)?>("""
            SELECT validation_id, inventory_version, verified_fp16_gflops, completed_at, expires_at,
                   (SELECT node_count FROM capacity_inventories i WHERE i.provider_id = @providerId AND i.inventory_version = v.inventory_version),
                   sample_size, failed_nodes, pass_rate_lower_bound_ppm
            FROM capacity_validations v WHERE provider_id = @providerId AND state = 'complete' ORDER BY completed_at DESC, validation_id DESC LIMIT 1
            """, new { providerId }, transaction);
        return row is { } r && ShanghaiTime.Instant(r.Expires) > now
            ? new CurrentValidation(r.Id, r.Inventory, r.Verified, ShanghaiTime.Instant(r.Completed), ShanghaiTime.Instant(r.Expires), r.Nodes, r.Sampled, r.Failed, r.Ppm)
            : null;
    }

    private async Task<FleetValidationRecord?> ReadValidationAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string code, long validationId)
    {
        var v = await connection.QueryFirstOrDefaultAsync<ValidationRow>("""
            SELECT v.validation_id AS Id, v.inventory_version AS Inventory, v.state AS State, v.drawn_at AS DrawnAt, v.sample_seed AS Seed, v.sample_size AS SampleSize,
                   v.passed_nodes AS Passed, v.failed_nodes AS Failed, coalesce(v.nonconforming_nodes_bound, 0) AS Bound, coalesce(v.pass_rate_lower_bound_ppm, 0) AS Ppm,
                   coalesce(v.verified_fp16_gflops, 0) AS Verified, v.abandoned_nodes AS Abandoned, v.completed_at AS CompletedAt, v.expires_at AS ExpiresAt, v.catalog_version AS CatalogVersion,
                   i.node_count AS Nodes, i.device_count AS Devices, i.declared_fp16_gflops AS Declared
            FROM capacity_validations v JOIN capacity_inventories i ON i.provider_id = v.provider_id AND i.inventory_version = v.inventory_version
            WHERE v.provider_id = @code AND v.validation_id = @validationId
            """, new { code, validationId }, transaction);
        if (v is null)
        {
            return null;
        }

        ValidationState state = v.State switch
        {
            "collecting" => ValidationState.ValidationCollecting,
            "complete" => ValidationState.ValidationComplete,
            _ => ValidationState.ValidationSuperseded,
        };

        // The sample, and the seed it can be re-derived from, stay hidden while the validation
        // collects and its challenges have not started: a provider that knew its sample early
        // could prepare the sampled nodes only.
        DateTime? issued = await connection.ExecuteScalarAsync<DateTime?>(
            "SELECT issued_at FROM capacity_challenges WHERE provider_id = @code AND validation_id = @validationId", new { code, validationId }, transaction);
        bool hidden = issued is null && v.State == "collecting";
        var models = (await connection.QueryAsync<(string Model, long Devices)>("""
            SELECT device_model, sum(device_count)::bigint FROM capacity_inventory_nodes WHERE provider_id = @code AND inventory_version = @inventory GROUP BY device_model ORDER BY device_model
            """, new { code, inventory = v.Inventory }, transaction)).Select(m => new ModelFleetRecord(m.Model, m.Devices)).ToList();
        IReadOnlyList<SampledNodeRecord> sample = hidden ? [] : await ReadSampleAsync(connection, transaction, code, validationId, v.Inventory);
        return new FleetValidationRecord(
            CreditCode: code,
            ValidationId: v.Id,
            InventoryVersion: v.Inventory,
            State: state,
            DrawnAt: ShanghaiTime.Instant(v.DrawnAt),
            NodeCount: v.Nodes,
            DeviceCount: v.Devices,
            Models: models,
            DeclaredFp16Gflops: v.Declared,
            SampleSize: v.SampleSize,
            SampleSeed: hidden ? [] : v.Seed,
            Sample: sample,
            PassedNodes: v.Passed,
            FailedNodes: v.Failed,
            NonconformingNodesBound: v.Bound,
            PassRateLowerBoundPpm: v.Ppm,
            VerifiedFp16Gflops: v.Verified,
            CompletedAt: v.CompletedAt is { } completed ? ShanghaiTime.Instant(completed) : null,
            ExpiresAt: v.ExpiresAt is { } expires ? ShanghaiTime.Instant(expires) : null,
            CatalogVersion: v.CatalogVersion,
            ChallengesIssuedAt: issued is { } issuedAt ? ShanghaiTime.Instant(issuedAt) : null,
            AbandonedNodes: v.Abandoned);
    }

    /// <summary>The sampled nodes in draw order, each with its challenge's timing and the device results of its accepted attestation.</summary>
    private static async Task<IReadOnlyList<SampledNodeRecord>> ReadSampleAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string code, long validationId, int inventory)
    {
        var sample = (await connection.QueryAsync<(string Node, string Site, string Model, int Count, string Outcome, long? AttestationId, string Detail, DateTime? Deadline, DateTime? Committed, long? Elapsed)>("""
            SELECT s.node_id, n.site, n.device_model, n.device_count, s.outcome, s.attestation_id, s.detail, c.deadline_at, m.received_at, m.elapsed_ms
            FROM capacity_sample_nodes s JOIN capacity_inventory_nodes n ON n.provider_id = s.provider_id AND n.inventory_version = @inventory AND n.node_id = s.node_id
            LEFT JOIN capacity_nonces c ON c.provider_id = s.provider_id AND c.validation_id = s.validation_id AND c.node_id = s.node_id AND c.deadline_at IS NOT NULL
            LEFT JOIN capacity_commitments m ON m.provider_id = c.provider_id AND m.nonce = c.nonce
            WHERE s.provider_id = @code AND s.validation_id = @validationId ORDER BY s.draw_order
            """, new { code, validationId, inventory }, transaction)).ToList();
        long[] attestations = sample.Where(s => s.AttestationId is not null).Select(s => s.AttestationId!.Value).ToArray();
        var results = (await connection.QueryAsync<(long AttestationId, int Index, string Name, int Multiprocessors, string? Model, string Outcome, string Detail, string Kernels)>("""
            SELECT attestation_id, device_index, reported_name, multiprocessors, device_model, outcome, detail, kernels::text
            FROM capacity_device_results WHERE provider_id = @code AND attestation_id = ANY(@attestations) ORDER BY attestation_id, device_index
            """, new { code, attestations }, transaction)).ToLookup(r => r.AttestationId);
        return sample.Select(node => new SampledNodeRecord(
            NodeId: node.Node,
            Site: node.Site,
            DeviceModel: node.Model,
            DeviceCount: node.Count,
            Outcome: node.Outcome switch
            {
                "passed" => SampledNodeOutcome.NodePassed,
                "failed" => SampledNodeOutcome.NodeFailed,
                "awaiting_review" => SampledNodeOutcome.NodeAwaitingReview,
                _ => SampledNodeOutcome.NodePending,
            },
            AttestationId: node.AttestationId,
            Devices: results[node.AttestationId ?? -1].Select(r => new DeviceResultRecord(r.Index, r.Name, r.Multiprocessors, r.Model, DeviceOutcomeOf(DeviceVerdictOf(r.Outcome)), r.Detail,
                JsonSerializer.Deserialize<List<KernelJudgement>>(r.Kernels, Json) ?? [])).ToList(),
            DeadlineAt: node.Deadline is { } deadline ? ShanghaiTime.Instant(deadline) : null,
            CommittedAt: node.Committed is { } committed ? ShanghaiTime.Instant(committed) : null,
            ElapsedMs: node.Elapsed,
            Detail: node.Detail)).ToList();
    }

    private sealed class ValidationRow
    {
        public long Id { get; init; }
        public int Inventory { get; init; }
        public string State { get; init; } = "";
        public DateTime DrawnAt { get; init; }
        public byte[] Seed { get; init; } = [];
        public int SampleSize { get; init; }
        public int Passed { get; init; }
        public int Failed { get; init; }
        public int Bound { get; init; }
        public int Ppm { get; init; }
        public long Verified { get; init; }
        public int Abandoned { get; init; }
        public DateTime? CompletedAt { get; init; }
        public DateTime? ExpiresAt { get; init; }
        public string CatalogVersion { get; init; } = "";
        public int Nodes { get; init; }
        public long Devices { get; init; }
        public long Declared { get; init; }
    }
}
