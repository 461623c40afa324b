using Metering.Engine.Vouchers;
using Wire = Metering.Protocol.V1;

namespace Metering.Server.Vouchers;

/// <summary>
/// The voucher book's records to and from vouchers.proto's messages. Enums go across by value:
/// the engine's and the wire's hold the same names at the same numbers (VoucherMappingTests), so
/// a value the wire does not name reaches the book as itself and is refused there, as before.
/// </summary>
internal static class VoucherMapping
{
    public static Holder ToEngine(Wire.Holder holder) => new()
    {
        CreditCode = holder.CreditCode,
        Name = holder.Name,
        Type = (HolderType)(int)holder.Type,
        District = holder.District,
        EstablishedOn = holder.EstablishedOn,
        Status = (HolderStatus)(int)holder.Status,
    };

    public static Wire.Holder ToWire(Holder holder) => new()
    {
        CreditCode = holder.CreditCode,
        Name = holder.Name,
        Type = (Wire.HolderType)(int)holder.Type,
        District = holder.District,
        EstablishedOn = holder.EstablishedOn,
        Status = (Wire.HolderStatus)(int)holder.Status,
        Contracts = { holder.Contracts.Select(ToWire) },
        Vouchers = { holder.Vouchers.Select(ToWire) },
    };

    public static ProgrammeParameters ToEngine(Wire.ProgrammeParameters parameters) => new()
    {
        ProgrammeYear = parameters.ProgrammeYear,
        Version = parameters.Version,
        EffectiveFromUnixMs = parameters.EffectiveFromUnixMs,
        SupportRatioBp = parameters.SupportRatioBp,
        StartupRatioBp = parameters.StartupRatioBp,
        AnnualCapFen = parameters.AnnualCapFen,
        StackingCapBp = parameters.StackingCapBp,
        MinAnnualRentalFen = parameters.MinAnnualRentalFen,
        PayeeMode = (PayeeMode)(int)parameters.PayeeMode,
        HoldDays = parameters.HoldDays,
    };

    public static Wire.ProgrammeParameters ToWire(ProgrammeParameters parameters) => new()
    {
        ProgrammeYear = parameters.ProgrammeYear,
        Version = parameters.Version,
        EffectiveFromUnixMs = parameters.EffectiveFromUnixMs,
        SupportRatioBp = parameters.SupportRatioBp,
        StartupRatioBp = parameters.StartupRatioBp,
        AnnualCapFen = parameters.AnnualCapFen,
        StackingCapBp = parameters.StackingCapBp,
        MinAnnualRentalFen = parameters.MinAnnualRentalFen,
        PayeeMode = (Wire.PayeeMode)(int)parameters.PayeeMode,
        HoldDays = parameters.HoldDays,
    };

    public static Contract ToEngine(Wire.Contract contract) => new()
    {
        ContractId = contract.ContractId,
        HolderCode = contract.HolderCode,
        ProviderId = contract.ProviderId,
        ServiceItem = contract.ServiceItem,
        ContractNumber = contract.ContractNumber,
        SignedOn = contract.SignedOn,
        StartsOn = contract.StartsOn,
        EndsOn = contract.EndsOn,
        AmountFen = contract.AmountFen,
        FeeScheduleVersion = contract.FeeScheduleVersion,
        FeeUnit = (Engine.Registry.FeeUnit)(int)contract.FeeUnit,
        NonRelatedParty = contract.NonRelatedParty,
        DeclarationRef = contract.DeclarationRef,
        Startup = contract.Startup,
        OtherSupportFen = contract.OtherSupportFen,
        VoucherSupportFen = contract.VoucherSupportFen,
    };

    public static Wire.Contract ToWire(Contract contract) => new()
    {
        ContractId = contract.ContractId,
        HolderCode = contract.HolderCode,
        ProviderId = contract.ProviderId,
        ServiceItem = contract.ServiceItem,
        ContractNumber = contract.ContractNumber,
        SignedOn = contract.SignedOn,
        StartsOn = contract.StartsOn,
        EndsOn = contract.EndsOn,
        AmountFen = contract.AmountFen,
        FeeScheduleVersion = contract.FeeScheduleVersion,
        FeeUnit = (Wire.FeeUnit)(int)contract.FeeUnit,
        NonRelatedParty = contract.NonRelatedParty,
        DeclarationRef = contract.DeclarationRef,
        Startup = contract.Startup,
        OtherSupportFen = contract.OtherSupportFen,
        VoucherSupportFen = contract.VoucherSupportFen,
    };

    public static OtherSupport ToEngine(Wire.RecordOtherSupportRequest request) => new(request.ContractId, request.Source, request.AmountFen);

    public static VoucherIssue ToEngine(Wire.IssueVoucherRequest request) =>
        new(request.ContractId, request.ProgrammeYear, request.FaceValueFen, request.ValidFrom, request.ValidUntil);

    public static Wire.Voucher ToWire(Voucher voucher) => new()
    {
        VoucherId = voucher.VoucherId,
        ContractId = voucher.ContractId,
        HolderCode = voucher.HolderCode,
        ProviderId = voucher.ProviderId,
        ProgrammeYear = voucher.ProgrammeYear,
        FaceValueFen = voucher.FaceValueFen,
        ValidFrom = voucher.ValidFrom,
        ValidUntil = voucher.ValidUntil,
        HeldFen = voucher.HeldFen,
        PostedFen = voucher.PostedFen,
        RemainingFen = voucher.RemainingFen,
        ReleasedFen = voucher.ReleasedFen,
    };

    public static ClaimFiling ToEngine(Wire.FileClaimRequest request) =>
        new(request.ContractId, [.. request.JobIds], request.PeriodFromUnixMs, request.PeriodUntilUnixMs, request.ProgrammeYear);

    public static ClaimVoid ToEngine(Wire.VoidClaimRequest request) => new(request.ClaimId, request.Reason);

    public static Wire.Claim ToWire(Claim claim) => new()
    {
        ClaimId = claim.ClaimId,
        ContractId = claim.ContractId,
        VoucherId = claim.VoucherId,
        HolderCode = claim.HolderCode,
        ProviderId = claim.ProviderId,
        ProgrammeYear = claim.ProgrammeYear,
        ParametersVersion = claim.ParametersVersion,
        PayeeMode = (Wire.PayeeMode)(int)claim.PayeeMode,
        RatioBp = claim.RatioBp,
        Records = claim.Records,
        EligibleFeeFen = claim.EligibleFeeFen,
        RatioSubsidyFen = claim.RatioSubsidyFen,
        VoucherRemainingFen = claim.VoucherRemainingFen,
        AnnualCapRemainingFen = claim.AnnualCapRemainingFen,
        StackingRoomFen = claim.StackingRoomFen,
        SubsidyFen = claim.SubsidyFen,
        LimitedBy = (Wire.SubsidyLimit)(int)claim.LimitedBy,
        HoldState = (Wire.HoldState)(int)claim.HoldState,
        HoldExpiresUnixMs = claim.HoldExpiresUnixMs,
        Lines =
        {
            claim.Lines.Select(l => new Wire.ClaimLine
            {
                DeviceModel = l.DeviceModel,
                FeeUnit = (Wire.FeeUnit)(int)l.FeeUnit,
                Records = l.Records,
                UsageNpfh = l.UsageNpfh,
                CardMs = l.CardMs,
                PriceFen = l.PriceFen,
                FeeFen = l.FeeFen,
            }),
        },
        UsageDays = { claim.UsageDays },
        FiledUnixMs = claim.FiledUnixMs,
    };
}
