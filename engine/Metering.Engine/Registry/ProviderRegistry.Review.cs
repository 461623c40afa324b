using System.Globalization;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Catalog;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Registry;

/// <summary>Electronic material review and the commissioned verification, with the fleet validation the verification may take in place of a verifier's figure.</summary>
public sealed partial class ProviderRegistry
{
    /// <summary>Electronic material review. An application filed through an intermediary is rejected here, whatever the operator asked.</summary>
    public Task<Application> ReviewMaterialsAsync(Actor actor, OperatorDecision decision, CancellationToken cancellationToken) =>
        DecideStageAsync(actor, decision.ApplicationId, "material_review", ApplicationState.AwaitingMaterialReview, "material_review", async (connection, transaction, row, now) =>
        {
            if (row.Intermediary is not null)
            {
                string reasons = $"FILED_VIA_INTERMEDIARY: the application was filed through an intermediary ({row.Intermediary}); the guide refuses such applications at formal review";
                return (ApplicationState.Rejected, "rejected", reasons);
            }

            return decision.Pass
                ? (ApplicationState.AwaitingVerification, "passed", decision.Reasons.Trim())
                : (ApplicationState.Rejected, "rejected", RequireReasons(decision.Reasons, "a rejection needs its reasons"));
        }, cancellationToken);

    /// <summary>
    /// Commissioned verification: the verified FP16 capacity must reach the batch's capacity bar
    /// for the stage to pass. The figure is the commissioned verifier's typed total
    /// (verified_fp16_gflops &gt; 0, confirming no devices per model) or, with 0, the sum of the
    /// provider's current fleet validation from the capacity probe (completed and not expired)
    /// and the commissioned verifier's parts, one per model the probe cannot reach; passing with
    /// neither is refused with CAPACITY_UNVERIFIED. A rejection with 0 takes what there is and
    /// records no figure where there is nothing.
    /// </summary>
    public Task<Application> RecordVerificationAsync(Actor actor, long applicationId, bool pass, long verifiedFp16Gflops, IReadOnlyList<VerifierPart> verifierParts, string reasons,
        CancellationToken cancellationToken)
    {
        if (verifiedFp16Gflops < 0)
        {
            throw FilingRules.Invalid("verified_fp16_gflops cannot be negative");
        }

        VerificationParts.Check(catalog, verifierParts, verifiedFp16Gflops);
        // Parts are stored under their catalog keys, in one order, whatever order they came in.
        VerifierPart[] parts = [.. verifierParts.Select(p => p with { DeviceModel = catalog.Find(p.DeviceModel)!.Key }).OrderBy(p => p.DeviceModel, StringComparer.Ordinal)];
        return DecideOrProposeAsync(actor, applicationId, new StageCall(StageCall.Verification, pass, verifiedFp16Gflops, reasons, parts), cancellationToken);
    }

    /// <summary>Each application's latest recorded verification parts and its pending proposal's verifier parts, for the answers that show them.</summary>
    public async Task<IReadOnlyDictionary<long, VerificationFigures>> GetVerificationFiguresAsync(IEnumerable<long> applicationIds, CancellationToken cancellationToken)
    {
        long[] ids = [.. applicationIds.Distinct()];
        if (ids.Length == 0)
        {
            return new Dictionary<long, VerificationFigures>();
        }

        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await VerificationParts.ReadAsync(connection, ids, cancellationToken);
    }

    private StageRule VerificationRule(StageCall decision) =>
        async (connection, transaction, row, now) =>
        {
            long verified = decision.VerifiedFp16Gflops;
            string source = "the commissioned verifier's figure";
            var parts = new List<VerificationPart>();
            if (verified == 0)
            {
                FleetValidationEvidence? validation = await fleetValidations.CurrentAsync(connection, transaction, row.ProviderId, now);
                var origins = new List<string>();
                if (validation is { } current)
                {
                    VerificationParts.CheckNotCoveredByProbe(decision.VerifierParts, current.ValidationId,
                        await VerificationParts.ProbedModelsAsync(connection, transaction, row.ProviderId, current.InventoryVersion));
                    parts.Add(new VerificationPart(VerificationPartSource.Probe, current.ValidationId, "", 0, current.VerifiedFp16Gflops));
                    origins.Add(string.Create(CultureInfo.InvariantCulture,
                        $"fleet validation {current.ValidationId} (inventory version {current.InventoryVersion}: {current.Sampled} of {current.Nodes} nodes probed, {current.Failed} failed, pass rate at least {current.PassRateLowerBoundPpm / 10_000m:0.00}% at 95% confidence; valid until {current.ExpiresAt.ToOffset(ShanghaiTime.Offset):yyyy-MM-dd HH:mm} Asia/Shanghai)"));
                }
                else if (decision.Pass && decision.VerifierParts.Count == 0)
                {
                    throw new RegistryRefusedException(RegistryRefusalReason.CapacityUnverified,
                        $"verified_fp16_gflops 0 takes {row.ProviderId}'s fleet validation and the commissioned verifier's parts; it has no validation completed and unexpired and no parts were given; validate the fleet through CapacityService or record the commissioned verifier's figure");
                }

                foreach (VerifierPart part in decision.VerifierParts)
                {
                    var verifier = new VerificationPart(VerificationPartSource.CommissionedVerifier, 0, part.DeviceModel, part.Devices, part.DenseFp16Gflops);
                    parts.Add(verifier);
                    origins.Add(verifier.Origin);
                }

                verified = parts.Sum(p => p.Fp16Gflops);
                source = parts.Count == 1
                    ? origins[0]
                    : string.Join(" + ", parts.Zip(origins, (p, origin) => $"{FilingRules.Pflops(p.Fp16Gflops)} PFLOPS from {origin}"));
            }

            if (decision.Pass)
            {
                BatchRow batch = (await ReadBatchesAsync(connection, transaction, row.BatchId)).Single();
                FilingRules.CheckCapacity(batch, verified, "verified", $" ({source})");
            }

            if (verified > 0)
            {
                await connection.ExecuteAsync("UPDATE applications SET verified_fp16_gflops = @v WHERE provider_id = @code AND application_id = @id",
                    new { v = verified, code = row.ProviderId, id = row.ApplicationId }, transaction);
            }

            if (parts.Count > 0)
            {
                // The stage record the workflow adds next takes this number (the application is locked).
                int stageNo = await connection.ExecuteScalarAsync<int>(
                    "SELECT coalesce(max(stage_no), 0) + 1 FROM application_stages WHERE provider_id = @code AND application_id = @id", new { code = row.ProviderId, id = row.ApplicationId }, transaction);
                await VerificationParts.WriteAsync(connection, transaction, row.ProviderId, row.ApplicationId, stageNo, parts);
            }

            string figure = verified > 0 ? $"verified {FilingRules.Pflops(verified)} PFLOPS FP16 from {source}" : "no verified figure";
            return decision.Pass
                ? (ApplicationState.AwaitingPublicNotice, "passed", Join(figure, decision.Reasons))
                : (ApplicationState.Rejected, "rejected", Join(figure, RequireReasons(decision.Reasons, "a rejection needs its reasons")));
        };
}
