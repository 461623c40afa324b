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
using Metering.Protocol.V1;
using Npgsql;

namespace Metering.Engine.Capacity;

/// <summary>Fleet validation, the reads: a provider's validation as the wire shows it, and the one in force.</summary>
public sealed partial class FleetValidationService
{
    /// <summary>A provider's validation, or its latest when <paramref name="validationId"/> is 0; null when there is none.</summary>
    public async Task<FleetValidation?> GetAsync(string creditCode, long validationId, CancellationToken cancellationToken)
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
                   (SELECT node_count FROM capacity_inventories i WHERE i.provider_id = v.provider_id AND i.inventory_version = v.inventory_version),
                   sample_size, failed_nodes, pass_rate_lower_bound_ppm
            FROM capacity_validations v WHERE provider_id = @providerId AND state = 'complete' ORDER BY completed_at DESC, validation_id DESC LIMIT 1
            """, new { providerId }, transaction);
        return row is { } r && ShanghaiTime.Instant(r.Expires) > now
            ? new CurrentValidation(r.Id, r.Inventory, r.Verified, ShanghaiTime.Instant(r.Completed), ShanghaiTime.Instant(r.Expires), r.Nodes, r.Sampled, r.Failed, r.Ppm)
            : null;
    }

    private async Task<FleetValidation?> ReadValidationAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string code, long validationId)
    {
        var v = await connection.QueryFirstOrDefaultAsync<ValidationRecord>("""
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

        var validation = new FleetValidation
        {
            CreditCode = code,
            ValidationId = v.Id,
            InventoryVersion = (uint)v.Inventory,
            State = v.State switch
            {
                "collecting" => FleetValidationState.ValidationCollecting,
                "complete" => FleetValidationState.ValidationComplete,
                _ => FleetValidationState.ValidationSuperseded,
            },
            DrawnUnixMs = ShanghaiTime.Instant(v.DrawnAt).ToUnixTimeMilliseconds(),
            NodeCount = (uint)v.Nodes,
            DeviceCount = (ulong)v.Devices,
            DeclaredFp16Gflops = v.Declared,
            SampleSize = (uint)v.SampleSize,
            SampleSeedHex = Convert.ToHexStringLower(v.Seed),
            PassedNodes = (uint)v.Passed,
            FailedNodes = (uint)v.Failed,
            NonconformingNodesBound = (uint)v.Bound,
            PassRateLowerBoundPpm = (uint)v.Ppm,
            VerifiedFp16Gflops = v.Verified,
            CompletedUnixMs = v.CompletedAt is { } completed ? ShanghaiTime.Instant(completed).ToUnixTimeMilliseconds() : 0,
            ExpiresUnixMs = v.ExpiresAt is { } expires ? ShanghaiTime.Instant(expires).ToUnixTimeMilliseconds() : 0,
            CatalogVersion = v.CatalogVersion,
            AbandonedNodes = (uint)v.Abandoned,
        };

        // The sample, and the seed it can be re-derived from, stay hidden while the validation
        // collects and its challenges have not started: a provider that knew its sample early
        // could prepare the sampled nodes only.
        DateTime? issued = await connection.ExecuteScalarAsync<DateTime?>(
            "SELECT issued_at FROM capacity_challenges WHERE provider_id = @code AND validation_id = @validationId", new { code, validationId }, transaction);
        validation.ChallengesIssuedUnixMs = issued is { } issuedAt ? ShanghaiTime.Instant(issuedAt).ToUnixTimeMilliseconds() : 0;
        bool hidden = issued is null && v.State == "collecting";
        if (hidden)
        {
            validation.SampleSeedHex = "";
        }

        var models = await connection.QueryAsync<(string Model, long Devices)>("""
            SELECT device_model, sum(device_count)::bigint FROM capacity_inventory_nodes WHERE provider_id = @code AND inventory_version = @inventory GROUP BY device_model ORDER BY device_model
            """, new { code, inventory = v.Inventory }, transaction);
        validation.Models.Add(models.Select(m => new ModelFleet { DeviceModel = m.Model, DeviceCount = (ulong)m.Devices }));
        if (hidden)
        {
            return validation;
        }

        var sample = (await connection.QueryAsync<(string Node, string Site, string Model, int Count, string Outcome, long? AttestationId, string Detail, DateTime? Deadline, DateTime? Committed, long? Elapsed)>("""
            SELECT s.node_id, n.site, n.device_model, n.device_count, s.outcome, s.attestation_id, s.detail, c.deadline_at, m.received_at, m.elapsed_ms
            FROM capacity_sample_nodes s JOIN capacity_inventory_nodes n ON n.provider_id = s.provider_id AND n.inventory_version = @inventory AND n.node_id = s.node_id
            LEFT JOIN capacity_nonces c ON c.provider_id = s.provider_id AND c.validation_id = s.validation_id AND c.node_id = s.node_id AND c.deadline_at IS NOT NULL
            LEFT JOIN capacity_commitments m ON m.provider_id = c.provider_id AND m.nonce = c.nonce
            WHERE s.provider_id = @code AND s.validation_id = @validationId ORDER BY s.draw_order
            """, new { code, validationId, inventory = v.Inventory }, transaction)).ToList();
        long[] attestations = sample.Where(s => s.AttestationId is not null).Select(s => s.AttestationId!.Value).ToArray();
        var results = (await connection.QueryAsync<(long AttestationId, int Index, string Name, int Multiprocessors, string? Model, string Outcome, string Detail, string Kernels)>("""
            SELECT attestation_id, device_index, reported_name, multiprocessors, device_model, outcome, detail, kernels::text
            FROM capacity_device_results WHERE provider_id = @code AND attestation_id = ANY(@attestations) ORDER BY attestation_id, device_index
            """, new { code, attestations }, transaction)).ToLookup(r => r.AttestationId);
        foreach (var node in sample)
        {
            var message = new SampledNode
            {
                NodeId = node.Node,
                Site = node.Site,
                DeviceModel = node.Model,
                DeviceCount = (uint)node.Count,
                Outcome = node.Outcome switch
                {
                    "passed" => NodeOutcome.NodePassed,
                    "failed" => NodeOutcome.NodeFailed,
                    "awaiting_review" => NodeOutcome.NodeAwaitingReview,
                    _ => NodeOutcome.NodePending,
                },
                AttestationId = node.AttestationId ?? 0,
                DeadlineUnixMs = node.Deadline is { } deadline ? ShanghaiTime.Instant(deadline).ToUnixTimeMilliseconds() : 0,
                CommittedUnixMs = node.Committed is { } committed ? ShanghaiTime.Instant(committed).ToUnixTimeMilliseconds() : 0,
                ElapsedMs = node.Elapsed ?? 0,
                Detail = node.Detail,
            };
            foreach (var r in results[node.AttestationId ?? -1])
            {
                var device = new DeviceResult
                {
                    DeviceIndex = (uint)r.Index,
                    ReportedName = r.Name,
                    Multiprocessors = (uint)Math.Max(0, r.Multiprocessors),
                    DeviceModel = r.Model ?? "",
                    Outcome = DeviceOutcomeOf(DeviceVerdictOf(r.Outcome)),
                    Detail = r.Detail,
                };
                device.Kernels.Add((JsonSerializer.Deserialize<List<KernelJudgement>>(r.Kernels, Json) ?? []).Select(k => new KernelResult
                {
                    Kernel = k.Kernel,
                    ArithmeticPath = k.Path,
                    Rate = k.Rate,
                    Unit = k.Unit,
                    Reference = k.Reference,
                    Peak = k.Peak,
                    Judged = k.Judged,
                    ReportedRate = k.ReportedRate,
                }));
                message.Devices.Add(device);
            }

            validation.Sample.Add(message);
        }

        return validation;
    }

    private sealed class ValidationRecord
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
