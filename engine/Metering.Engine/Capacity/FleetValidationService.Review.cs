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

/// <summary>Fleet validation, the operator's review of devices the catalog does not know, and the completion of a validation.</summary>
public sealed partial class FleetValidationService
{
    /// <summary>An operator decides a device awaiting review: accepted as a catalog model (and remembered), or rejected.</summary>
    public async Task<FleetValidationRecord> ReviewUnknownModelAsync(Actor actor, UnknownModelReview request, CancellationToken cancellationToken)
    {
        string code = CheckCreditCode(request.CreditCode);
        string reasons = request.Reasons.Trim();
        if (reasons.Length > settings.ReasonsMax)
        {
            throw FilingRules.Invalid($"reasons are at most {settings.ReasonsMax} characters");
        }

        DeviceModel? accepted = null;
        if (request.DeviceModel.Length > 0)
        {
            if (!catalog.Latest.TryGet(request.DeviceModel, out DeviceModel model))
            {
                throw new RegistryRefusedException(RegistryRefusalReason.DeviceModelUnknown, $"device model '{request.DeviceModel}' is not in device catalog {catalog.Latest.Version}");
            }

            accepted = model.Probe is not null && !model.CapacityFromVerifier
                ? model
                : throw new CapacityRefusedException(CapacityRefusalReason.ModelNotProbeable, $"the probe cannot judge a device as {model.Key} (catalog {catalog.Latest.Version} gives it capacityFigure 'verifier'); its capacity is the commissioned verifier's figure");
        }
        else if (reasons.Length == 0)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.ReasonRequired, "rejecting a device needs its reasons");
        }

        DateTimeOffset now = time.GetUtcNow();
        return await InTransactionAsync(code, async (connection, transaction) =>
        {
            var device = await connection.QueryFirstOrDefaultAsync<(long AttestationId, string Outcome, string Name, int Multiprocessors, string Kernels, string State, string DeclaredModel, int DeclaredCount)?>("""
                SELECT r.attestation_id, r.outcome, r.reported_name, r.multiprocessors, r.kernels::text, v.state, n.device_model, n.device_count
                FROM capacity_sample_nodes s
                JOIN capacity_validations v ON v.provider_id = s.provider_id AND v.validation_id = s.validation_id
                JOIN capacity_inventory_nodes n ON n.provider_id = v.provider_id AND n.inventory_version = v.inventory_version AND n.node_id = s.node_id
                JOIN capacity_device_results r ON r.provider_id = s.provider_id AND r.attestation_id = s.attestation_id
                WHERE s.provider_id = @code AND s.validation_id = @validationId AND s.node_id = @node AND r.device_index = @index
                """, new { code, validationId = request.ValidationId, node = request.NodeId, index = (int)request.DeviceIndex }, transaction);
            if (device is not { Outcome: "awaiting_review", State: "collecting" } pending)
            {
                throw new CapacityRefusedException(CapacityRefusalReason.ReviewNotPending,
                    $"device {request.DeviceIndex} of node '{request.NodeId}' in validation {request.ValidationId} of {code} is not awaiting review ({(device is { } d ? $"{d.Outcome}, validation {d.State}" : "no such device")})");
            }

            string reviewer = actor.Subject;
            DeviceJudgement judgement;
            if (accepted is null)
            {
                judgement = new DeviceJudgement((int)request.DeviceIndex, pending.Name, pending.Multiprocessors, null, DeviceVerdict.Rejected, $"rejected in review by {reviewer}: {reasons}", []);
            }
            else
            {
                List<KernelJudgement> stored = JsonSerializer.Deserialize<List<KernelJudgement>>(pending.Kernels, Json) ?? [];
                var kernels = stored.Select(k => (k.Kernel, k.Path, k.Rate, k.Unit)).ToList();
                judgement = AttestationJudge.JudgeDevice((int)request.DeviceIndex, pending.Name, pending.Multiprocessors, kernels, accepted, pending.DeclaredModel, reviewer);
                judgement = judgement with { Kernels = judgement.Kernels.Select((k, j) => k with { ReportedRate = stored[j].ReportedRate }).ToList() };
                await connection.ExecuteAsync("""
                    INSERT INTO capacity_model_aliases (reported_name, multiprocessors, device_model, decided_by, decided_at) VALUES (@name, @sm, @model, @by, @now)
                    ON CONFLICT (reported_name, multiprocessors) DO UPDATE SET device_model = excluded.device_model, decided_by = excluded.decided_by, decided_at = excluded.decided_at
                    """, new { name = pending.Name, sm = pending.Multiprocessors, model = accepted.Key, by = actor.ToString(), now = now.UtcDateTime }, transaction);
            }

            string detail = reasons.Length > 0 && accepted is not null ? $"{judgement.Detail}; {reasons}" : judgement.Detail;
            await connection.ExecuteAsync("""
                UPDATE capacity_device_results SET outcome = @outcome, device_model = @model, detail = @detail, reviewed_by = @by, reviewed_at = @now
                WHERE provider_id = @code AND attestation_id = @attestationId AND device_index = @index
                """, new
            {
                code,
                attestationId = pending.AttestationId,
                index = (int)request.DeviceIndex,
                outcome = DeviceVerdictName(judgement.Verdict),
                model = judgement.Model,
                detail,
                by = actor.ToString(),
                now = now.UtcDateTime,
            }, transaction);

            var verdicts = (await connection.QueryAsync<(int Index, string Outcome)>(
                "SELECT device_index, outcome FROM capacity_device_results WHERE provider_id = @code AND attestation_id = @attestationId ORDER BY device_index",
                new { code, attestationId = pending.AttestationId }, transaction))
                .Select(r => new DeviceJudgement(r.Index, "", 0, null, DeviceVerdictOf(r.Outcome), "", [])).ToList();
            var (verdict, _) = AttestationJudge.NodeOf(verdicts, pending.DeclaredCount);
            await connection.ExecuteAsync(
                "UPDATE capacity_sample_nodes SET outcome = @outcome WHERE provider_id = @code AND validation_id = @validationId AND node_id = @node",
                new { code, validationId = request.ValidationId, node = request.NodeId, outcome = NodeVerdictName(verdict) }, transaction);
            await CompleteIfDoneAsync(connection, transaction, code, request.ValidationId, now);
            return (await ReadValidationAsync(connection, transaction, code, request.ValidationId))!;
        }, cancellationToken);
    }


    /// <summary>
    /// Completes the validation once no sampled node is pending or awaiting review: the bound on
    /// non-conforming nodes, the pass-rate bound and the verified capacity, valid for the
    /// configured period. The fleet changes what ingest accepts, so the admission epoch moves.
    /// </summary>
    private async Task CompleteIfDoneAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code, long validationId, DateTimeOffset now)
    {
        var counts = await connection.QuerySingleAsync<(int Sampled, int Passed, int Failed)>("""
            SELECT count(*)::int, (count(*) FILTER (WHERE outcome = 'passed'))::int, (count(*) FILTER (WHERE outcome = 'failed'))::int
            FROM capacity_sample_nodes WHERE provider_id = @code AND validation_id = @validationId
            """, new { code, validationId }, transaction);
        if (counts.Passed + counts.Failed < counts.Sampled)
        {
            await connection.ExecuteAsync("UPDATE capacity_validations SET passed_nodes = @passed, failed_nodes = @failed WHERE provider_id = @code AND validation_id = @validationId",
                new { code, validationId, passed = counts.Passed, failed = counts.Failed }, transaction);
            return;
        }

        var validation = await connection.QuerySingleAsync<(int Confidence, int Inventory)>(
            "SELECT confidence_percent, inventory_version FROM capacity_validations WHERE provider_id = @code AND validation_id = @validationId",
            new { code, validationId }, transaction);
        long[] nodeGflops = (await connection.QueryAsync<long>(
            "SELECT fp16_gflops FROM capacity_inventory_nodes WHERE provider_id = @code AND inventory_version = @inventory",
            new { code, inventory = validation.Inventory }, transaction)).ToArray();
        int bound = SamplingPlan.NonconformingUpperBound(nodeGflops.Length, counts.Sampled, counts.Failed, validation.Confidence);
        await connection.ExecuteAsync("""
            UPDATE capacity_validations SET state = 'complete', passed_nodes = @passed, failed_nodes = @failed, nonconforming_nodes_bound = @bound,
                pass_rate_lower_bound_ppm = @ppm, verified_fp16_gflops = @verified, completed_at = @now, expires_at = @expires
            WHERE provider_id = @code AND validation_id = @validationId
            """, new
        {
            code,
            validationId,
            passed = counts.Passed,
            failed = counts.Failed,
            bound,
            ppm = SamplingPlan.PassRateLowerBoundPpm(nodeGflops.Length, bound),
            verified = SamplingPlan.VerifiedGflops(nodeGflops, bound),
            now = now.UtcDateTime,
            expires = (now + settings.ValidationValidity).UtcDateTime,
        }, transaction);
        await connection.ExecuteAsync("UPDATE organisations SET admission_epoch = admission_epoch + 1 WHERE provider_id = @code", new { code }, transaction);
    }
}
