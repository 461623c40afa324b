using System.Globalization;
using Metering.Engine.Catalog;
using Metering.Engine.Time;

namespace Metering.Engine.Registry;

/// <summary>Everything the filing rules look at, read in the filing's transaction.</summary>
public sealed record FilingContext(
    OrganisationRow Organisation,
    BatchRow Batch,
    IReadOnlyList<LicenceRow> Licences,
    IReadOnlyList<ListingRow> Listings,
    string? VoucherStatus,
    DateTimeOffset FiledAt);

/// <summary>
/// The admission guide's filing rules (sections 四 and 五), as pure checks: each broken rule
/// throws its own refusal. The figures (the capacity bar, the materials, the report's years,
/// whether capital verification is taken) are the application's batch's rules, never constants
/// here. Order matters only for which refusal a filing that breaks several rules sees first;
/// eligibility comes before paperwork.
/// </summary>
public static class FilingRules
{
    public const int CapacityLinesMax = 1_000;
    public const int FeeLinesMax = 200;
    public const long PriceFenMax = 1_000_000_000_000;
    public const int TextMax = 20_000;

    /// <summary>Checks the filing's form alone: every field present and well formed.</summary>
    public static void CheckForm(ApplicationFiling filing, DeviceCatalog catalog)
    {
        Names.CheckServiceItem(filing.ServiceItem);
        Names.CheckBatchId(filing.BatchId);
        var seen = new HashSet<MaterialKind>();
        foreach (Material material in filing.Materials)
        {
            CheckMaterial(material);
            if (!seen.Add(material.Kind))
            {
                throw Invalid($"materials: {Names.Of(material.Kind)} is listed twice");
            }
        }

        if (filing.Capacity.Count is 0 or > CapacityLinesMax)
        {
            throw Invalid($"capacity: declare 1 to {CapacityLinesMax} site and model lines");
        }

        var lines = new HashSet<(string, string)>();
        foreach (DeclaredDevices devices in filing.Capacity)
        {
            if (devices.Site.Length is 0 or > 64)
            {
                throw Invalid("capacity: every line needs a site of 1 to 64 characters");
            }

            if (catalog.Find(devices.DeviceModel) is null)
            {
                throw new RegistryRefusedException(RegistryRefusalReason.DeviceModelUnknown, $"capacity: device model '{devices.DeviceModel}' is not in the device catalog");
            }

            if (devices.DeviceCount is 0 or > 1_000_000)
            {
                throw Invalid($"capacity: {devices.Site}/{devices.DeviceModel} declares {devices.DeviceCount} devices; 1 to 1,000,000 are accepted");
            }

            if (!lines.Add((devices.Site, devices.DeviceModel)))
            {
                throw Invalid($"capacity: {devices.Site}/{devices.DeviceModel} is declared twice");
            }
        }

        CheckFees(filing.Fees, catalog);
        CheckText("service_content", filing.ServiceContent);
        CheckText("service_standards", filing.ServiceStandards);
        if (!filing.MeteringProofStream.StartsWith("proof:", StringComparison.Ordinal) || filing.MeteringProofStream.Length > 64)
        {
            throw Invalid("metering_proof_stream must name one of the applicant's ingest streams whose id starts with 'proof:'");
        }

        if (filing.Intermediary.Length > 200)
        {
            throw Invalid("intermediary is longer than 200 characters");
        }
    }

    /// <summary>Checks a fee schedule: 1 to 200 lines, known models, positive prices, no line twice.</summary>
    public static void CheckFees(IEnumerable<FeeLine> fees, DeviceCatalog catalog)
    {
        var seen = new HashSet<(string, FeeUnit)>();
        int count = 0;
        foreach (FeeLine line in fees)
        {
            count++;
            if (catalog.Find(line.DeviceModel) is null)
            {
                throw new RegistryRefusedException(RegistryRefusalReason.DeviceModelUnknown, $"fees: device model '{line.DeviceModel}' is not in the device catalog");
            }

            if (line.Unit == FeeUnit.Unspecified || !Enum.IsDefined(line.Unit))
            {
                throw new RegistryRefusedException(RegistryRefusalReason.FeeScheduleInvalid, $"fees: the line for {line.DeviceModel} needs a unit (PER_PFLOPS_HOUR or PER_CARD_HOUR)");
            }

            if (line.PriceFen is <= 0 or > PriceFenMax)
            {
                throw new RegistryRefusedException(RegistryRefusalReason.FeeScheduleInvalid, $"fees: the price for {line.DeviceModel} is {line.PriceFen} fen; it must be positive and at most {PriceFenMax}");
            }

            if (!seen.Add((line.DeviceModel, line.Unit)))
            {
                throw new RegistryRefusedException(RegistryRefusalReason.FeeScheduleInvalid, $"fees: {line.DeviceModel} {line.Unit} is priced twice");
            }
        }

        if (count is 0 or > FeeLinesMax)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.FeeScheduleInvalid, $"fees: a fee schedule has 1 to {FeeLinesMax} lines");
        }
    }

    /// <summary>Declared dense FP16 capacity in GFLOPS, from the catalog in force at filing.</summary>
    public static long DeclaredGflops(IEnumerable<DeclaredDevices> capacity, DeviceCatalog catalog) =>
        capacity.Sum(devices => checked(devices.DeviceCount * catalog.Find(devices.DeviceModel)!.Fp16DenseGflops));

    /// <summary>Checks the filing against the organisation, the batch and the lists; returns the declared capacity.</summary>
    public static long Check(ApplicationFiling filing, FilingContext context, DeviceCatalog catalog)
    {
        OrganisationRow organisation = context.Organisation;
        BatchRow batch = context.Batch;
        DateTimeOffset filedAt = context.FiledAt;
        DateOnly filedOn = ShanghaiTime.DateOf(filedAt);

        if (filedAt < batch.WindowOpensAt || filedAt >= batch.WindowClosesAt)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.OutsideBatchWindow,
                $"batch {batch.BatchId} takes applications from {ShanghaiTime.LocalMinutes(batch.WindowOpensAt)} until {ShanghaiTime.LocalMinutes(batch.WindowClosesAt)} (Asia/Shanghai); this one was filed at {ShanghaiTime.LocalMinutes(filedAt)}");
        }

        CheckEligibility(context);
        CheckMaterials(filing, organisation, batch, filedOn);

        long declared = DeclaredGflops(filing.Capacity, catalog);
        CheckCapacity(batch, declared, "declared");
        return declared;
    }

    /// <summary>Refuses a declared or verified capacity below the batch's bar.</summary>
    public static void CheckCapacity(BatchRow batch, long gflops, string which, string source = "")
    {
        if (gflops < batch.Rules.CapacityMinimumGflops)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.CapacityBelowMinimum,
                $"{which} FP16 capacity is {Pflops(gflops)} PFLOPS{source}; batch {batch.BatchId} requires at least {Pflops(batch.Rules.CapacityMinimumGflops)}",
                new Dictionary<string, string> { ["capacity_minimum_gflops"] = batch.Rules.CapacityMinimumGflops.ToString(CultureInfo.InvariantCulture) });
        }
    }

    /// <summary>
    /// Whether the organisation may be a provider at the context's moment: in Shenzhen, on no
    /// integrity list, no voucher holder or applicant (one that left the holder role is neither), with a valid IDC/ISP licence. Checked at
    /// filing and again at the admission decision, since any of it can change in between.
    /// </summary>
    public static void CheckEligibility(FilingContext context)
    {
        OrganisationRow organisation = context.Organisation;
        DateOnly filedOn = ShanghaiTime.DateOf(context.FiledAt);
        if (Districts.Normalise(organisation.District) is null || !Districts.CodeRegionMatches(organisation.ProviderId, organisation.District))
        {
            throw new RegistryRefusedException(RegistryRefusalReason.NotRegisteredInShenzhen,
                $"{organisation.ProviderId} is not registered in Shenzhen (district '{organisation.District}', registration region {organisation.ProviderId.Substring(2, 6)})");
        }

        ListingRow? listed = context.Listings.FirstOrDefault(l => l.ListedFrom <= filedOn && (l.ListedUntil is null || l.ListedUntil >= filedOn));
        if (listed is not null)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.OnIntegrityList,
                $"{organisation.ProviderId} is on the {listed.ListName} list from {listed.ListedFrom:yyyy-MM-dd}{(listed.ListedUntil is { } until ? $" to {until:yyyy-MM-dd}" : "")}: {listed.Reason}");
        }

        if (context.VoucherStatus is { } status)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.VoucherHolderConflict,
                $"{organisation.ProviderId} is a voucher {status}; an organisation cannot both hold vouchers and be an admitted provider (a holder with no contract or voucher still running leaves the holder role first)");
        }

        if (!context.Licences.Any(l => l.ValidFrom <= filedOn && l.ValidUntil >= filedOn))
        {
            throw new RegistryRefusedException(RegistryRefusalReason.NoValidLicence,
                context.Licences.Count == 0
                    ? $"{organisation.ProviderId} has no IDC/ISP licence on record"
                    : $"none of {organisation.ProviderId}'s IDC/ISP licences is valid on {filedOn:yyyy-MM-dd} ({string.Join(", ", context.Licences.Select(l => $"{l.LicenceNumber} {l.ValidFrom:yyyy-MM-dd}..{l.ValidUntil:yyyy-MM-dd}"))})");
        }

    }

    private static void CheckMaterials(ApplicationFiling filing, OrganisationRow organisation, BatchRow batch, DateOnly filedOn)
    {
        BatchRules rules = batch.Rules;
        bool publicInstitution = organisation.LegalForm == "public_institution";
        var filed = filing.Materials.Select(m => Names.Of(m.Kind)).ToHashSet();
        string tax = Names.Of(MaterialKind.TaxCertificate);
        if (!publicInstitution && rules.Requires(tax) && !filed.Contains(tax))
        {
            throw new RegistryRefusedException(RegistryRefusalReason.TaxCertificateMissing,
                $"a tax certificate is required of every applicant but a public institution, and {organisation.ProviderId} is {Names.Article(organisation.LegalForm)}",
                new Dictionary<string, string> { ["kind"] = tax });
        }

        foreach (string kind in rules.MaterialsRequired)
        {
            if (!filed.Contains(kind) && !(kind == tax && publicInstitution))
            {
                throw new RegistryRefusedException(RegistryRefusalReason.MaterialMissing, $"the {kind} material is missing; batch {batch.BatchId} requires {string.Join(", ", rules.MaterialsRequired)}",
                    new Dictionary<string, string> { ["kind"] = kind });
            }
        }

        if (rules.Requires(Names.Of(MaterialKind.FinancialReport)))
        {
            CheckFinancialReport(filing, organisation, batch, filedOn, publicInstitution);
        }
    }

    /// <summary>
    /// The financial report's kind and year. An organisation established under a year before
    /// filing may file a capital verification report where the batch allows it (the guide's
    /// 可提供: optional, so it may file an audit report instead); no one else may.
    /// </summary>
    private static void CheckFinancialReport(ApplicationFiling filing, OrganisationRow organisation, BatchRow batch, DateOnly filedOn, bool publicInstitution)
    {
        BatchRules rules = batch.Rules;
        bool underAYear = organisation.EstablishedOn > filedOn.AddYears(-1);
        switch (filing.FinancialReportKind)
        {
            case FinancialReportKind.CapitalVerification when !rules.CapitalVerificationForNewEntities:
                throw new RegistryRefusedException(RegistryRefusalReason.CapitalVerificationNotAccepted,
                    $"batch {batch.BatchId} takes no capital verification report in place of the audit report; file an audit report for {rules.AuditReportYear}");
            case FinancialReportKind.CapitalVerification when !underAYear:
                throw new RegistryRefusedException(RegistryRefusalReason.CapitalVerificationNotAccepted,
                    $"a capital verification report stands in for the audit report only for an organisation established under a year before filing; {organisation.ProviderId} was established on {organisation.EstablishedOn:yyyy-MM-dd}");
            case FinancialReportKind.CapitalVerification:
                return;
            case FinancialReportKind.FinalAccounts when !publicInstitution:
                throw Invalid("financial_report_kind FINAL_ACCOUNTS is for public institutions; file an AUDIT_REPORT");
            case FinancialReportKind.AuditReport:
            case FinancialReportKind.FinalAccounts:
                break;
            default:
                throw Invalid("financial_report_kind must say what the financial report is (AUDIT_REPORT, FINAL_ACCOUNTS or CAPITAL_VERIFICATION)");
        }

        int year = (int)filing.AuditReportYear;
        if (year == rules.AuditReportYear)
        {
            return;
        }

        string alternatives = underAYear && rules.CapitalVerificationForNewEntities ? "; an organisation under a year old may file a capital verification report instead" : "";
        if (year == rules.AuditReportYear - 1 && rules.AuditReportPriorYearWithReason)
        {
            if (string.IsNullOrWhiteSpace(filing.AuditReportReason))
            {
                throw new RegistryRefusedException(RegistryRefusalReason.AuditReportYearInvalid,
                    $"a {year} report is accepted in place of the {rules.AuditReportYear} one only with a stated reason (audit_report_reason){alternatives}");
            }

            return;
        }

        string accepted = rules.AuditReportPriorYearWithReason ? $"{rules.AuditReportYear}, or {rules.AuditReportYear - 1} with a stated reason" : $"{rules.AuditReportYear} (batch {batch.BatchId} takes no earlier year)";
        throw new RegistryRefusedException(RegistryRefusalReason.AuditReportYearInvalid,
            $"the financial report must be for {accepted}; this one is for {(year == 0 ? "no year" : year.ToString(CultureInfo.InvariantCulture))}{alternatives}");
    }

    private static void CheckMaterial(Material material)
    {
        if (material.Kind == MaterialKind.Unspecified || !Enum.IsDefined(material.Kind))
        {
            throw Invalid("materials: every material needs its kind");
        }

        if (material.DocumentRef.Length is 0 or > 256)
        {
            throw Invalid($"materials: {Names.Of(material.Kind)} needs a document_ref of 1 to 256 characters");
        }

        if (material.Sha256.Length != 64 || !material.Sha256.All(char.IsAsciiHexDigitLower))
        {
            throw Invalid($"materials: {Names.Of(material.Kind)} needs its SHA-256 as 64 lower-case hex characters");
        }
    }

    private static void CheckText(string field, string value)
    {
        if (string.IsNullOrWhiteSpace(value) || value.Length > TextMax)
        {
            throw Invalid($"{field} must be given, up to {TextMax} characters");
        }
    }

    internal static RegistryRefusedException Invalid(string message) => new(RegistryRefusalReason.FieldInvalid, message);

    /// <summary>GFLOPS as PFLOPS with three decimals, by integer arithmetic.</summary>
    public static string Pflops(long gflops) => string.Create(CultureInfo.InvariantCulture, $"{gflops / 1_000_000:N0}.{gflops % 1_000_000 / 1_000:000}");
}
