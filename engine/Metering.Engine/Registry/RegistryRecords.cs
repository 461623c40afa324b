namespace Metering.Engine.Registry;

// What the registry holds and answers with, as the engine's own records; the server maps them to
// the wire's messages (Server/Registry/RegistryMapping.cs). Dates are Asia/Shanghai calendar dates
// as yyyy-MM-dd, instants Unix milliseconds, as registry.proto documents them.

/// <summary>An organisation with its licences, its integrity listings and its admitted service items.</summary>
public sealed record Organisation
{
    /// <summary>The unified social credit code, which is also the provider's id.</summary>
    public string CreditCode { get; init; } = "";

    public string Name { get; init; } = "";

    public LegalForm LegalForm { get; init; }

    /// <summary>The Shenzhen district it is registered in.</summary>
    public string District { get; init; } = "";

    public string EstablishedOn { get; init; } = "";

    public IReadOnlyList<Licence> Licences { get; init; } = [];

    public IReadOnlyList<IntegrityListing> Listings { get; init; } = [];

    public IReadOnlyList<ServiceItem> ServiceItems { get; init; } = [];
}

/// <summary>An IDC/ISP licence and the dates it is valid on, both included.</summary>
public sealed record Licence
{
    public string CreditCode { get; init; } = "";

    public string LicenceNumber { get; init; } = "";

    public string Issuer { get; init; } = "";

    public string ValidFrom { get; init; } = "";

    public string ValidUntil { get; init; } = "";
}

/// <summary>An entry on one of the integrity lists; an empty end date means it has none.</summary>
public sealed record IntegrityListing
{
    public string CreditCode { get; init; } = "";

    /// <summary>The list's name, one of <see cref="Names.ListNames"/>.</summary>
    public string List { get; init; } = "";

    public string ListedFrom { get; init; } = "";

    public string ListedUntil { get; init; } = "";

    public string Reason { get; init; } = "";
}

/// <summary>An admitted service item: one admission of it, with its status now.</summary>
public sealed record ServiceItem
{
    public string CreditCode { get; init; } = "";

    /// <summary>The service item's id.</summary>
    public string Item { get; init; } = "";

    /// <summary>The application that admitted it.</summary>
    public long ApplicationId { get; init; }

    public string NoticeNumber { get; init; } = "";

    public long ValidFromUnixMs { get; init; }

    /// <summary>The end of its validity, or the moment it was withdrawn or revoked where that came first.</summary>
    public long ValidUntilUnixMs { get; init; }

    public ServiceItemStatus Status { get; init; }

    /// <summary>Why it ended, or why it is suspended; empty otherwise.</summary>
    public string StatusReason { get; init; } = "";

    public uint FeeScheduleVersion { get; init; }

    /// <summary>The application whose admission this one renews; 0 for none.</summary>
    public long RenewsApplicationId { get; init; }
}

/// <summary>One version of a service item's fee schedule, in force from its instant on.</summary>
public sealed record FeeSchedule
{
    public string CreditCode { get; init; } = "";

    public string ServiceItem { get; init; } = "";

    public uint Version { get; init; }

    public long EffectiveFromUnixMs { get; init; }

    public IReadOnlyList<FeeLine> Lines { get; init; } = [];
}

/// <summary>One change to the registry as its history records it, with the entity before and after as JSON.</summary>
public sealed record HistoryEntry
{
    public long ChangeId { get; init; }

    public string Actor { get; init; } = "";

    public string Role { get; init; } = "";

    public long AtUnixMs { get; init; }

    public string Entity { get; init; } = "";

    public string EntityKey { get; init; } = "";

    public string Action { get; init; } = "";

    public string BeforeJson { get; init; } = "";

    public string AfterJson { get; init; } = "";
}

/// <summary>An application for admission as the registry holds it; the details (content, fees, materials, capacity) only where asked for.</summary>
public sealed record Application
{
    public long ApplicationId { get; init; }

    public string CreditCode { get; init; } = "";

    public string BatchId { get; init; } = "";

    public string ServiceItem { get; init; } = "";

    public ApplicationState State { get; init; }

    public long FiledUnixMs { get; init; }

    public long DeclaredFp16Gflops { get; init; }

    /// <summary>The verified capacity; 0 until the verification records one.</summary>
    public long VerifiedFp16Gflops { get; init; }

    public string Intermediary { get; init; } = "";

    /// <summary>When the public notice ends; 0 before it opens.</summary>
    public long NoticeEndsUnixMs { get; init; }

    public string NoticeNumber { get; init; } = "";

    public IReadOnlyList<StageEntry> Stages { get; init; } = [];

    public IReadOnlyList<Material> Materials { get; init; } = [];

    public IReadOnlyList<DeclaredDevices> Capacity { get; init; } = [];

    /// <summary>The fee lines filed.</summary>
    public IReadOnlyList<FeeLine> Fees { get; init; } = [];

    public string MeteringProofStream { get; init; } = "";

    public ulong MeteringProofRecords { get; init; }

    public string ServiceContent { get; init; } = "";

    public string ServiceStandards { get; init; } = "";

    /// <summary>The decision proposed under four-eyes and awaiting approval, or null.</summary>
    public StageProposal? PendingProposal { get; init; }

    public long RenewsApplicationId { get; init; }
}

/// <summary>One recorded stage of an application: who decided what, when, and why.</summary>
public sealed record StageEntry
{
    public string Stage { get; init; } = "";

    public string Actor { get; init; } = "";

    public long AtUnixMs { get; init; }

    public string Outcome { get; init; } = "";

    public string Reasons { get; init; } = "";
}

/// <summary>A stage decision proposed under four-eyes, awaiting a second, different operator.</summary>
public sealed record StageProposal
{
    public uint ProposalNo { get; init; }

    public string Stage { get; init; } = "";

    public bool Pass { get; init; }

    public long VerifiedFp16Gflops { get; init; }

    public string Reasons { get; init; } = "";

    public string ProposedBy { get; init; } = "";

    public long ProposedUnixMs { get; init; }
}
