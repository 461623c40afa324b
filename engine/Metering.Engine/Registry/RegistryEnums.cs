namespace Metering.Engine.Registry;

// The registry's enums as the engine holds them. Each mirrors its wire twin in registry.proto by
// name and number, so that the server maps one to the other by value (Server/Registry/RegistryMapping.cs);
// RegistryEnumMirrorTests keeps the pairs from drifting apart. How each is spelt in the database is
// Names' business.

/// <summary>Where an application stands in the admission workflow (metering.v1.ApplicationState).</summary>
public enum ApplicationState
{
    /// <summary>Not used; in a listing's filter, any state.</summary>
    Unspecified = 0,

    /// <summary>Filed; the electronic material review is next.</summary>
    AwaitingMaterialReview = 1,

    /// <summary>Materials passed; the commissioned verification is next.</summary>
    AwaitingVerification = 2,

    /// <summary>Verified; consultation and public notice are next.</summary>
    AwaitingPublicNotice = 3,

    /// <summary>Public notice is running; objections are recorded until the decision.</summary>
    InPublicNotice = 4,

    /// <summary>Admission decided; the admission notice is next.</summary>
    AwaitingAdmissionNotice = 5,

    /// <summary>The admission notice was issued and the service item admitted.</summary>
    Admitted = 6,

    /// <summary>Refused at one of the stages.</summary>
    Rejected = 7,

    /// <summary>Refused, and the refusal is being reconsidered.</summary>
    UnderReconsideration = 8,
}

/// <summary>An organisation's legal form (metering.v1.LegalForm).</summary>
public enum LegalForm
{
    /// <summary>Not used.</summary>
    Unspecified = 0,

    /// <summary>An enterprise legal person (企业).</summary>
    Enterprise = 1,

    /// <summary>A public institution (事业单位); it files no tax certificate.</summary>
    PublicInstitution = 2,

    /// <summary>A Shenzhen branch of an institution registered elsewhere (分支机构).</summary>
    Branch = 3,
}

/// <summary>The eight kinds of material the admission guide names (metering.v1.MaterialKind).</summary>
public enum MaterialKind
{
    /// <summary>Not used.</summary>
    Unspecified = 0,

    /// <summary>Business licence or public-institution registration certificate.</summary>
    BusinessLicence = 1,

    /// <summary>Audited financial report, final accounts or capital verification report.</summary>
    FinancialReport = 2,

    /// <summary>Last year's tax certificate; not for public institutions.</summary>
    TaxCertificate = 3,

    /// <summary>The IDC/ISP licence.</summary>
    IdcIspLicence = 4,

    /// <summary>Proof of the capacity the batch requires.</summary>
    CapacityProof = 5,

    /// <summary>Proof that the platform keeps compute-usage metering logs.</summary>
    MeteringLogProof = 6,

    /// <summary>Service content, qualifications and fee schedule.</summary>
    ServiceAndFees = 7,

    /// <summary>Commitment letters, the training-audit consent among them.</summary>
    CommitmentLetters = 8,
}

/// <summary>What kind of financial report was filed (metering.v1.FinancialReportKind).</summary>
public enum FinancialReportKind
{
    /// <summary>Not used.</summary>
    Unspecified = 0,

    /// <summary>An audited financial report of an enterprise or branch.</summary>
    AuditReport = 1,

    /// <summary>A public institution's reviewed final accounts.</summary>
    FinalAccounts = 2,

    /// <summary>A capital verification report, for an organisation registered under a year.</summary>
    CapitalVerification = 3,
}

/// <summary>Where an admitted service item stands (metering.v1.ServiceItemStatus).</summary>
public enum ServiceItemStatus
{
    /// <summary>Not used.</summary>
    Unspecified = 0,

    /// <summary>Admitted and within its validity.</summary>
    Active = 1,

    /// <summary>Suspended until reinstated.</summary>
    Suspended = 2,

    /// <summary>Left voluntarily.</summary>
    Withdrawn = 3,

    /// <summary>Revoked for a violation.</summary>
    Revoked = 4,

    /// <summary>Past its validity end.</summary>
    Expired = 5,
}

/// <summary>A change an operator makes to an admitted service item's status (metering.v1.ServiceItemAction).</summary>
public enum ServiceItemAction
{
    /// <summary>Not used; refused as FIELD_INVALID.</summary>
    Unspecified = 0,

    /// <summary>Suspend it from now; reasons required.</summary>
    Suspend = 1,

    /// <summary>Lift a suspension from now.</summary>
    Reinstate = 2,

    /// <summary>The provider leaves voluntarily, from now.</summary>
    Withdraw = 3,

    /// <summary>Revoke for a violation, from now; reasons required.</summary>
    Revoke = 4,
}

/// <summary>The unit a fee line prices (metering.v1.FeeUnit).</summary>
public enum FeeUnit
{
    /// <summary>Not used; a fee line without a unit is refused.</summary>
    Unspecified = 0,

    /// <summary>Fen per FP16 PFLOPS·h of normalised usage.</summary>
    PerPflopsHour = 1,

    /// <summary>Fen per device-hour (card-hour).</summary>
    PerCardHour = 2,
}
