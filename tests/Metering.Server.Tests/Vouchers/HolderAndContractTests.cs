using Metering.Engine.Registry;
using Metering.Engine.Vouchers;
using Metering.Protocol.V1;
using Metering.Server.Tests.Infrastructure;
using Metering.Server.Tests.Registry;
using Metering.Tests.Shared;
using Contract = Metering.Engine.Vouchers.Contract;
using FeeUnit = Metering.Engine.Registry.FeeUnit;
using Holder = Metering.Engine.Vouchers.Holder;
using HolderStatus = Metering.Engine.Vouchers.HolderStatus;
using HolderType = Metering.Engine.Vouchers.HolderType;
using PayeeMode = Metering.Engine.Vouchers.PayeeMode;
using ProgrammeParameters = Metering.Engine.Vouchers.ProgrammeParameters;
using IntegrityListing = Metering.Engine.Registry.IntegrityListing;

namespace Metering.Server.Tests.Vouchers;

/// <summary>Who may hold vouchers, and what a contract must be.</summary>
[Collection(PostgresCollection.Name)]
public sealed class HolderAndContractTests(PostgresFixture postgres)
{
    private static Holder Applicant(string code, string district = "nanshan", HolderType type = HolderType.HolderUniversity) => new()
    {
        CreditCode = code,
        Name = "Shenzhen Institute of Computing",
        Type = type,
        District = district,
        EstablishedOn = "2010-09-01",
    };

    private static async Task<VoucherRefusalReason> RefusalAsync(Func<Task> call) => (await Assert.ThrowsAsync<VoucherRefusedException>(call)).Reason;

    [Fact]
    public async Task A_Shenzhen_university_registers_as_an_applicant_and_is_approved()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string code = VoucherScene.NewCode();

        Holder applicant = await scene.Book.RegisterHolderAsync(VoucherScene.Operator, Applicant(code, district: "南山区"), CancellationToken.None);
        Holder approved = await scene.Book.ApproveHolderAsync(VoucherScene.Operator, code, CancellationToken.None);

        Assert.Equal((HolderStatus.HolderApplicant, "nanshan", HolderType.HolderUniversity), (applicant.Status, applicant.District, applicant.Type));
        Assert.Equal(HolderStatus.HolderApproved, approved.Status);
        Assert.Equal(VoucherRefusalReason.HolderNotApproved, await RefusalAsync(() => scene.Book.ApproveHolderAsync(VoucherScene.Operator, code, CancellationToken.None)));
    }

    [Fact]
    public async Task A_code_with_a_wrong_check_character_is_refused()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string code = VoucherScene.NewCode();
        string wrong = code[..17] + (code[17] == '0' ? '1' : '0');

        Assert.Equal(VoucherRefusalReason.HolderCreditCodeInvalid, await RefusalAsync(() => scene.Book.RegisterHolderAsync(VoucherScene.Operator, Applicant(wrong), CancellationToken.None)));
    }

    [Fact]
    public async Task An_organisation_outside_Shenzhen_is_refused_by_district_and_by_code_region()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);

        Assert.Equal(VoucherRefusalReason.HolderNotInShenzhen,
            await RefusalAsync(() => scene.Book.RegisterHolderAsync(VoucherScene.Operator, Applicant(VoucherScene.NewCode(), district: "haidian"), CancellationToken.None)));
        // A Guangzhou (440100) registration region, whatever district is claimed.
        Assert.Equal(VoucherRefusalReason.HolderNotInShenzhen,
            await RefusalAsync(() => scene.Book.RegisterHolderAsync(VoucherScene.Operator, Applicant(Metering.Engine.Identity.CreditCode.Complete("91440101MA5J00001")), CancellationToken.None)));
    }

    [Fact]
    public async Task An_organisation_on_an_integrity_list_is_refused_even_when_it_is_not_registered_anywhere()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string code = VoucherScene.NewCode();
        await scene.Registry.AddIntegrityListingAsync(Admissions.Operator, new IntegrityListing
        {
            CreditCode = code,
            List = "research_integrity",
            ListedFrom = "2025-03-01",
            Reason = "Fabricated results in a funded project.",
        }, CancellationToken.None);

        var refused = await Assert.ThrowsAsync<VoucherRefusedException>(() => scene.Book.RegisterHolderAsync(VoucherScene.Operator, Applicant(code), CancellationToken.None));

        Assert.Equal(VoucherRefusalReason.HolderOnIntegrityList, refused.Reason);
        Assert.Equal("research_integrity", refused.Metadata["list"]);
    }

    [Fact]
    public async Task An_admitted_provider_cannot_register_as_a_holder()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);

        var refused = await Assert.ThrowsAsync<VoucherRefusedException>(() =>
            scene.Book.RegisterHolderAsync(VoucherScene.Operator, Applicant(TestRecords.Provider, type: HolderType.HolderEnterprise), CancellationToken.None));

        Assert.Equal(VoucherRefusalReason.HolderIsProvider, refused.Reason);
        Assert.Contains("admitted provider", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_organisation_with_a_provider_application_in_progress_cannot_register_as_a_holder()
    {
        await using RegistryScene registry = await RegistryScene.StartAsync(postgres);
        var (code, key) = await registry.RegisterAsync();
        await registry.Client.FileApplicationAsync(RegistryScene.Filing(code), key);
        var book = new VoucherBook(registry.DataSource, registry.Clock);

        var refused = await Assert.ThrowsAsync<VoucherRefusedException>(() => book.RegisterHolderAsync(VoucherScene.Operator, Applicant(code), CancellationToken.None));

        Assert.Equal(VoucherRefusalReason.HolderIsProvider, refused.Reason);
        Assert.Contains("application in progress", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_registered_voucher_applicant_cannot_then_apply_as_a_provider()
    {
        await using RegistryScene registry = await RegistryScene.StartAsync(postgres);
        var (code, key) = await registry.RegisterAsync();
        await new VoucherBook(registry.DataSource, registry.Clock).RegisterHolderAsync(VoucherScene.Operator, Applicant(code, district: "futian"), CancellationToken.None);

        var error = await Assert.ThrowsAsync<Grpc.Core.RpcException>(() => registry.Client.FileApplicationAsync(RegistryScene.Filing(code), key).ResponseAsync);

        Assert.Equal("VOUCHER_HOLDER_CONFLICT", IngestCall.Reason(error));
    }

    [Fact]
    public async Task A_contract_must_lie_within_the_providers_admission()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();

        // The test providers are admitted from 2024-02-01 until 2028-01-01 (Asia/Shanghai).
        var refused = await Assert.ThrowsAsync<VoucherRefusedException>(() => scene.ContractAsync(holder, starts: "2027-06-01", ends: "2028-01-01"));
        Contract inside = await scene.ContractAsync(holder, starts: "2027-06-01", ends: "2027-12-31");

        Assert.Equal(VoucherRefusalReason.ContractOutsideAdmission, refused.Reason);
        Assert.Equal(1u, inside.FeeScheduleVersion);
    }

    [Fact]
    public async Task A_contract_without_the_non_related_party_declaration_is_refused()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();

        Assert.Equal(VoucherRefusalReason.RelatedPartyNotDeclared, await RefusalAsync(() => scene.Book.RecordContractAsync(VoucherScene.Operator, new Contract
        {
            HolderCode = holder,
            ProviderId = TestRecords.Provider,
            ServiceItem = Admissions.ServiceItem,
            ContractNumber = "HT-RELATED",
            SignedOn = "2026-01-01",
            StartsOn = "2026-01-01",
            EndsOn = "2026-12-31",
            AmountFen = 100_000_000,
            FeeUnit = FeeUnit.PerCardHour,
            NonRelatedParty = false,
        }, CancellationToken.None)));
    }

    [Fact]
    public async Task Overlapping_contracts_of_one_holder_with_one_provider_are_refused_so_usage_maps_to_one_contract()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();
        await scene.ContractAsync(holder, starts: "2026-01-01", ends: "2026-06-30");

        Assert.Equal(VoucherRefusalReason.ContractOverlaps, await RefusalAsync(() => scene.ContractAsync(holder, starts: "2026-06-30", ends: "2026-12-31")));
        await scene.ContractAsync(holder, starts: "2026-07-01", ends: "2026-12-31");
        await scene.ContractAsync(holder, provider: TestRecords.OtherProvider, starts: "2026-03-01", ends: "2026-12-31");
    }

    [Fact]
    public async Task A_contract_priced_in_a_unit_the_schedule_does_not_file_is_refused()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();

        Assert.Equal(VoucherRefusalReason.FeeScheduleUnknown, await RefusalAsync(() => scene.Book.RecordContractAsync(VoucherScene.Operator, new Contract
        {
            HolderCode = holder,
            ProviderId = TestRecords.Provider,
            ServiceItem = Admissions.ServiceItem,
            ContractNumber = "HT-V9",
            SignedOn = "2026-01-01",
            StartsOn = "2026-01-01",
            EndsOn = "2026-12-31",
            AmountFen = 100_000_000,
            FeeUnit = FeeUnit.PerCardHour,
            FeeScheduleVersion = 9,
            NonRelatedParty = true,
            DeclarationRef = "declarations/x.pdf",
        }, CancellationToken.None)));
    }

    [Fact]
    public async Task Parameters_are_versioned_and_a_claim_uses_the_version_in_force_when_filed()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        ProgrammeParameters second = await scene.ParametersAsync(p => p with { SupportRatioBp = 4_000 });

        var versions = await scene.Book.ListParametersAsync(2026, CancellationToken.None);
        var backdated = await Assert.ThrowsAsync<VoucherRefusedException>(() => scene.Book.PutParametersAsync(VoucherScene.Operator, second with
        {
            EffectiveFromUnixMs = second.EffectiveFromUnixMs - 1,
        }, CancellationToken.None));

        Assert.Equal([1u, 2u], versions.Select(v => v.Version));
        Assert.Equal((5_000u, PayeeMode.HolderReimbursement, 1_000_000_000L), (versions[0].SupportRatioBp, versions[0].PayeeMode, versions[0].AnnualCapFen));
        Assert.Equal(4_000u, versions[1].SupportRatioBp);
        Assert.Equal(VoucherRefusalReason.ParametersInvalid, backdated.Reason);
    }
}
