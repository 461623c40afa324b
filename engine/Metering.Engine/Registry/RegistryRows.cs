namespace Metering.Engine.Registry;

/// <summary>Rows of the registry tables as the workflow reads them. Dates are Asia/Shanghai calendar dates.</summary>
public sealed record OrganisationRow(string ProviderId, string Name, string LegalForm, string District, DateOnly EstablishedOn, long AdmissionEpoch, DateTimeOffset RegisteredAt);

public sealed record LicenceRow(string ProviderId, string LicenceNumber, string Issuer, DateOnly ValidFrom, DateOnly ValidUntil);

public sealed record ListingRow(string ProviderId, long ListingId, string ListName, DateOnly ListedFrom, DateOnly? ListedUntil, string Reason);

/// <summary>
/// A batch as the registry holds it: the version of its rules in force, who recorded that version
/// and when (with a correction's reason), its four-eyes setting, and the least annual rental of
/// its voucher programme year, read from that year's latest programme parameters (null when
/// there are none), and the days within which a refusal may be reconsidered (a setting, like four-eyes).
/// </summary>
public sealed record BatchRow(BatchRules Rules, bool SingleOperatorDecisions = false, int RulesVersion = 1, string RecordedBy = "", DateTimeOffset RecordedAt = default,
    string? CorrectionReason = null, long? MinAnnualRentalFen = null,
    int ReconsiderationDays = ReconsiderationRules.DaysDefault)
{
    public string BatchId => Rules.BatchId;

    public DateTimeOffset WindowOpensAt => Rules.WindowOpensAt;

    public DateTimeOffset WindowClosesAt => Rules.WindowClosesAt;

    public DateTimeOffset ValidityEndsAt => Rules.ValidityEndsAt;

    public int PublicNoticeDays => Rules.PublicNoticeDays;

    public int AuditReportYear => Rules.AuditReportYear;
}
