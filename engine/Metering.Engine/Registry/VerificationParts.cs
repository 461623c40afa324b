using System.Globalization;
using Dapper;
using Metering.Engine.Catalog;
using Npgsql;

namespace Metering.Engine.Registry;

/// <summary>The commissioned verifier's figure for one device model it measured: the devices it confirmed and their dense FP16 GFLOPS.</summary>
public sealed record VerifierPart(string DeviceModel, long Devices, long DenseFp16Gflops);

/// <summary>Where a part of a verification's figure came from.</summary>
public enum VerificationPartSource
{
    /// <summary>The capacity probe: the fleet validation in force, over the models its inventory holds.</summary>
    Probe,

    /// <summary>The commissioned verifier's figure for one model, over the devices it confirmed.</summary>
    CommissionedVerifier,
}

/// <summary>One part of a recorded verification: the probe's (with its validation) or the commissioned verifier's for one model.</summary>
public sealed record VerificationPart(VerificationPartSource Source, long ValidationId, string DeviceModel, long Devices, long Fp16Gflops)
{
    /// <summary>How the part's origin is named to people: in the stage's reasons, refusals and anomalies.</summary>
    public string Origin => Source == VerificationPartSource.Probe
        ? $"fleet validation {ValidationId}"
        : $"the commissioned verifier's figure for {DeviceModel} ({Devices.ToString(CultureInfo.InvariantCulture)} devices confirmed)";
}

/// <summary>An application's recorded verification parts (its latest verification stage) and the verifier's parts of its pending proposal, if any.</summary>
public sealed record VerificationFigures(IReadOnlyList<VerificationPart> Recorded, IReadOnlyList<VerifierPart> Proposed)
{
    public static VerificationFigures None { get; } = new([], []);
}

/// <summary>
/// The checks on the commissioned verifier's parts an operator records, and their storage. A part
/// names a catalog model once, counts whole devices and integer GFLOPS, and claims no more than
/// the catalog's dense FP16 peak of the devices it confirms: the verifier measures what is there,
/// it cannot find more than the datasheet.
/// </summary>
internal static class VerificationParts
{
    /// <summary>Parts one verification takes at most: far above the models a provider runs.</summary>
    public const int PartsMax = 64;

    /// <summary>Devices one part confirms at most.</summary>
    public const long DevicesMax = 1_000_000;

    /// <summary>Refuses parts that do not hold, before anything is read or written.</summary>
    public static void Check(DeviceCatalog catalog, IReadOnlyList<VerifierPart> parts, long verifiedTotalGflops)
    {
        if (parts.Count == 0)
        {
            return;
        }

        if (verifiedTotalGflops != 0)
        {
            throw Invalid(1, "verified_fp16_gflops",
                "the commissioned verifier's figure is given either as a total (verified_fp16_gflops) or per model (verifier_parts), not both; with parts, verified_fp16_gflops is 0 and the probe's validation is added");
        }

        if (parts.Count > PartsMax)
        {
            throw Invalid(PartsMax + 1, "verifier_parts", $"a verification takes at most {PartsMax} verifier parts; {parts.Count} were given");
        }

        var seen = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < parts.Count; i++)
        {
            VerifierPart part = parts[i];
            int number = i + 1;
            if (part.DeviceModel.Length == 0)
            {
                throw Invalid(number, "device_model", $"verifier part {number} names no device model");
            }

            DeviceModel model = catalog.Find(part.DeviceModel)
                ?? throw new RegistryRefusedException(RegistryRefusalReason.DeviceModelUnknown,
                    $"verifier part {number}: device model '{part.DeviceModel}' is not in catalog {catalog.Latest.Version}",
                    Metadata(number, "device_model"));
            if (!seen.Add(model.Key))
            {
                throw Invalid(number, "device_model", $"verifier part {number} repeats {model.Key}; a model is counted once, with all the devices the verifier confirmed");
            }

            if (part.Devices is < 1 or > DevicesMax)
            {
                throw Invalid(number, "devices", $"verifier part {number} ({model.Key}) confirms {part.Devices} devices; it confirms 1 to {DevicesMax:N0}");
            }

            long peak = part.Devices * model.Fp16DenseGflops;
            if (part.DenseFp16Gflops <= 0 || part.DenseFp16Gflops > peak)
            {
                throw Invalid(number, "dense_fp16_gflops", string.Create(CultureInfo.InvariantCulture,
                    $"verifier part {number} ({model.Key}) gives {part.DenseFp16Gflops} GFLOPS for {part.Devices} devices; it is positive and at most their catalog peak, {part.Devices} × {model.Fp16DenseGflops} = {peak} GFLOPS"));
            }
        }
    }

    /// <summary>Refuses a part for a model the validation in force covers: the probe's figure counts that model already.</summary>
    internal static void CheckNotCoveredByProbe(IReadOnlyList<VerifierPart> parts, long validationId, IReadOnlySet<string> probedModels)
    {
        foreach (VerifierPart part in parts)
        {
            if (probedModels.Contains(part.DeviceModel))
            {
                throw new RegistryRefusedException(RegistryRefusalReason.VerifierPartCoveredByProbe,
                    $"fleet validation {validationId}, in force, covers {part.DeviceModel}, and its figure counts those devices; the commissioned verifier's part may not count them again",
                    new Dictionary<string, string> { ["device_model"] = part.DeviceModel, ["validation_id"] = validationId.ToString(CultureInfo.InvariantCulture) });
            }
        }
    }

    /// <summary>The models the inventory of a validation holds.</summary>
    internal static async Task<IReadOnlySet<string>> ProbedModelsAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string providerId, int inventoryVersion) =>
        (await connection.QueryAsync<string>(
            "SELECT DISTINCT device_model FROM capacity_inventory_nodes WHERE provider_id = @providerId AND inventory_version = @inventoryVersion",
            new { providerId, inventoryVersion }, transaction)).ToHashSet(StringComparer.Ordinal);

    /// <summary>Writes the parts of the verification stage about to be recorded as <paramref name="stageNo"/>.</summary>
    internal static async Task WriteAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string providerId, long applicationId, int stageNo, IReadOnlyList<VerificationPart> parts)
    {
        for (int i = 0; i < parts.Count; i++)
        {
            VerificationPart part = parts[i];
            bool probe = part.Source == VerificationPartSource.Probe;
            await connection.ExecuteAsync("""
                INSERT INTO verification_parts (provider_id, application_id, stage_no, part_no, source, validation_id, device_model, devices, fp16_gflops)
                VALUES (@providerId, @applicationId, @stageNo, @partNo, @source, @validationId, @model, @devices, @gflops)
                """, new
            {
                providerId, applicationId, stageNo, partNo = i + 1, source = probe ? "probe" : "verifier",
                validationId = probe ? part.ValidationId : (long?)null, model = probe ? null : part.DeviceModel,
                devices = probe ? (long?)null : part.Devices, gflops = part.Fp16Gflops,
            }, transaction);
        }
    }

    /// <summary>Writes a proposal's verifier parts, with the proposal.</summary>
    internal static async Task WriteProposedAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string providerId, long applicationId, int proposalNo, IReadOnlyList<VerifierPart> parts)
    {
        foreach (VerifierPart part in parts)
        {
            await connection.ExecuteAsync("""
                INSERT INTO stage_proposal_parts (provider_id, application_id, proposal_no, device_model, devices, fp16_gflops)
                VALUES (@providerId, @applicationId, @proposalNo, @model, @devices, @gflops)
                """, new { providerId, applicationId, proposalNo, model = part.DeviceModel, devices = part.Devices, gflops = part.DenseFp16Gflops }, transaction);
        }
    }

    /// <summary>A proposal's verifier parts, in the order proposed (by model).</summary>
    internal static async Task<IReadOnlyList<VerifierPart>> ReadProposedAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string providerId, long applicationId, int proposalNo) =>
        (await connection.QueryAsync<(string Model, long Devices, long Gflops)>("""
            SELECT device_model, devices, fp16_gflops FROM stage_proposal_parts
            WHERE provider_id = @providerId AND application_id = @applicationId AND proposal_no = @proposalNo ORDER BY device_model COLLATE "C"
            """, new { providerId, applicationId, proposalNo }, transaction)).Select(p => new VerifierPart(p.Model, p.Devices, p.Gflops)).ToList();

    /// <summary>Each application's latest verification parts and its open proposal's verifier parts; an application with neither is absent.</summary>
    internal static async Task<IReadOnlyDictionary<long, VerificationFigures>> ReadAsync(NpgsqlConnection connection, long[] applicationIds, CancellationToken cancellationToken)
    {
        var recorded = (await connection.QueryAsync<(long Id, string Source, long? ValidationId, string? Model, long? Devices, long Gflops)>(new CommandDefinition("""
            SELECT p.application_id, p.source, p.validation_id, p.device_model, p.devices, p.fp16_gflops
            FROM verification_parts p
            WHERE p.application_id = ANY(@applicationIds)
              AND p.stage_no = (SELECT max(s.stage_no) FROM application_stages s
                                WHERE s.provider_id = p.provider_id AND s.application_id = p.application_id AND s.stage = 'verification')
            ORDER BY p.application_id, p.part_no
            """, new { applicationIds }, cancellationToken: cancellationToken)))
            .ToLookup(r => r.Id, r => new VerificationPart(r.Source == "probe" ? VerificationPartSource.Probe : VerificationPartSource.CommissionedVerifier,
                r.ValidationId ?? 0, r.Model ?? "", r.Devices ?? 0, r.Gflops));
        var proposed = (await connection.QueryAsync<(long Id, string Model, long Devices, long Gflops)>(new CommandDefinition("""
            SELECT p.application_id, p.device_model, p.devices, p.fp16_gflops
            FROM stage_proposal_parts p JOIN stage_proposals s USING (provider_id, application_id, proposal_no)
            WHERE p.application_id = ANY(@applicationIds) AND s.closed_as IS NULL
            ORDER BY p.application_id, p.device_model COLLATE "C"
            """, new { applicationIds }, cancellationToken: cancellationToken)))
            .ToLookup(r => r.Id, r => new VerifierPart(r.Model, r.Devices, r.Gflops));
        return applicationIds.Distinct().Where(id => recorded.Contains(id) || proposed.Contains(id))
            .ToDictionary(id => id, id => new VerificationFigures([.. recorded[id]], [.. proposed[id]]));
    }

    private static RegistryRefusedException Invalid(int part, string field, string message) =>
        new(RegistryRefusalReason.VerifierPartInvalid, message, Metadata(part, field));

    private static Dictionary<string, string> Metadata(int part, string field) =>
        new() { ["part"] = part.ToString(CultureInfo.InvariantCulture), ["field"] = field };
}
