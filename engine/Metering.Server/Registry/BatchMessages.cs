using Metering.Engine.Registry;
using Metering.Protocol.V1;

namespace Metering.Server.Registry;

/// <summary>AdmissionBatch messages to the engine's batch rules and back; the engine never sees the message.</summary>
internal static class BatchMessages
{
    public static BatchRules RulesOf(AdmissionBatch batch) => new(
        batch.BatchId,
        Instant(batch.WindowOpensUnixMs),
        Instant(batch.WindowClosesUnixMs),
        Instant(batch.ValidityEndsUnixMs),
        (int)Math.Min(batch.PublicNoticeDays, int.MaxValue),
        batch.CapacityMinimumGflops,
        batch.MaterialsRequired.Select(kind => Names.Of(RegistryMapping.ToEngine(kind))).ToArray(),
        (int)Math.Min(batch.AuditReportYear, int.MaxValue),
        batch.AuditReportPriorYearWithReason,
        batch.CapitalVerificationForNewEntities,
        (int)Math.Min(batch.VoucherProgrammeYear, int.MaxValue));

    public static AdmissionBatch ToMessage(BatchRow row) => new()
    {
        BatchId = row.BatchId,
        WindowOpensUnixMs = row.WindowOpensAt.ToUnixTimeMilliseconds(),
        WindowClosesUnixMs = row.WindowClosesAt.ToUnixTimeMilliseconds(),
        ValidityEndsUnixMs = row.ValidityEndsAt.ToUnixTimeMilliseconds(),
        PublicNoticeDays = (uint)row.PublicNoticeDays,
        AuditReportYear = (uint)row.AuditReportYear,
        SingleOperatorDecisions = row.SingleOperatorDecisions,
        ReconsiderationDays = (uint)row.ReconsiderationDays,
        CapacityMinimumGflops = row.Rules.CapacityMinimumGflops,
        MaterialsRequired = { row.Rules.MaterialsRequired.Select(name => RegistryMapping.ToWire(Names.MaterialKindOf(name))) },
        AuditReportPriorYearWithReason = row.Rules.AuditReportPriorYearWithReason,
        CapitalVerificationForNewEntities = row.Rules.CapitalVerificationForNewEntities,
        VoucherProgrammeYear = (uint)row.Rules.VoucherProgrammeYear,
        MinAnnualRentalFen = row.MinAnnualRentalFen ?? 0,
        RulesVersion = (uint)row.RulesVersion,
        CorrectionReason = row.CorrectionReason ?? "",
        RulesRecordedBy = row.RecordedBy,
        RulesRecordedUnixMs = row.RecordedAt.ToUnixTimeMilliseconds(),
    };

    /// <summary>
    /// Unix milliseconds as an instant; one outside what an instant holds becomes the earliest,
    /// which the rules' own check refuses as out of range.
    /// </summary>
    private static DateTimeOffset Instant(long unixMs) =>
        unixMs is >= -62_135_596_800_000 and <= 253_402_300_799_999 ? DateTimeOffset.FromUnixTimeMilliseconds(unixMs) : DateTimeOffset.MinValue;
}
