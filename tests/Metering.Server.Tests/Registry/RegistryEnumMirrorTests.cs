using Metering.Server.Registry;
using Metering.Server.Tests.Infrastructure;
using Domain = Metering.Engine.Registry;
using Generated = Metering.Protocol.V1;

namespace Metering.Server.Tests.Registry;

/// <summary>
/// The registry's engine enums and their wire twins stay one set: same names at the same numbers,
/// so that RegistryMapping's map by value never turns one member into another.
/// </summary>
public sealed class RegistryEnumMirrorTests
{
    [Fact]
    public void Application_states_hold_the_same_names_at_the_same_numbers_on_both_sides() =>
        EnumMirror.AssertMirrors<Domain.ApplicationState, Generated.ApplicationState>();

    [Fact]
    public void Legal_forms_hold_the_same_names_at_the_same_numbers_on_both_sides() =>
        EnumMirror.AssertMirrors<Domain.LegalForm, Generated.LegalForm>();

    [Fact]
    public void Material_kinds_hold_the_same_names_at_the_same_numbers_on_both_sides() =>
        EnumMirror.AssertMirrors<Domain.MaterialKind, Generated.MaterialKind>();

    [Fact]
    public void Financial_report_kinds_hold_the_same_names_at_the_same_numbers_on_both_sides() =>
        EnumMirror.AssertMirrors<Domain.FinancialReportKind, Generated.FinancialReportKind>();

    [Fact]
    public void Service_item_statuses_hold_the_same_names_at_the_same_numbers_on_both_sides() =>
        EnumMirror.AssertMirrors<Domain.ServiceItemStatus, Generated.ServiceItemStatus>();

    [Fact]
    public void Service_item_actions_hold_the_same_names_at_the_same_numbers_on_both_sides() =>
        EnumMirror.AssertMirrors<Domain.ServiceItemAction, Generated.ServiceItemAction>();

    [Fact]
    public void Fee_units_hold_the_same_names_at_the_same_numbers_on_both_sides() =>
        EnumMirror.AssertMirrors<Domain.FeeUnit, Generated.FeeUnit>();

    [Fact]
    public void Each_wire_member_maps_to_the_engine_member_of_its_name_and_back()
    {
        AssertMapsByName<Generated.ApplicationState, Domain.ApplicationState>(RegistryMapping.ToEngine, RegistryMapping.ToWire);
        AssertMapsByName<Generated.LegalForm, Domain.LegalForm>(RegistryMapping.ToEngine, RegistryMapping.ToWire);
        AssertMapsByName<Generated.MaterialKind, Domain.MaterialKind>(RegistryMapping.ToEngine, RegistryMapping.ToWire);
        AssertMapsByName<Generated.FinancialReportKind, Domain.FinancialReportKind>(RegistryMapping.ToEngine, RegistryMapping.ToWire);
        AssertMapsByName<Generated.ServiceItemStatus, Domain.ServiceItemStatus>(RegistryMapping.ToEngine, RegistryMapping.ToWire);
        AssertMapsByName<Generated.ServiceItemAction, Domain.ServiceItemAction>(RegistryMapping.ToEngine, RegistryMapping.ToWire);
        AssertMapsByName<Generated.FeeUnit, Domain.FeeUnit>(RegistryMapping.ToEngine, RegistryMapping.ToWire);
    }

    [Fact]
    public void A_number_the_wire_does_not_name_reaches_the_engine_unnamed_so_that_the_engine_refuses_it()
    {
        // The engine refuses an action or a kind it does not define (FIELD_INVALID); the map must
        // not quietly turn such a number into a member the engine would act on.
        Assert.False(Enum.IsDefined(RegistryMapping.ToEngine((Generated.ServiceItemAction)99)));
        Assert.False(Enum.IsDefined(RegistryMapping.ToEngine((Generated.MaterialKind)99)));
        Assert.False(Enum.IsDefined(RegistryMapping.ToEngine((Generated.FinancialReportKind)99)));
        Assert.False(Enum.IsDefined(RegistryMapping.ToEngine((Generated.FeeUnit)99)));
    }

    private static void AssertMapsByName<TWire, TEngine>(Func<TWire, TEngine> toEngine, Func<TEngine, TWire> toWire)
        where TWire : struct, Enum
        where TEngine : struct, Enum
    {
        foreach (TWire wire in Enum.GetValues<TWire>())
        {
            TEngine engine = toEngine(wire);
            Assert.Equal(wire.ToString(), engine.ToString());
            Assert.Equal(wire, toWire(engine));
        }
    }
}
