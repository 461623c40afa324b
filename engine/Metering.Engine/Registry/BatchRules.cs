using System.Globalization;
using Metering.Engine.Time;

namespace Metering.Engine.Registry;

/// <summary>
/// The rules of one admission batch, as data: its filing window, validity, notice, capacity bar,
/// the materials a filing carries, the financial report's year rules, whether a capital
/// verification report may stand in for the audit report, and which programme year's voucher
/// parameters apply. Materials are spelt as the registry stores them (<see cref="Materials"/>).
/// </summary>
public sealed record BatchRules(
    string BatchId,
    DateTimeOffset WindowOpensAt,
    DateTimeOffset WindowClosesAt,
    DateTimeOffset ValidityEndsAt,
    int PublicNoticeDays,
    long CapacityMinimumGflops,
    IReadOnlyList<string> MaterialsRequired,
    int AuditReportYear,
    bool AuditReportPriorYearWithReason,
    bool CapitalVerificationForNewEntities,
    int VoucherProgrammeYear)
{
    public const int PublicNoticeDaysMax = 30;

    /// <summary>A million PFLOPS: far above any fleet a programme could ask for, and far below an overflow in any sum of it.</summary>
    public const long CapacityMinimumGflopsMax = 1_000_000_000_000;

    public const int YearMin = 2000;
    public const int YearMax = 2100;

    /// <summary>The programme years programme_parameters can hold.</summary>
    public const int ProgrammeYearMin = 2024;

    /// <summary>The eight kinds of material of the guide's section 五, in the order the guide lists them.</summary>
    public static readonly IReadOnlyList<string> Materials =
    [
        "business_licence", "financial_report", "tax_certificate", "idc_isp_licence",
        "capacity_proof", "metering_log_proof", "service_and_fees", "commitment_letters",
    ];

    /// <summary>
    /// Checks that the rules hold, and returns them with the materials in the guide's order.
    /// A rule that does not hold is refused with BATCH_RULES_INVALID naming it, or PERIOD_INVALID
    /// for a window or validity out of order.
    /// </summary>
    public BatchRules Checked()
    {
        Names.CheckBatchId(BatchId);
        foreach ((string field, DateTimeOffset instant) in new[] { ("window_opens", WindowOpensAt), ("window_closes", WindowClosesAt), ("validity_ends", ValidityEndsAt) })
        {
            if (instant.Year is < YearMin or >= YearMax)
            {
                throw Invalid(field, $"{field} {instant:O} is not an instant between {YearMin} and {YearMax}");
            }
        }

        if (WindowClosesAt <= WindowOpensAt || ValidityEndsAt <= WindowClosesAt)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.PeriodInvalid, "a batch's window must close after it opens, and its validity must end after the window closes");
        }

        if (PublicNoticeDays is < 0 or > PublicNoticeDaysMax)
        {
            throw Invalid("public_notice_days", $"public_notice_days is {PublicNoticeDays}; it must be 0 to {PublicNoticeDaysMax}");
        }

        if (CapacityMinimumGflops is <= 0 or > CapacityMinimumGflopsMax)
        {
            throw Invalid("capacity_minimum_gflops",
                $"capacity_minimum_gflops is {CapacityMinimumGflops}; the bar is a positive number of GFLOPS (dense FP16) up to {CapacityMinimumGflopsMax.ToString("N0", CultureInfo.InvariantCulture)}, for example 300,000,000 for 300 PFLOPS");
        }

        if (MaterialsRequired.Count == 0)
        {
            throw Invalid("materials_required", $"materials_required names no material; a batch requires 1 to {Materials.Count} of: {string.Join(", ", Materials)}");
        }

        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (string material in MaterialsRequired)
        {
            if (!Materials.Contains(material))
            {
                throw Invalid("materials_required", $"materials_required names '{material}', which is not a kind of material; the kinds are: {string.Join(", ", Materials)}");
            }

            if (!seen.Add(material))
            {
                throw Invalid("materials_required", $"materials_required names {material} twice");
            }
        }

        int opensYear = ShanghaiTime.DateOf(WindowOpensAt).Year;
        if (AuditReportYear < YearMin || AuditReportYear >= opensYear)
        {
            throw Invalid("audit_report_year",
                $"audit_report_year is {AuditReportYear}; it must be a completed fiscal year before the window opens in {opensYear} (the 2025 batch asked for 2024), and no earlier than {YearMin}");
        }

        if (VoucherProgrammeYear is < ProgrammeYearMin or > YearMax)
        {
            throw Invalid("voucher_programme_year", $"voucher_programme_year is {VoucherProgrammeYear}; it must be a programme year from {ProgrammeYearMin} to {YearMax}");
        }

        return this with { MaterialsRequired = Materials.Where(seen.Contains).ToArray() };
    }

    /// <summary>Whether the batch requires this kind of material.</summary>
    public bool Requires(string material) => MaterialsRequired.Contains(material);

    /// <summary>The rules (by their field names) in which <paramref name="other"/> differs from these; empty when they are the same.</summary>
    public IReadOnlyList<string> DifferencesFrom(BatchRules other)
    {
        var fields = new List<string>();
        void Compare<T>(string field, T mine, T theirs)
        {
            if (!EqualityComparer<T>.Default.Equals(mine, theirs))
            {
                fields.Add(field);
            }
        }

        Compare("batch_id", BatchId, other.BatchId);
        Compare("window_opens", WindowOpensAt, other.WindowOpensAt);
        Compare("window_closes", WindowClosesAt, other.WindowClosesAt);
        Compare("validity_ends", ValidityEndsAt, other.ValidityEndsAt);
        Compare("public_notice_days", PublicNoticeDays, other.PublicNoticeDays);
        Compare("capacity_minimum_gflops", CapacityMinimumGflops, other.CapacityMinimumGflops);
        Compare("materials_required", string.Join(",", MaterialsRequired.Order(StringComparer.Ordinal)), string.Join(",", other.MaterialsRequired.Order(StringComparer.Ordinal)));
        Compare("audit_report_year", AuditReportYear, other.AuditReportYear);
        Compare("audit_report_prior_year_with_reason", AuditReportPriorYearWithReason, other.AuditReportPriorYearWithReason);
        Compare("capital_verification_for_new_entities", CapitalVerificationForNewEntities, other.CapitalVerificationForNewEntities);
        Compare("voucher_programme_year", VoucherProgrammeYear, other.VoucherProgrammeYear);
        return fields;
    }

    internal static RegistryRefusedException Invalid(string field, string message) =>
        new(RegistryRefusalReason.BatchRulesInvalid, message, new Dictionary<string, string> { ["field"] = field });
}
