using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Metering.Engine.Registry;
using Metering.Engine.Time;
using Metering.Protocol.V1;
using MaterialKind = Metering.Protocol.V1.MaterialKind;

namespace Metering.Cli.Commands;

/// <summary>
/// The rules file of `registry batch put --rules FILE`: one JSON object that states every rule of
/// a batch (samples/Registry/README.md documents it, samples/Registry/batch-2027.json is one).
/// Times are Asia/Shanghai "yyyy-MM-dd HH:mm", as everywhere in the registry commands. What is
/// wrong with a file (not JSON, a field the format does not have, one missing, a value out of
/// range) is a usage error, found before the server is called.
/// </summary>
internal static class BatchRulesFile
{
    public const long FileBytesMax = 64 * 1024;

    private static readonly JsonSerializerOptions Options = new()
    {
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        PropertyNameCaseInsensitive = false,
        AllowTrailingCommas = false,
        ReadCommentHandling = JsonCommentHandling.Disallow,
        NumberHandling = JsonNumberHandling.Strict,
        RespectNullableAnnotations = true,
    };

    /// <summary>The file's fields, named as the proto3 JSON mapping names AdmissionBatch's.</summary>
    private sealed class RulesJson
    {
        [JsonPropertyName("batchId"), JsonRequired] public string BatchId { get; init; } = "";
        [JsonPropertyName("windowOpens"), JsonRequired] public string WindowOpens { get; init; } = "";
        [JsonPropertyName("windowCloses"), JsonRequired] public string WindowCloses { get; init; } = "";
        [JsonPropertyName("validityEnds"), JsonRequired] public string ValidityEnds { get; init; } = "";
        [JsonPropertyName("publicNoticeDays"), JsonRequired] public int PublicNoticeDays { get; init; }
        [JsonPropertyName("capacityMinimumGflops"), JsonRequired] public long CapacityMinimumGflops { get; init; }
        [JsonPropertyName("materialsRequired"), JsonRequired] public string[] MaterialsRequired { get; init; } = [];
        [JsonPropertyName("auditReportYear"), JsonRequired] public int AuditReportYear { get; init; }
        [JsonPropertyName("auditReportPriorYearWithReason"), JsonRequired] public bool AuditReportPriorYearWithReason { get; init; }
        [JsonPropertyName("capitalVerificationForNewEntities"), JsonRequired] public bool CapitalVerificationForNewEntities { get; init; }
        [JsonPropertyName("voucherProgrammeYear"), JsonRequired] public int VoucherProgrammeYear { get; init; }
        [JsonPropertyName("singleOperatorDecisions")] public bool SingleOperatorDecisions { get; init; }
        [JsonPropertyName("reconsiderationDays")] public uint ReconsiderationDays { get; init; }
    }

    /// <summary>Reads, parses and checks the rules file; returns the batch to put.</summary>
    public static AdmissionBatch Read(FileInfo path)
    {
        return Parse(InputFile.ReadText(path, "rules file", FileBytesMax), path.Name);
    }

    public static AdmissionBatch Parse(string text, string name)
    {
        RulesJson json;
        try
        {
            json = JsonSerializer.Deserialize<RulesJson>(text, Options) ?? throw new UsageException($"{name} holds null, not a batch's rules");
        }
        catch (JsonException e)
        {
            throw new UsageException($"{name} is not a valid rules file: {e.Message}");
        }

        if (json.ReconsiderationDays > ReconsiderationRules.DaysMax)
        {
            throw new UsageException($"{name}: reconsiderationDays is {json.ReconsiderationDays}; 1 to {ReconsiderationRules.DaysMax}, or leave it out for the programme's {ReconsiderationRules.DaysDefault}");
        }

        MaterialKind[] materials = json.MaterialsRequired.Select(material => MaterialOf(name, material)).ToArray();
        var rules = new BatchRules(
            json.BatchId,
            LocalTime(name, "windowOpens", json.WindowOpens),
            LocalTime(name, "windowCloses", json.WindowCloses),
            LocalTime(name, "validityEnds", json.ValidityEnds),
            json.PublicNoticeDays,
            json.CapacityMinimumGflops,
            materials.Select(RegistryOutput.Spelling).ToArray(),
            json.AuditReportYear,
            json.AuditReportPriorYearWithReason,
            json.CapitalVerificationForNewEntities,
            json.VoucherProgrammeYear);
        try
        {
            rules = rules.Checked();
        }
        catch (RegistryRefusedException bad)
        {
            throw new UsageException($"{name}: {bad.Message}");
        }

        return new AdmissionBatch
        {
            BatchId = rules.BatchId,
            WindowOpensUnixMs = rules.WindowOpensAt.ToUnixTimeMilliseconds(),
            WindowClosesUnixMs = rules.WindowClosesAt.ToUnixTimeMilliseconds(),
            ValidityEndsUnixMs = rules.ValidityEndsAt.ToUnixTimeMilliseconds(),
            PublicNoticeDays = (uint)rules.PublicNoticeDays,
            CapacityMinimumGflops = rules.CapacityMinimumGflops,
            MaterialsRequired = { rules.MaterialsRequired.Select(RegistryOutput.MaterialKindOf) },
            AuditReportYear = (uint)rules.AuditReportYear,
            AuditReportPriorYearWithReason = rules.AuditReportPriorYearWithReason,
            CapitalVerificationForNewEntities = rules.CapitalVerificationForNewEntities,
            VoucherProgrammeYear = (uint)rules.VoucherProgrammeYear,
            SingleOperatorDecisions = json.SingleOperatorDecisions,
            ReconsiderationDays = json.ReconsiderationDays,
        };
    }

    /// <summary>A material kind by its registry.proto name, for example BUSINESS_LICENCE.</summary>
    private static MaterialKind MaterialOf(string name, string material) =>
        Enum.GetValues<MaterialKind>().FirstOrDefault(kind => kind != MaterialKind.Unspecified && RegistryOutput.Spelling(kind).ToUpperInvariant() == material) is var kind && kind != MaterialKind.Unspecified
            ? kind
            : throw new UsageException($"{name}: materialsRequired names '{material}'; the kinds are {string.Join(", ", BatchRules.Materials.Select(m => m.ToUpperInvariant()))}");

    private static DateTimeOffset LocalTime(string name, string field, string text) =>
        DateTime.TryParseExact(text, "yyyy-MM-dd HH:mm", CultureInfo.InvariantCulture, DateTimeStyles.None, out DateTime local)
            ? new DateTimeOffset(local, ShanghaiTime.Offset)
            : throw new UsageException($"{name}: {field} must be a time in Asia/Shanghai as \"yyyy-MM-dd HH:mm\", not '{text}'");
}
