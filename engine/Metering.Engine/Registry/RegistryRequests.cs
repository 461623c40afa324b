namespace Metering.Engine.Registry;

// What the registry's workflow takes, as the engine's own records; the server maps the wire's
// requests to them (Server/Registry/RegistryMapping.cs). The registry checks every field itself,
// so a record holds what the caller sent, unchecked.

/// <summary>An operator passing or rejecting one stage of one application; a rejection needs its reasons.</summary>
public sealed record OperatorDecision(long ApplicationId, bool Pass, string Reasons = "");

/// <summary>An objection raised while an application's public notice runs.</summary>
public sealed record Objection(long ApplicationId, string Objector, string Content);

/// <summary>The admission notice that admits an application's service item, under its number.</summary>
public sealed record AdmissionNotice(long ApplicationId, string NoticeNumber);

/// <summary>An operator's change of an admitted service item's status; suspension and revocation need reasons.</summary>
public sealed record ServiceItemStatusChange(string CreditCode, string ServiceItem, ServiceItemAction Action, string Reasons = "");

/// <summary>False materials found in an organisation's filings, with what was found false.</summary>
public sealed record FalseMaterialsFinding(string CreditCode, string Reasons);

/// <summary>One filed document: its kind, where it is kept, and its SHA-256 as 64 lower-case hex characters.</summary>
public sealed record Material(MaterialKind Kind, string DocumentRef, string Sha256);

/// <summary>One line of a fee schedule: the price in fen of one unit of one catalog model's use.</summary>
public sealed record FeeLine(string DeviceModel, FeeUnit Unit, long PriceFen);

/// <summary>Devices of one catalog model declared at one site.</summary>
public sealed record DeclaredDevices(string Site, string DeviceModel, uint DeviceCount);

/// <summary>
/// An application as its applicant files it. Dates and years are as the applicant gave them.
/// </summary>
public sealed record ApplicationFiling
{
    public string BatchId { get; init; } = "";

    public string CreditCode { get; init; } = "";

    public string ServiceItem { get; init; } = "";

    public IReadOnlyList<Material> Materials { get; init; } = [];

    public FinancialReportKind FinancialReportKind { get; init; }

    /// <summary>The year of the financial report; 0 for none.</summary>
    public uint AuditReportYear { get; init; }

    /// <summary>Why a report of the year before was filed, where one was.</summary>
    public string AuditReportReason { get; init; } = "";

    public IReadOnlyList<DeclaredDevices> Capacity { get; init; } = [];

    public string ServiceContent { get; init; } = "";

    public string ServiceStandards { get; init; } = "";

    public IReadOnlyList<FeeLine> Fees { get; init; } = [];

    /// <summary>The applicant's ingest stream that proves it keeps metering logs; its id starts with "proof:".</summary>
    public string MeteringProofStream { get; init; } = "";

    /// <summary>The intermediary the application was filed through; empty for none.</summary>
    public string Intermediary { get; init; } = "";

    /// <summary>The application whose admission this one renews; 0 for a new admission.</summary>
    public long RenewsApplicationId { get; init; }
}

/// <summary>A new fee schedule an admitted provider files for one of its service items.</summary>
public sealed record FeeScheduleFiling(string CreditCode, string ServiceItem, long EffectiveFromUnixMs, IReadOnlyList<FeeLine> Lines);
