namespace Metering.Engine.Registry;

/// <summary>
/// Why the registry refused a call. The members mirror the wire enum metering.v1.RegistryRefusal
/// by name and number; the server maps one to the other by value (Server/Registry/RegistryRefusals.cs),
/// and a test keeps the two from drifting apart.
/// </summary>
public enum RegistryRefusalReason
{
    /// <summary>Not used.</summary>
    Unspecified = 0,

    /// <summary>The caller's role may not make this call (PERMISSION_DENIED). Every service uses this reason for a role its access policy does not allow.</summary>
    RoleNotAllowed = 1,

    /// <summary>A provider asked for, or wrote, another provider's entries (PERMISSION_DENIED).</summary>
    OtherProvider = 2,

    /// <summary>A field is missing or malformed; the message names it (INVALID_ARGUMENT).</summary>
    FieldInvalid = 3,

    /// <summary>The credit code's check character is wrong or its form is not GB 32100 (INVALID_ARGUMENT).</summary>
    CreditCodeInvalid = 4,

    /// <summary>The organisation is not registered in Shenzhen (INVALID_ARGUMENT).</summary>
    NotRegisteredInShenzhen = 5,

    /// <summary>No organisation with that credit code is registered (NOT_FOUND).</summary>
    OrganisationUnknown = 6,

    /// <summary>The organisation is already registered (ALREADY_EXISTS).</summary>
    OrganisationExists = 7,

    /// <summary>No admission batch with that id (NOT_FOUND).</summary>
    BatchUnknown = 8,

    /// <summary>The filing time is outside the batch's application window (FAILED_PRECONDITION).</summary>
    OutsideBatchWindow = 9,

    /// <summary>A kind of material the batch requires (materials_required) is missing; metadata `kind` names it (FAILED_PRECONDITION).</summary>
    MaterialMissing = 10,

    /// <summary>The audited financial report is not for the batch's audit_report_year (2024 in 2025), or is for the year before without a stated reason or where the batch does not accept it (FAILED_PRECONDITION).</summary>
    AuditReportYearInvalid = 11,

    /// <summary>No longer sent: a capital verification report is optional for an organisation registered under a year (the guide's 可提供), which may file an audit report instead. Kept so that the number is never reused.</summary>
    CapitalVerificationRequired = 12,

    /// <summary>A tax certificate is required of every organisation but a public institution (FAILED_PRECONDITION).</summary>
    TaxCertificateMissing = 13,

    /// <summary>The organisation holds no IDC/ISP licence valid at the filing time (FAILED_PRECONDITION).</summary>
    NoValidLicence = 14,

    /// <summary>The organisation is on an integrity list at the filing time (FAILED_PRECONDITION).</summary>
    OnIntegrityList = 15,

    /// <summary>The organisation holds or has applied for vouchers; it cannot also be a provider (FAILED_PRECONDITION).</summary>
    VoucherHolderConflict = 16,

    /// <summary>The application was filed through an intermediary. Not a call's refusal: material review rejects such an application whatever the operator asked, and the review stage's reasons start with this name.</summary>
    FiledViaIntermediary = 17,

    /// <summary>Declared or verified FP16 capacity is below the batch's capacity bar (capacity_minimum_gflops; 300 PFLOPS in 2025) (FAILED_PRECONDITION).</summary>
    CapacityBelowMinimum = 18,

    /// <summary>The named metering-log proof stream holds no records (FAILED_PRECONDITION).</summary>
    MeteringProofMissing = 19,

    /// <summary>The named metering-log proof stream does not pass chain verification (FAILED_PRECONDITION).</summary>
    MeteringProofBroken = 20,

    /// <summary>A device model is not in the device catalog (INVALID_ARGUMENT).</summary>
    DeviceModelUnknown = 21,

    /// <summary>The service item is admitted and its admission has not ended, or it has an application in progress, or a renewal of it is already admitted (ALREADY_EXISTS). An item whose admission expired, was withdrawn or revoked may be applied for again; an item still admitted is applied for again only as a renewal (FileApplicationRequest.renews_application_id).</summary>
    ServiceItemTaken = 22,

    /// <summary>No application with that id (NOT_FOUND).</summary>
    ApplicationUnknown = 23,

    /// <summary>The application is not at the stage this call acts on (FAILED_PRECONDITION).</summary>
    WrongStage = 24,

    /// <summary>Another operator decided this stage first; metadata names who and when (ABORTED).</summary>
    AlreadyDecided = 25,

    /// <summary>The public notice period has not ended yet (FAILED_PRECONDITION).</summary>
    NoticePeriodRunning = 26,

    /// <summary>A rejection, revocation or suspension needs reasons; so does an admission over objections (INVALID_ARGUMENT).</summary>
    ReasonRequired = 27,

    /// <summary>No admitted service item with that name (NOT_FOUND).</summary>
    ServiceItemUnknown = 28,

    /// <summary>The status change is not possible from the item's current status (FAILED_PRECONDITION).</summary>
    StatusChangeInvalid = 29,

    /// <summary>The admission notice number is already used (ALREADY_EXISTS).</summary>
    NoticeNumberTaken = 30,

    /// <summary>The fee schedule is empty, has a duplicate line or a non-positive price (INVALID_ARGUMENT).</summary>
    FeeScheduleInvalid = 31,

    /// <summary>The licence, listing or batch has an end before its start (INVALID_ARGUMENT).</summary>
    PeriodInvalid = 32,

    /// <summary>Verification was asked to take the capacity probe's figure (verified_fp16_gflops = 0), but the provider has no completed, unexpired fleet validation (FAILED_PRECONDITION).</summary>
    CapacityUnverified = 33,

    /// <summary>Four-eyes: the operator approving a proposal is the one who made it (PERMISSION_DENIED).</summary>
    SameOperator = 34,

    /// <summary>The application has no pending proposal to approve (FAILED_PRECONDITION).</summary>
    NoPendingProposal = 35,

    /// <summary>The proposal named was superseded by a newer one; read the application and approve what it now shows (FAILED_PRECONDITION).</summary>
    ProposalChanged = 36,

    /// <summary>A renewal names an admission it cannot renew: not an admission of the applicant, of another service item, one that has ended, one already followed by a later admission, or a batch that is the same as, or ends no later than, the admission renewed (FAILED_PRECONDITION).</summary>
    RenewalInvalid = 37,

    /// <summary>Reconsideration was asked for after the batch's reconsideration_days from the refusal had passed; metadata `window_ends_unix_ms` says when the window ended (FAILED_PRECONDITION).</summary>
    ReconsiderationWindowClosed = 38,

    /// <summary>This refusal's reconsideration was already asked for; each refusal is reconsidered once (ALREADY_EXISTS).</summary>
    ReconsiderationAlreadyRequested = 39,

    /// <summary>Reconsideration is asked for an application that is not rejected (FAILED_PRECONDITION).</summary>
    ApplicationNotRejected = 40,

    /// <summary>The application has no reconsideration awaiting a decision (FAILED_PRECONDITION).</summary>
    NoPendingReconsideration = 41,

    /// <summary>The application was rejected for false materials or as a renewal of an admission that ended early, not by a review stage; such a rejection is not reconsidered (FAILED_PRECONDITION).</summary>
    NotReconsiderable = 42,

    /// <summary>A change to the rules of a batch whose filing window has opened, without a correction_reason; metadata `fields` names the rules it would change and `rules_version` the version in force (FAILED_PRECONDITION). Nothing changed.</summary>
    BatchRulesFrozen = 43,

    /// <summary>A batch's rules do not hold: a capacity bar that is not positive, an unknown or repeated material kind, an audit report year not before the window's year, a voucher programme year with no programme parameters; metadata `field` names the rule (INVALID_ARGUMENT).</summary>
    BatchRulesInvalid = 44,

    /// <summary>A capital verification report was filed where the batch does not take one: by an organisation established a year or more before filing, or in a batch whose capital_verification_for_new_entities is false (FAILED_PRECONDITION).</summary>
    CapitalVerificationNotAccepted = 45,

    /// <summary>A commissioned verifier's part does not hold: an empty or repeated model, no devices or more than 1,000,000, a figure that is not positive or is above the catalog's dense FP16 peak of the devices confirmed, more than 64 parts, or parts beside a typed total (verified_fp16_gflops &gt; 0); metadata `part` (from 1) and `field` name it. A model outside the catalog is DEVICE_MODEL_UNKNOWN with the same metadata (INVALID_ARGUMENT). Nothing changed.</summary>
    VerifierPartInvalid = 46,

    /// <summary>A commissioned verifier's part names a model the provider's fleet validation in force already covers: the probe's figure counts that model, and it may not be counted twice; metadata `device_model` and `validation_id` name them (FAILED_PRECONDITION). Nothing changed.</summary>
    VerifierPartCoveredByProbe = 47,
}
