using Metering.Engine.Catalog;
using Metering.Engine.Registry;
using Metering.Protocol.V1;
using Metering.Fixtures;
using FinancialReportKind = Metering.Protocol.V1.FinancialReportKind;
using MaterialKind = Metering.Protocol.V1.MaterialKind;
using DeclaredDevices = Metering.Protocol.V1.DeclaredDevices;

namespace Metering.Engine.Tests.Registry;

/// <summary>The filing rules as pure checks, at their boundaries.</summary>
public sealed class FilingRulesTests
{
    private static readonly DeviceCatalog Catalog = DeviceCatalog.LoadEmbedded();
    private static readonly DateTimeOffset Opens = new(2025, 3, 14, 0, 0, 0, TimeSpan.FromHours(8));
    private static readonly DateTimeOffset Closes = new(2025, 4, 7, 18, 0, 0, TimeSpan.FromHours(8));

    /// <summary>The 2025 batch's rules as the guide sets them.</summary>
    private static readonly BatchRules Guide = new("2025", Opens, Closes, new DateTimeOffset(2027, 1, 1, 0, 0, 0, TimeSpan.FromHours(8)), 5,
        300_000_000, BatchRules.Materials, 2024, AuditReportPriorYearWithReason: true, CapitalVerificationForNewEntities: true, VoucherProgrammeYear: 2025);

    private static FilingContext Context(DateTimeOffset filedAt, string legalForm = "enterprise", DateOnly? established = null, BatchRules? rules = null) => new(
        new OrganisationRow(TestRecords.Provider, "Huawei", legalForm, "longgang", established ?? new DateOnly(1987, 9, 15), 0, filedAt),
        new BatchRow(rules ?? Guide),
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

    /// <summary>The rules on the filing as the engine takes it; the tests shape the filing as a request.</summary>
    private static long Check(FileApplicationRequest filing, FilingContext context, DeviceCatalog catalog) => FilingRules.Check(Admissions.ToFiling(filing), context, catalog);

    private static void CheckForm(FileApplicationRequest filing, DeviceCatalog catalog) => FilingRules.CheckForm(Admissions.ToFiling(filing), catalog);

    private static RegistryRefusalReason RefusalOf(Action check) => Assert.Throws<RegistryRefusedException>(check).Reason;

    [Fact]
    public void The_2025_window_takes_filings_from_14_March_until_7_April_at_18_00_Shanghai_time()
    {
        Assert.Equal(316_608_000, Check(Filing(), Context(Opens), Catalog));
        Assert.Equal(316_608_000, Check(Filing(), Context(Closes.AddTicks(-1)), Catalog));
        Assert.Equal(RegistryRefusalReason.OutsideBatchWindow, RefusalOf(() => Check(Filing(), Context(Opens.AddTicks(-1)), Catalog)));
        Assert.Equal(RegistryRefusalReason.OutsideBatchWindow, RefusalOf(() => Check(Filing(), Context(Closes), Catalog)));
    }

    [Fact]
    public void Capital_verification_is_taken_from_an_organisation_under_a_year_old_to_the_day_and_is_optional_for_it()
    {
        DateTimeOffset filed = new(2025, 3, 20, 10, 0, 0, TimeSpan.FromHours(8));
        FileApplicationRequest capital = Filing();
        capital.FinancialReportKind = FinancialReportKind.CapitalVerification;
        capital.AuditReportYear = 0;

        Assert.Equal(RegistryRefusalReason.CapitalVerificationNotAccepted, RefusalOf(() => Check(capital, Context(filed, established: new DateOnly(2024, 3, 20)), Catalog)));
        Assert.Equal(316_608_000, Check(capital, Context(filed, established: new DateOnly(2024, 3, 21)), Catalog));
        // Optional, as the guide writes it (可提供): the young organisation may file its audit report instead.
        Assert.Equal(316_608_000, Check(Filing(), Context(filed, established: new DateOnly(2024, 3, 21)), Catalog));
        // A batch that takes no capital verification refuses it even from a young organisation.
        Assert.Equal(RegistryRefusalReason.CapitalVerificationNotAccepted, RefusalOf(() => Check(capital,
            Context(filed, established: new DateOnly(2024, 3, 21), rules: Guide with { CapitalVerificationForNewEntities = false }), Catalog)));
    }

    [Fact]
    public void The_bar_and_the_materials_are_the_batchs()
    {
        Assert.Equal(RegistryRefusalReason.CapacityBelowMinimum, RefusalOf(() => Check(Filing(), Context(Opens, rules: Guide with { CapacityMinimumGflops = 316_608_001 }), Catalog)));
        Assert.Equal(316_608_000, Check(Filing(), Context(Opens, rules: Guide with { CapacityMinimumGflops = 316_608_000 }), Catalog));

        FileApplicationRequest withoutLetters = Filing();
        withoutLetters.Materials.Remove(withoutLetters.Materials.Single(m => m.Kind == MaterialKind.CommitmentLetters));
        RegistryRefusedException missing = Assert.Throws<RegistryRefusedException>(() => Check(withoutLetters, Context(Opens), Catalog));
        Assert.Equal((RegistryRefusalReason.MaterialMissing, "commitment_letters"), (missing.Reason, missing.Metadata["kind"]));
        BatchRules lettersNotRequired = Guide with { MaterialsRequired = BatchRules.Materials.Where(m => m != "commitment_letters").ToArray() };
        Assert.Equal(316_608_000, Check(withoutLetters, Context(Opens, rules: lettersNotRequired), Catalog));
    }

    [Fact]
    public void The_year_before_needs_a_reason_and_is_refused_where_the_batch_takes_only_its_year()
    {
        FileApplicationRequest prior = Filing();
        prior.AuditReportYear = 2023;
        Assert.Equal(RegistryRefusalReason.AuditReportYearInvalid, RefusalOf(() => Check(prior, Context(Opens), Catalog)));
        prior.AuditReportReason = "The 2024 audit is not finished.";
        Assert.Equal(316_608_000, Check(prior, Context(Opens), Catalog));
        Assert.Equal(RegistryRefusalReason.AuditReportYearInvalid, RefusalOf(() => Check(prior, Context(Opens, rules: Guide with { AuditReportPriorYearWithReason = false }), Catalog)));
    }

    [Fact]
    public void Final_accounts_are_for_public_institutions_only()
    {
        FileApplicationRequest filing = Filing();
        filing.FinancialReportKind = FinancialReportKind.FinalAccounts;
        Assert.Equal(RegistryRefusalReason.FieldInvalid, RefusalOf(() => Check(filing, Context(Opens), Catalog)));
        Assert.Equal(316_608_000, Check(filing, Context(Opens, legalForm: "public_institution"), Catalog));
    }

    [Fact]
    public void Form_errors_are_refused_before_anything_is_read()
    {
        FileApplicationRequest twice = Filing();
        twice.Materials.Add(twice.Materials[0].Clone());
        Assert.Equal(RegistryRefusalReason.FieldInvalid, RefusalOf(() => CheckForm(twice, Catalog)));

        FileApplicationRequest unknown = Filing();
        unknown.Capacity[0].DeviceModel = "B300";
        Assert.Equal(RegistryRefusalReason.DeviceModelUnknown, RefusalOf(() => CheckForm(unknown, Catalog)));

        FileApplicationRequest free = Filing();
        free.Fees[0].PriceFen = 0;
        Assert.Equal(RegistryRefusalReason.FeeScheduleInvalid, RefusalOf(() => CheckForm(free, Catalog)));

        FileApplicationRequest notProof = Filing();
        notProof.MeteringProofStream = "cluster-a";
        Assert.Equal(RegistryRefusalReason.FieldInvalid, RefusalOf(() => CheckForm(notProof, Catalog)));
    }

    [Fact]
    public void Exactly_300_PFLOPS_meets_the_bar()
    {
        // 200 H100 (989,400 GFLOPS) and 690 H20 (148,000) make exactly 300,000,000 GFLOPS.
        FileApplicationRequest filing = Filing();
        filing.Capacity.Clear();
        filing.Capacity.Add(new DeclaredDevices { Site = "a", DeviceModel = "H100-SXM", DeviceCount = 200 });
        filing.Capacity.Add(new DeclaredDevices { Site = "b", DeviceModel = "H20", DeviceCount = 690 });
        Assert.Equal(Guide.CapacityMinimumGflops, Check(filing, Context(Opens), Catalog));
        filing.Capacity[1].DeviceCount = 689;
        Assert.Equal(RegistryRefusalReason.CapacityBelowMinimum, RefusalOf(() => Check(filing, Context(Opens), Catalog)));
    }

    [Fact]
    public void Capacity_just_either_side_of_the_bar()
    {
        // 300 PFLOPS = 300,000,000 GFLOPS. An L40S is 362,050 GFLOPS: 829 reach 300.14 PFLOPS, 828 only 299.78.
        FileApplicationRequest filing = Filing();
        filing.Capacity.Clear();
        filing.Capacity.Add(new DeclaredDevices { Site = "a", DeviceModel = "L40S", DeviceCount = 829 });
        Assert.Equal(300_139_450, Check(filing, Context(Opens), Catalog));
        filing.Capacity[0].DeviceCount = 828;
        Assert.Equal(RegistryRefusalReason.CapacityBelowMinimum, RefusalOf(() => Check(filing, Context(Opens), Catalog)));
    }
}
