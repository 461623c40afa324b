namespace Metering.Engine.Vouchers;

// The requests of the book and of redemptions that are not a holder, contract or parameters
// record themselves.

/// <summary>Issues a voucher on a contract for a programme year; empty validity dates mean 1 January and 31 December.</summary>
public sealed record VoucherIssue(long ContractId, uint ProgrammeYear, long FaceValueFen, string ValidFrom = "", string ValidUntil = "");

/// <summary>Other public support recorded against a contract, counted under its stacking cap.</summary>
public sealed record OtherSupport(long ContractId, string Source, long AmountFen);

/// <summary>
/// Files a claim for a contract's usage, named by job ids (searched in the programme year, 0 for
/// this year) or by a period [from, until) in Unix milliseconds, not both.
/// </summary>
public sealed record ClaimFiling(long ContractId, IReadOnlyList<string> JobIds, long PeriodFromUnixMs = 0, long PeriodUntilUnixMs = 0, uint ProgrammeYear = 0);

/// <summary>Voids a claim whose hold is reserved, with the reason recorded.</summary>
public sealed record ClaimVoid(long ClaimId, string Reason);
