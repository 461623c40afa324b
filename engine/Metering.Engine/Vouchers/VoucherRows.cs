using Metering.Engine.Time;

namespace Metering.Engine.Vouchers;

/// <summary>One version of a programme year's parameters, as stored.</summary>
internal sealed record ParametersRow(int Year, int Version, DateTimeOffset EffectiveFrom, int SupportRatioBp, int StartupRatioBp, long AnnualCapFen,
    int StackingCapBp, long MinAnnualRentalFen, string PayeeMode, int HoldDays)
{
    public int RatioBp(bool startup) => startup ? StartupRatioBp : SupportRatioBp;

    public ProgrammeParameters ToParameters() => new()
    {
        ProgrammeYear = (uint)Year,
        Version = (uint)Version,
        EffectiveFromUnixMs = EffectiveFrom.ToUnixTimeMilliseconds(),
        SupportRatioBp = (uint)SupportRatioBp,
        StartupRatioBp = (uint)StartupRatioBp,
        AnnualCapFen = AnnualCapFen,
        StackingCapBp = (uint)StackingCapBp,
        MinAnnualRentalFen = MinAnnualRentalFen,
        PayeeMode = VoucherNames.PayeeModeOf(PayeeMode),
        HoldDays = (uint)HoldDays,
    };
}

/// <summary>A contract as stored, with the instants its dates span.</summary>
internal sealed record ContractRow(long ContractId, string ProviderId, string HolderCode, string ServiceItem, string ContractNumber, DateOnly SignedOn,
    DateOnly StartsOn, DateOnly EndsOn, long AmountFen, int FeeScheduleVersion, string FeeUnit, bool Startup)
{
    /// <summary>The first instant of starts_on, Asia/Shanghai.</summary>
    public DateTimeOffset StartsAt => ShanghaiTime.StartOf(StartsOn);

    /// <summary>The first instant after ends_on, Asia/Shanghai.</summary>
    public DateTimeOffset EndsBefore => ShanghaiTime.StartOf(EndsOn.AddDays(1));
}
