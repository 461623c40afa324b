using Google.Protobuf.Reflection;
using Metering.Engine.Vouchers;
using Metering.Server.Tests.Infrastructure;
using Metering.Server.Vouchers;
using Proto = Metering.Protocol.V1;

namespace Metering.Server.Tests.Vouchers;

/// <summary>
/// The voucher book's records and enums against vouchers.proto's: the server maps enums by value
/// and copies fields by name, so a member or field added on one side only would reach the wire
/// as another value, or not at all.
/// </summary>
public sealed class VoucherMappingTests
{
    [Fact]
    public void Holder_types_hold_the_same_names_at_the_same_numbers_in_the_engine_and_on_the_wire() => EnumMirror.AssertMirrors<HolderType, Proto.HolderType>();

    [Fact]
    public void Holder_statuses_hold_the_same_names_at_the_same_numbers_in_the_engine_and_on_the_wire() => EnumMirror.AssertMirrors<HolderStatus, Proto.HolderStatus>();

    [Fact]
    public void Payee_modes_hold_the_same_names_at_the_same_numbers_in_the_engine_and_on_the_wire() => EnumMirror.AssertMirrors<PayeeMode, Proto.PayeeMode>();

    [Fact]
    public void Subsidy_limits_hold_the_same_names_at_the_same_numbers_in_the_engine_and_on_the_wire() => EnumMirror.AssertMirrors<SubsidyLimit, Proto.SubsidyLimit>();

    [Fact]
    public void Hold_states_hold_the_same_names_at_the_same_numbers_in_the_engine_and_on_the_wire() => EnumMirror.AssertMirrors<HoldState, Proto.HoldState>();

    [Theory]
    [MemberData(nameof(Twins))]
    public void Every_field_of_a_voucher_message_has_a_property_of_the_same_name_on_its_engine_record(string message, Type record)
    {
        MessageDescriptor descriptor = Proto.VouchersReflection.Descriptor.MessageTypes.Single(m => m.Name == message);
        var properties = record.GetProperties().Select(p => p.Name).ToHashSet(StringComparer.Ordinal);

        Assert.NotEmpty(descriptor.Fields.InDeclarationOrder());
        Assert.All(descriptor.Fields.InDeclarationOrder(), field => Assert.Contains(field.PropertyName, properties));
    }

    public static TheoryData<string, Type> Twins() => new()
    {
        { "Holder", typeof(Holder) },
        { "ProgrammeParameters", typeof(ProgrammeParameters) },
        { "Contract", typeof(Contract) },
        { "Voucher", typeof(Voucher) },
        { "ClaimLine", typeof(ClaimLine) },
        { "Claim", typeof(Claim) },
        { "IssueVoucherRequest", typeof(VoucherIssue) },
        { "RecordOtherSupportRequest", typeof(OtherSupport) },
        { "FileClaimRequest", typeof(ClaimFiling) },
        { "VoidClaimRequest", typeof(ClaimVoid) },
    };

    [Fact]
    public void A_contract_keeps_every_field_on_its_way_into_the_engine_and_back()
    {
        var contract = new Proto.Contract
        {
            ContractId = 7, HolderCode = "h", ProviderId = "p", ServiceItem = "item", ContractNumber = "HT-1", SignedOn = "2026-01-01", StartsOn = "2026-01-02",
            EndsOn = "2026-12-31", AmountFen = 123, FeeScheduleVersion = 2, FeeUnit = Proto.FeeUnit.PerPflopsHour, NonRelatedParty = true, DeclarationRef = "d",
            Startup = true, OtherSupportFen = 4, VoucherSupportFen = 5,
        };

        Assert.Equal(contract, VoucherMapping.ToWire(VoucherMapping.ToEngine(contract)));
    }

    [Fact]
    public void A_claim_line_leaves_the_engine_with_its_fee_unit_and_every_figure()
    {
        var line = new ClaimLine { DeviceModel = "H100-SXM", FeeUnit = Engine.Registry.FeeUnit.PerPflopsHour, Records = 3, UsageNpfh = 4, CardMs = 5, PriceFen = 6, FeeFen = 7 };

        Proto.ClaimLine wire = Assert.Single(VoucherMapping.ToWire(new Claim { ClaimId = 1, Lines = [line] }).Lines);

        Assert.Equal(new Proto.ClaimLine { DeviceModel = "H100-SXM", FeeUnit = Proto.FeeUnit.PerPflopsHour, Records = 3, UsageNpfh = 4, CardMs = 5, PriceFen = 6, FeeFen = 7 }, wire);
    }

    [Fact]
    public void A_fee_unit_the_wire_does_not_name_reaches_the_engine_as_itself_to_be_refused_there()
    {
        Contract contract = VoucherMapping.ToEngine(new Proto.Contract { FeeUnit = (Proto.FeeUnit)99 });

        Assert.Equal(99, (int)contract.FeeUnit);
        Assert.False(Enum.IsDefined(contract.FeeUnit));
    }

    [Fact]
    public void Programme_parameters_keep_every_field_on_their_way_into_the_engine_and_back()
    {
        var parameters = new Proto.ProgrammeParameters
        {
            ProgrammeYear = 2026, Version = 3, EffectiveFromUnixMs = 1_790_000_000_000, SupportRatioBp = 5_000, StartupRatioBp = 6_000, AnnualCapFen = 9,
            StackingCapBp = 4_000, MinAnnualRentalFen = 8, PayeeMode = Proto.PayeeMode.ProviderDeduction, HoldDays = 90,
        };

        Assert.Equal(parameters, VoucherMapping.ToWire(VoucherMapping.ToEngine(parameters)));
    }

    [Fact]
    public void A_holder_keeps_every_field_it_is_registered_with_on_its_way_into_the_engine_and_back()
    {
        var holder = new Proto.Holder
        {
            CreditCode = "c", Name = "n", Type = Proto.HolderType.HolderUniversity, District = "futian", EstablishedOn = "2020-02-02", Status = Proto.HolderStatus.HolderLeft,
        };

        Assert.Equal(holder, VoucherMapping.ToWire(VoucherMapping.ToEngine(holder)));
    }

    [Fact]
    public void A_type_the_wire_does_not_name_reaches_the_engine_as_itself_to_be_refused_there()
    {
        Holder holder = VoucherMapping.ToEngine(new Proto.Holder { Type = (Proto.HolderType)99 });

        Assert.Equal(99, (int)holder.Type);
        var refused = Assert.Throws<VoucherRefusedException>(() => VoucherNames.Of(holder.Type));
        Assert.Equal(VoucherRefusalReason.VoucherFieldInvalid, refused.Reason);
    }
}
