using Metering.Engine.Registry;
using Metering.Protocol.V1;

namespace Metering.Engine.Tests.Registry;

/// <summary>A batch's rules as data: what holds, what is refused and why, and how two versions differ.</summary>
public sealed class BatchRulesTests
{
    private static readonly TimeSpan Shanghai = TimeSpan.FromHours(8);

    private static readonly BatchRules Guide = new("2025", new DateTimeOffset(2025, 3, 14, 0, 0, 0, Shanghai), new DateTimeOffset(2025, 4, 7, 18, 0, 0, Shanghai),
        new DateTimeOffset(2027, 1, 1, 0, 0, 0, Shanghai), 5, 300_000_000, BatchRules.Materials, 2024, true, true, 2025);

    public static TheoryData<string, string> BadRules => new()
    {
        { "bar of nothing", "capacity_minimum_gflops" },
        { "negative bar", "capacity_minimum_gflops" },
        { "bar past a million PFLOPS", "capacity_minimum_gflops" },
        { "no materials", "materials_required" },
        { "unknown material", "materials_required" },
        { "material twice", "materials_required" },
        { "audit year of the window", "audit_report_year" },
        { "audit year before 2000", "audit_report_year" },
        { "voucher year before the programme", "voucher_programme_year" },
        { "notice of 31 days", "public_notice_days" },
    };

    private static BatchRules Broken(string how) => how switch
    {
        "bar of nothing" => Guide with { CapacityMinimumGflops = 0 },
        "negative bar" => Guide with { CapacityMinimumGflops = -300_000_000 },
        "bar past a million PFLOPS" => Guide with { CapacityMinimumGflops = BatchRules.CapacityMinimumGflopsMax + 1 },
        "no materials" => Guide with { MaterialsRequired = [] },
        "unknown material" => Guide with { MaterialsRequired = ["business_licence", "unspecified"] },
        "material twice" => Guide with { MaterialsRequired = ["business_licence", "tax_certificate", "business_licence"] },
        "audit year of the window" => Guide with { AuditReportYear = 2025 },
        "audit year before 2000" => Guide with { AuditReportYear = 1999 },
        "voucher year before the programme" => Guide with { VoucherProgrammeYear = 2023 },
        _ => Guide with { PublicNoticeDays = 31 },
    };

    [Theory]
    [MemberData(nameof(BadRules))]
    public void Rules_that_do_not_hold_are_refused_naming_the_rule(string how, string field)
    {
        RegistryRefusedException refused = Assert.Throws<RegistryRefusedException>(() => Broken(how).Checked());

        Assert.Equal((RegistryRefusalReason.BatchRulesInvalid, field), (refused.Reason, refused.Metadata["field"]));
    }

    [Fact]
    public void A_window_out_of_order_is_a_period_refusal()
    {
        Assert.Equal(RegistryRefusalReason.PeriodInvalid, Assert.Throws<RegistryRefusedException>(() => (Guide with { WindowClosesAt = Guide.WindowOpensAt }).Checked()).Reason);
        Assert.Equal(RegistryRefusalReason.PeriodInvalid, Assert.Throws<RegistryRefusedException>(() => (Guide with { ValidityEndsAt = Guide.WindowClosesAt }).Checked()).Reason);
    }

    [Fact]
    public void The_guides_rules_hold_and_materials_come_back_in_the_guides_order()
    {
        BatchRules shuffled = Guide with { MaterialsRequired = ["commitment_letters", "business_licence"] };

        Assert.Equal(BatchRules.Materials, Guide.Checked().MaterialsRequired);
        Assert.Equal(["business_licence", "commitment_letters"], shuffled.Checked().MaterialsRequired);
    }

    [Fact]
    public void Differences_name_each_changed_rule_and_ignore_the_order_of_materials()
    {
        BatchRules lowered = Guide with { CapacityMinimumGflops = 200_000_000, CapitalVerificationForNewEntities = false };
        BatchRules reordered = Guide with { MaterialsRequired = BatchRules.Materials.Reverse().ToArray() };

        Assert.Equal(["capacity_minimum_gflops", "capital_verification_for_new_entities"], Guide.DifferencesFrom(lowered));
        Assert.Empty(Guide.DifferencesFrom(reordered));
        Assert.Empty(Guide.DifferencesFrom(Guide with { }));
    }
}
