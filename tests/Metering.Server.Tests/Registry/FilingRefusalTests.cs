using Grpc.Core;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;

namespace Metering.Server.Tests.Registry;

/// <summary>Each filing rule of the admission guide, broken once: the filing is refused with that rule's reason and nothing is filed.</summary>
[Collection(PostgresCollection.Name)]
public sealed class FilingRefusalTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Filing_before_or_after_the_batch_window_is_refused()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key) = await scene.RegisterAsync();

        scene.Clock.Now = RegistryScene.WindowOpens.AddMinutes(-1);
        await AssertRefusedAsync(scene, RegistryScene.Filing(code), key, StatusCode.FailedPrecondition, "OUTSIDE_BATCH_WINDOW");
        scene.Clock.Now = RegistryScene.WindowCloses;
        await AssertRefusedAsync(scene, RegistryScene.Filing(code), key, StatusCode.FailedPrecondition, "OUTSIDE_BATCH_WINDOW", "2026-11-15 18:00");
        scene.Clock.Now = RegistryScene.WindowCloses.AddMinutes(-1);
        Assert.Equal(ApplicationState.AwaitingMaterialReview, (await scene.Client.FileApplicationAsync(RegistryScene.Filing(code), key)).State);
    }

    [Theory]
    [InlineData(MaterialKind.BusinessLicence, "business_licence")]
    [InlineData(MaterialKind.CapacityProof, "capacity_proof")]
    [InlineData(MaterialKind.CommitmentLetters, "commitment_letters")]
    public async Task A_missing_material_is_refused_and_named(MaterialKind kind, string name)
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key) = await scene.RegisterAsync();
        FileApplicationRequest filing = RegistryScene.Filing(code);
        filing.Materials.Remove(filing.Materials.Single(m => m.Kind == kind));

        RpcException error = await AssertRefusedAsync(scene, filing, key, StatusCode.FailedPrecondition, "MATERIAL_MISSING", name);
        Assert.Equal(name, IngestCall.Metadata(error, "kind"));
    }

    [Fact]
    public async Task Audit_report_must_be_for_2025_or_for_2024_with_a_reason()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key) = await scene.RegisterAsync();

        FileApplicationRequest old = RegistryScene.Filing(code);
        old.AuditReportYear = 2023;
        await AssertRefusedAsync(scene, old, key, StatusCode.FailedPrecondition, "AUDIT_REPORT_YEAR_INVALID", "for 2023");
        FileApplicationRequest previous = RegistryScene.Filing(code);
        previous.AuditReportYear = 2024;
        await AssertRefusedAsync(scene, previous, key, StatusCode.FailedPrecondition, "AUDIT_REPORT_YEAR_INVALID", "stated reason");

        previous.AuditReportReason = "The 2025 audit is not finished until June.";
        Application filed = await scene.Client.FileApplicationAsync(previous, key);
        Assert.Equal(ApplicationState.AwaitingMaterialReview, filed.State);
    }

    [Fact]
    public async Task An_organisation_a_year_old_or_more_cannot_file_a_capital_verification_report_in_place_of_the_audit_report()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key) = await scene.RegisterAsync(established: "2025-11-02");

        FileApplicationRequest filing = RegistryScene.Filing(code);
        filing.FinancialReportKind = FinancialReportKind.CapitalVerification;
        filing.AuditReportYear = 0;
        await AssertRefusedAsync(scene, filing, key, StatusCode.FailedPrecondition, "CAPITAL_VERIFICATION_NOT_ACCEPTED", "2025-11-02");
        Assert.Equal(ApplicationState.AwaitingMaterialReview, (await scene.Client.FileApplicationAsync(RegistryScene.Filing(code), key)).State);
    }

    [Fact]
    public async Task Tax_certificate_is_required_except_of_a_public_institution()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (enterprise, enterpriseKey) = await scene.RegisterAsync();
        var (institute, instituteKey) = await scene.RegisterAsync(LegalForm.PublicInstitution);

        FileApplicationRequest withoutTax = RegistryScene.Filing(enterprise);
        withoutTax.Materials.Remove(withoutTax.Materials.Single(m => m.Kind == MaterialKind.TaxCertificate));
        await AssertRefusedAsync(scene, withoutTax, enterpriseKey, StatusCode.FailedPrecondition, "TAX_CERTIFICATE_MISSING", "an enterprise");

        FileApplicationRequest institution = RegistryScene.Filing(institute);
        institution.Materials.Remove(institution.Materials.Single(m => m.Kind == MaterialKind.TaxCertificate));
        institution.FinancialReportKind = FinancialReportKind.FinalAccounts;
        Assert.Equal(ApplicationState.AwaitingMaterialReview, (await scene.Client.FileApplicationAsync(institution, instituteKey)).State);
    }

    [Fact]
    public async Task An_organisation_outside_Shenzhen_cannot_be_registered()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);

        RpcException district = await Assert.ThrowsAsync<RpcException>(() => scene.Client.RegisterOrganisationAsync(new RegisterOrganisationRequest
        {
            Organisation = new Organisation { CreditCode = RegistryScene.NewCode(), Name = "Guangzhou Compute", LegalForm = LegalForm.Enterprise, District = "天河区", EstablishedOn = "2015-01-01" },
        }, RegistryScene.Operator).ResponseAsync);
        Assert.Equal((StatusCode.InvalidArgument, "NOT_REGISTERED_IN_SHENZHEN"), (district.StatusCode, IngestCall.Reason(district)));

        // Registered in Guangzhou (region 440106) while claiming a Shenzhen district.
        string body = "91440106MA5H00001";
        RpcException region = await Assert.ThrowsAsync<RpcException>(() => scene.Client.RegisterOrganisationAsync(new RegisterOrganisationRequest
        {
            Organisation = new Organisation { CreditCode = body + Metering.Engine.Identity.CreditCode.CheckCharacter(body), Name = "Claims Nanshan", LegalForm = LegalForm.Enterprise, District = "nanshan", EstablishedOn = "2015-01-01" },
        }, RegistryScene.Operator).ResponseAsync);
        Assert.Equal("NOT_REGISTERED_IN_SHENZHEN", IngestCall.Reason(region));
        Assert.Contains("440106", region.Status.Detail, StringComparison.Ordinal);

        // 深汕特别合作区 is in Shenzhen for the programme, with a Shanwei registration region.
        string shenshan = "91441500MA5H00001";
        Organisation accepted = await scene.Client.RegisterOrganisationAsync(new RegisterOrganisationRequest
        {
            Organisation = new Organisation { CreditCode = shenshan + Metering.Engine.Identity.CreditCode.CheckCharacter(shenshan), Name = "Shenshan Compute", LegalForm = LegalForm.Branch, District = "深汕特别合作区", EstablishedOn = "2020-01-01" },
        }, RegistryScene.Operator);
        Assert.Equal("shenshan", accepted.District);
    }

    [Fact]
    public async Task Filing_without_a_licence_valid_on_the_filing_day_is_refused()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key) = await scene.RegisterAsync(licence: false);
        await AssertRefusedAsync(scene, RegistryScene.Filing(code), key, StatusCode.FailedPrecondition, "NO_VALID_LICENCE", "no IDC/ISP licence");

        await scene.Client.AddLicenceAsync(new AddLicenceRequest
        {
            Licence = new Licence { CreditCode = code, LicenceNumber = "B1-EXPIRED", Issuer = "MIIT", ValidFrom = "2020-01-01", ValidUntil = "2026-11-01" },
        }, RegistryScene.Operator);
        await AssertRefusedAsync(scene, RegistryScene.Filing(code), key, StatusCode.FailedPrecondition, "NO_VALID_LICENCE", "B1-EXPIRED");
    }

    [Fact]
    public async Task An_organisation_on_an_integrity_list_is_refused_while_listed()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key) = await scene.RegisterAsync();
        await scene.Client.AddIntegrityListingAsync(new AddIntegrityListingRequest
        {
            Listing = new IntegrityListing { CreditCode = code, List = "serious_dishonesty", ListedFrom = "2026-01-01", ListedUntil = "2026-11-30", Reason = "Court judgment unpaid." },
        }, RegistryScene.Operator);

        await AssertRefusedAsync(scene, RegistryScene.Filing(code), key, StatusCode.FailedPrecondition, "ON_INTEGRITY_LIST", "serious_dishonesty");
    }

    [Fact]
    public async Task A_voucher_holder_or_applicant_cannot_apply_to_be_a_provider()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key) = await scene.RegisterAsync();
        await scene.Server.ScalarAsync<int>("INSERT INTO voucher_holders (holder_code, name, status) VALUES (@code, 'x', 'applicant') RETURNING 1", new { code });

        await AssertRefusedAsync(scene, RegistryScene.Filing(code), key, StatusCode.FailedPrecondition, "VOUCHER_HOLDER_CONFLICT", "voucher applicant");
    }

    [Fact]
    public async Task An_application_filed_through_an_intermediary_is_flagged_then_rejected_at_material_review()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key) = await scene.RegisterAsync();
        FileApplicationRequest filing = RegistryScene.Filing(code);
        filing.Intermediary = "Quick Grants Consulting Ltd";

        Application filed = await scene.Client.FileApplicationAsync(filing, key);
        Assert.Contains("flagged", filed.Stages.Single().Reasons, StringComparison.Ordinal);

        Application reviewed = await scene.Client.ReviewMaterialsAsync(new StageDecision { ApplicationId = filed.ApplicationId, Pass = true }, RegistryScene.Operator);
        Assert.Equal(ApplicationState.Rejected, reviewed.State);
        Assert.StartsWith("FILED_VIA_INTERMEDIARY", reviewed.Stages.Last().Reasons, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Declared_capacity_below_300_PFLOPS_is_refused_and_verification_below_it_cannot_pass()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key) = await scene.RegisterAsync();
        FileApplicationRequest small = RegistryScene.Filing(code);
        small.Capacity.RemoveAt(1);
        small.Capacity[0].DeviceCount = 303; // 303 x 989.4 TFLOPS = 299.8 PFLOPS
        await AssertRefusedAsync(scene, small, key, StatusCode.FailedPrecondition, "CAPACITY_BELOW_MINIMUM", "299.788");

        small.Capacity[0].DeviceCount = 304;
        long id = (await scene.Client.FileApplicationAsync(small, key)).ApplicationId;
        await scene.Client.ReviewMaterialsAsync(new StageDecision { ApplicationId = id, Pass = true }, RegistryScene.Operator);
        RpcException verification = await Assert.ThrowsAsync<RpcException>(() => scene.Client.RecordVerificationAsync(
            new VerificationDecision { ApplicationId = id, Pass = true, VerifiedFp16Gflops = 299_999_999 }, RegistryScene.Operator).ResponseAsync);
        Assert.Equal("CAPACITY_BELOW_MINIMUM", IngestCall.Reason(verification));
        Assert.Equal("awaiting_verification", await scene.Server.ScalarAsync<string>("SELECT state FROM applications WHERE application_id = @id", new { id }));
    }

    [Fact]
    public async Task Filing_without_a_verifiable_metering_log_is_refused()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key) = await scene.RegisterAsync(proof: false);
        await AssertRefusedAsync(scene, RegistryScene.Filing(code), key, StatusCode.FailedPrecondition, "METERING_PROOF_MISSING", "proof:onboarding");

        // A proof whose stored row was altered no longer verifies.
        await Metering.Fixtures.Admissions.WriteProofAsync(scene.DataSource, scene.Clock, code);
        await scene.Server.ScalarAsync<int>("""
            ALTER TABLE usage_records DISABLE TRIGGER USER;
            UPDATE usage_records SET device_count = 1 WHERE provider_id = @code AND sequence = 2;
            ALTER TABLE usage_records ENABLE TRIGGER USER;
            SELECT 1
            """, new { code });
        RpcException error = await AssertRefusedAsync(scene, RegistryScene.Filing(code), key, StatusCode.FailedPrecondition, "METERING_PROOF_BROKEN");
        Assert.Equal("2", IngestCall.Metadata(error, "sequence"));
    }

    private static async Task<RpcException> AssertRefusedAsync(RegistryScene scene, FileApplicationRequest filing, Metadata key, StatusCode status, string reason, string? detail = null)
    {
        long before = await scene.Server.ScalarAsync<long>("SELECT count(*) FROM applications");
        RpcException error = await Assert.ThrowsAsync<RpcException>(() => scene.Client.FileApplicationAsync(filing, key).ResponseAsync);
        Assert.Equal(status, error.StatusCode);
        Assert.Equal(reason, IngestCall.Reason(error));
        if (detail is not null)
        {
            Assert.Contains(detail, error.Status.Detail, StringComparison.Ordinal);
        }

        Assert.Equal(before, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM applications"));
        return error;
    }
}
