namespace Metering.Engine.Vouchers;

// The voucher book's enums. Each has the same member names at the same numbers as its twin in
// vouchers.proto, so that the server maps them by value (VoucherMapping) and a test keeps the two
// equal member by member.

/// <summary>What kind of organisation a holder is; the programme admits these three.</summary>
public enum HolderType
{
    Unspecified = 0,
    HolderEnterprise = 1,
    HolderUniversity = 2,
    HolderResearchInstitute = 3,
}

/// <summary>Where a holder stands: applicant, approved holder, or left the role.</summary>
public enum HolderStatus
{
    Unspecified = 0,
    HolderApplicant = 1,
    HolderApproved = 2,
    HolderLeft = 3,
}

/// <summary>Who receives a voucher's subsidy: the holder after its spend, or the provider as a deduction from the bill.</summary>
public enum PayeeMode
{
    Unspecified = 0,
    HolderReimbursement = 1,
    ProviderDeduction = 2,
}

/// <summary>Which cap decided a subsidy.</summary>
public enum SubsidyLimit
{
    Unspecified = 0,
    LimitedByRatio = 1,
    LimitedByVoucherRemaining = 2,
    LimitedByAnnualCap = 3,
    LimitedByStackingCap = 4,
}

/// <summary>Where a claim's hold stands.</summary>
public enum HoldState
{
    Unspecified = 0,
    HoldReserved = 1,
    HoldPosted = 2,
    HoldVoided = 3,
    HoldExpired = 4,
}
