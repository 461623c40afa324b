namespace Metering.Engine.Registry;

/// <summary>Rows of the registry tables as the workflow reads them. Dates are Asia/Shanghai calendar dates.</summary>
public sealed record OrganisationRow(string ProviderId, string Name, string LegalForm, string District, DateOnly EstablishedOn, long AdmissionEpoch, DateTimeOffset RegisteredAt);

public sealed record LicenceRow(string ProviderId, string LicenceNumber, string Issuer, DateOnly ValidFrom, DateOnly ValidUntil);

public sealed record ListingRow(string ProviderId, long ListingId, string ListName, DateOnly ListedFrom, DateOnly? ListedUntil, string Reason);

public sealed record BatchRow(string BatchId, DateTimeOffset WindowOpensAt, DateTimeOffset WindowClosesAt, DateTimeOffset ValidityEndsAt, int PublicNoticeDays, int AuditReportYear, bool SingleOperatorDecisions = false,
    int ReconsiderationDays = ReconsiderationRules.DaysDefault);

/// <summary>Shenzhen local dates: the guide's dates are Beijing time, which has no daylight saving.</summary>
public static class ShanghaiTime
{
    public static readonly TimeSpan Offset = TimeSpan.FromHours(8);

    public static DateOnly DateOf(DateTimeOffset instant) => DateOnly.FromDateTime(instant.ToOffset(Offset).DateTime);

    /// <summary>The first instant of a local date.</summary>
    public static DateTimeOffset StartOf(DateOnly date) => new(date.ToDateTime(TimeOnly.MinValue), Offset);
}
