using Metering.Engine.Registry;

namespace Metering.Engine.Vouchers;

// What the voucher book and redemptions take and return. Dates are yyyy-MM-dd text (Asia/Shanghai)
// and instants Unix milliseconds, as given: the book itself parses and checks them, in the order
// vouchers.proto lists its refusals, so that the first check that fails is the one reported.

/// <summary>A voucher holder. On registration the status and the lists are ignored; GetHolder alone fills the lists.</summary>
public sealed record Holder
{
    public string CreditCode { get; init; } = "";
    public string Name { get; init; } = "";
    public HolderType Type { get; init; }
    /// <summary>A Shenzhen district key or Chinese name; stored and returned as the key.</summary>
    public string District { get; init; } = "";
    public string EstablishedOn { get; init; } = "";
    public HolderStatus Status { get; init; }
    public IReadOnlyList<Contract> Contracts { get; init; } = [];
    public IReadOnlyList<Voucher> Vouchers { get; init; } = [];
}

/// <summary>One version of a programme year's parameters; ratios in basis points. On Put the version is assigned and an effective time of 0 means now.</summary>
public sealed record ProgrammeParameters
{
    public uint ProgrammeYear { get; init; }
    public uint Version { get; init; }
    public long EffectiveFromUnixMs { get; init; }
    public uint SupportRatioBp { get; init; }
    public uint StartupRatioBp { get; init; }
    public long AnnualCapFen { get; init; }
    public uint StackingCapBp { get; init; }
    public long MinAnnualRentalFen { get; init; }
    public PayeeMode PayeeMode { get; init; }
    public uint HoldDays { get; init; }
}

/// <summary>
/// A service contract between a holder and an admitted provider's service item. On recording,
/// the id, the start-up flag and the support totals are ignored, and a fee-schedule version of 0
/// asks for the version in force at the contract's start.
/// </summary>
public sealed record Contract
{
    public long ContractId { get; init; }
    public string HolderCode { get; init; } = "";
    public string ProviderId { get; init; } = "";
    public string ServiceItem { get; init; } = "";
    public string ContractNumber { get; init; } = "";
    public string SignedOn { get; init; } = "";
    public string StartsOn { get; init; } = "";
    public string EndsOn { get; init; } = "";
    public long AmountFen { get; init; }
    public uint FeeScheduleVersion { get; init; }
    public FeeUnit FeeUnit { get; init; }
    public bool NonRelatedParty { get; init; }
    public string DeclarationRef { get; init; } = "";
    public bool Startup { get; init; }
    public long OtherSupportFen { get; init; }
    public long VoucherSupportFen { get; init; }
}

/// <summary>A voucher: a face value a holder may redeem against one contract in one programme year, with its balances.</summary>
public sealed record Voucher
{
    public long VoucherId { get; init; }
    public long ContractId { get; init; }
    public string HolderCode { get; init; } = "";
    public string ProviderId { get; init; } = "";
    public uint ProgrammeYear { get; init; }
    public long FaceValueFen { get; init; }
    public string ValidFrom { get; init; } = "";
    public string ValidUntil { get; init; } = "";
    public long HeldFen { get; init; }
    public long PostedFen { get; init; }
    public long RemainingFen { get; init; }
    public long ReleasedFen { get; init; }
}

/// <summary>One device model of a claim, priced in the contract's unit.</summary>
public sealed record ClaimLine
{
    public string DeviceModel { get; init; } = "";
    public FeeUnit FeeUnit { get; init; }
    public long Records { get; init; }
    public long UsageNpfh { get; init; }
    public long CardMs { get; init; }
    public long PriceFen { get; init; }
    public long FeeFen { get; init; }
}

/// <summary>A redemption claim and its hold: the four amounts the subsidy is the least of, and which decided it.</summary>
public sealed record Claim
{
    public long ClaimId { get; init; }
    public long ContractId { get; init; }
    public long VoucherId { get; init; }
    public string HolderCode { get; init; } = "";
    public string ProviderId { get; init; } = "";
    public uint ProgrammeYear { get; init; }
    public uint ParametersVersion { get; init; }
    public PayeeMode PayeeMode { get; init; }
    public uint RatioBp { get; init; }
    public long Records { get; init; }
    public long EligibleFeeFen { get; init; }
    public long RatioSubsidyFen { get; init; }
    public long VoucherRemainingFen { get; init; }
    public long AnnualCapRemainingFen { get; init; }
    public long StackingRoomFen { get; init; }
    public long SubsidyFen { get; init; }
    public SubsidyLimit LimitedBy { get; init; }
    public HoldState HoldState { get; init; }
    public long HoldExpiresUnixMs { get; init; }
    public IReadOnlyList<ClaimLine> Lines { get; init; } = [];
    public IReadOnlyList<string> UsageDays { get; init; } = [];
    public long FiledUnixMs { get; init; }
}
