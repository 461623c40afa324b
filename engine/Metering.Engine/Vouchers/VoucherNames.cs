namespace Metering.Engine.Vouchers;

/// <summary>How the voucher enums are spelt in the database, and back.</summary>
public static class VoucherNames
{
    public static string Of(HolderType type) => type switch
    {
        HolderType.HolderEnterprise => "enterprise",
        HolderType.HolderUniversity => "university",
        HolderType.HolderResearchInstitute => "research_institute",
        _ => throw new VoucherRefusedException(VoucherRefusalReason.VoucherFieldInvalid, "type must be HOLDER_ENTERPRISE, HOLDER_UNIVERSITY or HOLDER_RESEARCH_INSTITUTE"),
    };

    public static HolderType HolderTypeOf(string? name) => name switch
    {
        "enterprise" => HolderType.HolderEnterprise,
        "university" => HolderType.HolderUniversity,
        "research_institute" => HolderType.HolderResearchInstitute,
        _ => HolderType.Unspecified,
    };

    public static HolderStatus HolderStatusOf(string name) => name switch
    {
        "applicant" => HolderStatus.HolderApplicant,
        "holder" => HolderStatus.HolderApproved,
        "left" => HolderStatus.HolderLeft,
        _ => HolderStatus.Unspecified,
    };

    public static string Of(PayeeMode mode) => mode switch
    {
        PayeeMode.HolderReimbursement => "holder_reimbursement",
        PayeeMode.ProviderDeduction => "provider_deduction",
        _ => throw new VoucherRefusedException(VoucherRefusalReason.ParametersInvalid, "payee_mode must be HOLDER_REIMBURSEMENT or PROVIDER_DEDUCTION"),
    };

    public static PayeeMode PayeeModeOf(string name) => name switch
    {
        "holder_reimbursement" => PayeeMode.HolderReimbursement,
        "provider_deduction" => PayeeMode.ProviderDeduction,
        _ => PayeeMode.Unspecified,
    };

    public static string Of(SubsidyLimit limit) => limit switch
    {
        SubsidyLimit.LimitedByRatio => "ratio",
        SubsidyLimit.LimitedByVoucherRemaining => "voucher_remaining",
        SubsidyLimit.LimitedByAnnualCap => "annual_cap",
        SubsidyLimit.LimitedByStackingCap => "stacking_cap",
        _ => throw new ArgumentOutOfRangeException(nameof(limit), $"no cap is named {limit}"),
    };

    public static SubsidyLimit SubsidyLimitOf(string name) => name switch
    {
        "ratio" => SubsidyLimit.LimitedByRatio,
        "voucher_remaining" => SubsidyLimit.LimitedByVoucherRemaining,
        "annual_cap" => SubsidyLimit.LimitedByAnnualCap,
        "stacking_cap" => SubsidyLimit.LimitedByStackingCap,
        _ => SubsidyLimit.Unspecified,
    };

    public static HoldState HoldStateOf(string name) => name switch
    {
        "reserved" => HoldState.HoldReserved,
        "posted" => HoldState.HoldPosted,
        "voided" => HoldState.HoldVoided,
        "expired" => HoldState.HoldExpired,
        _ => HoldState.Unspecified,
    };
}
