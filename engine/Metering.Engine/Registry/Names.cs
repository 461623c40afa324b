namespace Metering.Engine.Registry;

/// <summary>How the registry's enums are spelt in the database and in messages, and the forms of ids.</summary>
public static class Names
{
    public static string Of(MaterialKind kind) => kind switch
    {
        MaterialKind.BusinessLicence => "business_licence",
        MaterialKind.FinancialReport => "financial_report",
        MaterialKind.TaxCertificate => "tax_certificate",
        MaterialKind.IdcIspLicence => "idc_isp_licence",
        MaterialKind.CapacityProof => "capacity_proof",
        MaterialKind.MeteringLogProof => "metering_log_proof",
        MaterialKind.ServiceAndFees => "service_and_fees",
        MaterialKind.CommitmentLetters => "commitment_letters",
        _ => "unspecified",
    };

    public static MaterialKind MaterialKindOf(string name) =>
        Enum.GetValues<MaterialKind>().FirstOrDefault(k => Of(k) == name);

    public static string Of(LegalForm form) => form switch
    {
        LegalForm.Enterprise => "enterprise",
        LegalForm.PublicInstitution => "public_institution",
        LegalForm.Branch => "branch",
        _ => throw FilingRules.Invalid("legal_form must be ENTERPRISE, PUBLIC_INSTITUTION or BRANCH"),
    };

    public static LegalForm LegalFormOf(string name) => name switch
    {
        "enterprise" => LegalForm.Enterprise,
        "public_institution" => LegalForm.PublicInstitution,
        "branch" => LegalForm.Branch,
        _ => LegalForm.Unspecified,
    };

    public static string Article(string legalForm) => legalForm switch
    {
        "enterprise" => "an enterprise",
        "branch" => "a branch",
        _ => "a public institution",
    };

    public static string Of(ApplicationState state) => state switch
    {
        ApplicationState.AwaitingMaterialReview => "awaiting_material_review",
        ApplicationState.AwaitingVerification => "awaiting_verification",
        ApplicationState.AwaitingPublicNotice => "awaiting_public_notice",
        ApplicationState.InPublicNotice => "in_public_notice",
        ApplicationState.AwaitingAdmissionNotice => "awaiting_admission_notice",
        ApplicationState.Admitted => "admitted",
        ApplicationState.Rejected => "rejected",
        ApplicationState.UnderReconsideration => "under_reconsideration",
        _ => "",
    };

    public static ApplicationState StateOf(string name) =>
        Enum.GetValues<ApplicationState>().FirstOrDefault(s => Of(s) == name);

    public static string Of(FinancialReportKind kind) => kind switch
    {
        FinancialReportKind.AuditReport => "audit_report",
        FinancialReportKind.FinalAccounts => "final_accounts",
        FinancialReportKind.CapitalVerification => "capital_verification",
        _ => "unspecified",
    };

    public static FinancialReportKind FinancialReportKindOf(string name) =>
        Enum.GetValues<FinancialReportKind>().FirstOrDefault(k => Of(k) == name);

    public static string Of(FeeUnit unit) => unit switch
    {
        FeeUnit.PerPflopsHour => "per_pflops_hour",
        FeeUnit.PerCardHour => "per_card_hour",
        _ => "unspecified",
    };

    public static FeeUnit FeeUnitOf(string name) => Enum.GetValues<FeeUnit>().FirstOrDefault(u => Of(u) == name);

    public static readonly string[] ListNames = ["research_integrity", "serious_dishonesty", "overdue_acceptance", "funding_restricted", "integrity_anomaly"];

    public static void CheckServiceItem(string item)
    {
        if (!IsId(item, 64))
        {
            throw FilingRules.Invalid("service_item must be 1 to 64 characters from [A-Za-z0-9._-]");
        }
    }

    public static void CheckBatchId(string batchId)
    {
        if (!IsId(batchId, 32))
        {
            throw FilingRules.Invalid("batch_id must be 1 to 32 characters from [A-Za-z0-9._-]");
        }
    }

    /// <summary>Whether <paramref name="batchId"/> is a well-formed batch id (see <see cref="CheckBatchId"/>).</summary>
    public static bool IsBatchId(string batchId) => IsId(batchId, 32);

    private static bool IsId(string value, int lengthMax) =>
        value.Length >= 1 && value.Length <= lengthMax && value.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-');
}
