using Metering.Engine.Catalog;
using Metering.Engine.Registry;
using Metering.Protocol.V1;
using Metering.Tests.Shared;

namespace Metering.Engine.Tests.Registry;

/// <summary>The filing rules as pure checks, at their boundaries.</summary>
public sealed class FilingRulesTests
{
    private static readonly DeviceCatalog Catalog = DeviceCatalog.LoadEmbedded();
    private static readonly DateTimeOffset Opens = new(2025, 3, 14, 0, 0, 0, TimeSpan.FromHours(8));
    private static readonly DateTimeOffset Closes = new(2025, 4, 7, 18, 0, 0, TimeSpan.FromHours(8));

    private static FilingContext Context(DateTimeOffset filedAt, string legalForm = "enterprise", DateOnly? established = null) => new(
        new OrganisationRow(TestRecords.Provider, "Huawei", legalForm, "longgang", established ?? new DateOnly(1987, 9, 15), 0, filedAt),
        new BatchRow("2025", Opens, Closes, new DateTimeOffset(2027, 1, 1, 0, 0, 0, TimeSpan.FromHours(8)), 5, 2024),
        [new LicenceRow(TestRecords.Provider, "B1-1", "MIIT", new DateOnly(2020, 1, 1), new DateOnly(2029, 12, 31))],
        [],
        null,
        filedAt);

    private static FileApplicationRequest Filing()
    {
        FileApplicationRequest filing = Admissions.Filing(TestRecords.Provider);
        filing.BatchId = "2025";
        filing.AuditReportYear = 2024;
        return filing;
    }

    private static RegistryRefusal RefusalOf(Action check) => Assert.Throws<RegistryRefusedException>(check).Reason;

    [Fact]
    public void The_2025_window_takes_filings_from_14_March_until_7_April_at_18_00_Shanghai_time()
    {
        Assert.Equal(316_608_000, FilingRules.Check(Filing(), Context(Opens), Catalog));
        Assert.Equal(316_608_000, FilingRules.Check(Filing(), Context(Closes.AddTicks(-1)), Catalog));
        Assert.Equal(RegistryRefusal.OutsideBatchWindow, RefusalOf(() => FilingRules.Check(Filing(), Context(Opens.AddTicks(-1)), Catalog)));
        Assert.Equal(RegistryRefusal.OutsideBatchWindow, RefusalOf(() => FilingRules.Check(Filing(), Context(Closes), Catalog)));
    }

    [Fact]
    public void An_organisation_established_a_year_ago_to_the_day_files_an_audit_report()
    {
        DateTimeOffset filed = new(2025, 3, 20, 10, 0, 0, TimeSpan.FromHours(8));
        Assert.Equal(316_608_000, FilingRules.Check(Filing(), Context(filed, established: new DateOnly(2024, 3, 20)), Catalog));
        Assert.Equal(RegistryRefusal.CapitalVerificationRequired, RefusalOf(() => FilingRules.Check(Filing(), Context(filed, established: new DateOnly(2024, 3, 21)), Catalog)));
    }

    [Fact]
    public void Final_accounts_are_for_public_institutions_only()
    {
        FileApplicationRequest filing = Filing();
        filing.FinancialReportKind = FinancialReportKind.FinalAccounts;
        Assert.Equal(RegistryRefusal.FieldInvalid, RefusalOf(() => FilingRules.Check(filing, Context(Opens), Catalog)));
        Assert.Equal(316_608_000, FilingRules.Check(filing, Context(Opens, legalForm: "public_institution"), Catalog));
    }

    [Fact]
    public void Form_errors_are_refused_before_anything_is_read()
    {
        FileApplicationRequest twice = Filing();
        twice.Materials.Add(twice.Materials[0].Clone());
        Assert.Equal(RegistryRefusal.FieldInvalid, RefusalOf(() => FilingRules.CheckForm(twice, Catalog)));

        FileApplicationRequest unknown = Filing();
        unknown.Capacity[0].DeviceModel = "B300";
        Assert.Equal(RegistryRefusal.DeviceModelUnknown, RefusalOf(() => FilingRules.CheckForm(unknown, Catalog)));

        FileApplicationRequest free = Filing();
        free.Fees[0].PriceFen = 0;
        Assert.Equal(RegistryRefusal.FeeScheduleInvalid, RefusalOf(() => FilingRules.CheckForm(free, Catalog)));

        FileApplicationRequest notProof = Filing();
        notProof.MeteringProofStream = "cluster-a";
        Assert.Equal(RegistryRefusal.FieldInvalid, RefusalOf(() => FilingRules.CheckForm(notProof, Catalog)));
    }

    [Fact]
    public void Exactly_300_PFLOPS_meets_the_bar()
    {
        // 200 H100 (989,400 GFLOPS) and 690 H20 (148,000) make exactly 300,000,000 GFLOPS.
        FileApplicationRequest filing = Filing();
        filing.Capacity.Clear();
        filing.Capacity.Add(new DeclaredDevices { Site = "a", DeviceModel = "H100-SXM", DeviceCount = 200 });
        filing.Capacity.Add(new DeclaredDevices { Site = "b", DeviceModel = "H20", DeviceCount = 690 });
        Assert.Equal(FilingRules.CapacityMinimumGflops, FilingRules.Check(filing, Context(Opens), Catalog));
        filing.Capacity[1].DeviceCount = 689;
        Assert.Equal(RegistryRefusal.CapacityBelowMinimum, RefusalOf(() => FilingRules.Check(filing, Context(Opens), Catalog)));
    }

    [Fact]
    public void Capacity_just_either_side_of_the_bar()
    {
        // 300 PFLOPS = 300,000,000 GFLOPS. An L40S is 362,050 GFLOPS: 829 reach 300.14 PFLOPS, 828 only 299.78.
        FileApplicationRequest filing = Filing();
        filing.Capacity.Clear();
        filing.Capacity.Add(new DeclaredDevices { Site = "a", DeviceModel = "L40S", DeviceCount = 829 });
        Assert.Equal(300_139_450, FilingRules.Check(filing, Context(Opens), Catalog));
        filing.Capacity[0].DeviceCount = 828;
        Assert.Equal(RegistryRefusal.CapacityBelowMinimum, RefusalOf(() => FilingRules.Check(filing, Context(Opens), Catalog)));
    }
}
