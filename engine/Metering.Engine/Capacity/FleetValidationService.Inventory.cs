using System.Data;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Catalog;
using Metering.Engine.Registry;
using Metering.Engine.Time;
using Metering.Probe.Attestation.Results;
using Npgsql;

namespace Metering.Engine.Capacity;

/// <summary>Fleet validation, first stage: an inventory is declared, its sample drawn and its validation opened.</summary>
public sealed partial class FleetValidationService
{
    /// <summary>Stores a new inventory version, draws its sample and opens its validation; an open one is closed (<see cref="CloseOpenValidationAsync"/>).</summary>
    public async Task<FleetValidationRecord> DeclareInventoryAsync(Actor actor, InventoryDeclaration request, CancellationToken cancellationToken)
    {
        string code = OwnCode(actor, request.CreditCode);
        CatalogVersion version = catalog.Latest;
        if (request.Nodes.Count == 0 || request.Nodes.Count > settings.NodesMax)
        {
            throw new CapacityRefusedException(CapacityRefusalReason.InventoryInvalid, $"an inventory declares 1 to {settings.NodesMax} nodes, not {request.Nodes.Count}");
        }

        var seen = new HashSet<string>(StringComparer.Ordinal);
        var gflops = new long[request.Nodes.Count];
        for (int i = 0; i < request.Nodes.Count; i++)
        {
            InventoryNode node = request.Nodes[i];
            CheckNodeId(node.NodeId, CapacityRefusalReason.InventoryInvalid);
            if (!seen.Add(node.NodeId))
            {
                throw new CapacityRefusedException(CapacityRefusalReason.InventoryInvalid, $"node '{node.NodeId}' is declared twice");
            }

            if (node.Site.Length is 0 or > SiteLengthMax || node.Site.Contains('\0', StringComparison.Ordinal))
            {
                throw new CapacityRefusedException(CapacityRefusalReason.InventoryInvalid, $"node '{node.NodeId}' needs a site of 1 to {SiteLengthMax} characters");
            }

            if (node.DeviceCount is 0 or > ProbeReport.DevicesMax)
            {
                throw new CapacityRefusedException(CapacityRefusalReason.InventoryInvalid,
                    $"node '{node.NodeId}' declares {node.DeviceCount} devices; a node holds 1 to {ProbeReport.DevicesMax}, what one probe report can hold");
            }

            if (!version.TryGet(node.DeviceModel, out DeviceModel model))
            {
                throw new RegistryRefusedException(RegistryRefusalReason.DeviceModelUnknown, $"node '{node.NodeId}': device model '{node.DeviceModel}' is not in device catalog {version.Version}");
            }

            if (model.Probe is null || model.CapacityFromVerifier)
            {
                throw new CapacityRefusedException(CapacityRefusalReason.ModelNotProbeable,
                    $"node '{node.NodeId}': the probe cannot measure {model.Key} (catalog {version.Version} gives it capacityFigure 'verifier'); its capacity is the commissioned verifier's figure");
            }

            gflops[i] = node.DeviceCount * model.Fp16DenseGflops;
        }

        int nodes = request.Nodes.Count;
        int sampleSize = SamplingPlan.SampleSize(nodes, settings.ConfidencePercent, settings.ConformingPercent);
        byte[] seed = RandomNumberGenerator.GetBytes(SamplingPlan.SeedBytes);
        IReadOnlyList<string> sample = SamplingPlan.Draw(request.Nodes.Select(n => n.NodeId), sampleSize, seed);
        DateTimeOffset now = time.GetUtcNow();
        return await InTransactionAsync(code, async (connection, transaction) =>
        {
            await CheckRedeclarationAsync(connection, transaction, code, now);
            int inventory = await connection.ExecuteScalarAsync<int>(
                "SELECT coalesce(max(inventory_version), 0) + 1 FROM capacity_inventories WHERE provider_id = @code", new { code }, transaction);
            await connection.ExecuteAsync("""
                INSERT INTO capacity_inventories (provider_id, inventory_version, declared_at, declared_by, node_count, device_count, declared_fp16_gflops, catalog_version)
                VALUES (@code, @inventory, @now, @by, @nodes, @devices, @declared, @catalog)
                """, new
            {
                code,
                inventory,
                now = now.UtcDateTime,
                by = actor.ToString(),
                nodes,
                devices = request.Nodes.Sum(n => n.DeviceCount),
                declared = gflops.Sum(),
                catalog = version.Version,
            }, transaction);
            await connection.ExecuteAsync("""
                INSERT INTO capacity_inventory_nodes (provider_id, inventory_version, node_id, site, device_model, device_count, fp16_gflops)
                SELECT @code, @inventory, n, s, m, c, g FROM unnest(@ids, @sites, @models, @counts, @gflops) AS u(n, s, m, c, g)
                """, new
            {
                code,
                inventory,
                ids = request.Nodes.Select(n => n.NodeId).ToArray(),
                sites = request.Nodes.Select(n => n.Site).ToArray(),
                models = request.Nodes.Select(n => n.DeviceModel).ToArray(),
                counts = request.Nodes.Select(n => (int)n.DeviceCount).ToArray(),
                gflops,
            }, transaction);
            await CloseOpenValidationAsync(connection, transaction, code, now);
            long validationId = await connection.ExecuteScalarAsync<long>("""
                INSERT INTO capacity_validations (provider_id, inventory_version, state, drawn_at, sample_seed, sample_size, confidence_percent, conforming_percent, catalog_version)
                VALUES (@code, @inventory, 'collecting', @now, @seed, @sampleSize, @confidence, @conforming, @catalog)
                RETURNING validation_id
                """, new
            {
                code,
                inventory,
                now = now.UtcDateTime,
                seed,
                sampleSize,
                confidence = settings.ConfidencePercent,
                conforming = settings.ConformingPercent,
                catalog = version.Version,
            }, transaction);
            await connection.ExecuteAsync("""
                INSERT INTO capacity_sample_nodes (provider_id, validation_id, node_id, draw_order)
                SELECT @code, @validationId, n, o::int FROM unnest(@sample) WITH ORDINALITY AS u(n, o)
                """, new { code, validationId, sample = sample.ToArray() }, transaction);
            return (await ReadValidationAsync(connection, transaction, code, validationId))!;
        }, cancellationToken);
    }

    /// <summary>
    /// A provider declares at most once per <see cref="CapacitySettings.InventoryRedeclarationInterval"/>:
    /// every declaration draws a new sample, and one that came at will could be redrawn until it
    /// missed the weak nodes.
    /// </summary>
    private async Task CheckRedeclarationAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code, DateTimeOffset now)
    {
        DateTime? previous = await connection.ExecuteScalarAsync<DateTime?>(
            "SELECT max(declared_at) FROM capacity_inventories WHERE provider_id = @code", new { code }, transaction);
        if (previous is { } declared && ShanghaiTime.Instant(declared) + settings.InventoryRedeclarationInterval > now)
        {
            DateTimeOffset next = ShanghaiTime.Instant(declared) + settings.InventoryRedeclarationInterval;
            throw new CapacityRefusedException(CapacityRefusalReason.InventoryTooSoon,
                $"{code} declared an inventory at {ShanghaiTime.Instant(declared):O}; the next declaration may come from {next:O} (one per {settings.InventoryRedeclarationInterval.TotalDays:0.###} days)",
                new Dictionary<string, string> { ["next_declaration_unix_ms"] = next.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture) });
        }
    }

    /// <summary>
    /// Closes the validation still collecting, if any, before a new inventory opens the next. Its
    /// nodes past their challenge deadline fail first, as at any of the provider's calls. With no
    /// failed node it is superseded. Once a sampled node has failed it completes instead, its
    /// nodes without an outcome counted as failed (abandoned): a provider that sees a node fail, or
    /// miss its deadline, cannot erase the failure by declaring again, and the failed validation is
    /// the one in force until a newer one completes.
    /// </summary>
    private async Task CloseOpenValidationAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code, DateTimeOffset now)
    {
        long? open = await connection.ExecuteScalarAsync<long?>(
            "SELECT validation_id FROM capacity_validations WHERE provider_id = @code AND state = 'collecting'", new { code }, transaction);
        if (open is not { } id)
        {
            return;
        }

        await FailOverdueAsync(connection, transaction, code, id, now);
        var state = await connection.QueryFirstAsync<(string State, bool Failed)>("""
            SELECT v.state, EXISTS (SELECT 1 FROM capacity_sample_nodes s WHERE s.provider_id = @code AND s.validation_id = v.validation_id AND s.outcome = 'failed')
            FROM capacity_validations v WHERE v.provider_id = @code AND v.validation_id = @id
            """, new { code, id }, transaction);
        if (state.State != "collecting")
        {
            return;
        }

        if (!state.Failed)
        {
            await connection.ExecuteAsync("UPDATE capacity_validations SET state = 'superseded' WHERE provider_id = @code AND validation_id = @id",
                new { code, id }, transaction);
            return;
        }

        int abandoned = await connection.ExecuteAsync("""
            UPDATE capacity_sample_nodes SET outcome = 'failed', detail = 'abandoned: the provider declared a new inventory while this validation had a failed node'
            WHERE provider_id = @code AND validation_id = @id AND outcome IN ('pending', 'awaiting_review')
            """, new { code, id }, transaction);
        await connection.ExecuteAsync("UPDATE capacity_validations SET abandoned_nodes = @abandoned WHERE provider_id = @code AND validation_id = @id",
            new { code, id, abandoned }, transaction);
        await CompleteIfDoneAsync(connection, transaction, code, id, now);
    }
}
