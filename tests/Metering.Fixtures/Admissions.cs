using Metering.Engine.Access;
using Metering.Engine.Audit;
using Metering.Engine.Capacity;
using Metering.Engine.Catalog;
using Metering.Engine.Ingest;
using Metering.Engine.Registry;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Npgsql;
using FinancialReportKind = Metering.Protocol.V1.FinancialReportKind;
using LegalForm = Metering.Engine.Registry.LegalForm;
using Application = Metering.Engine.Registry.Application;
using MaterialKind = Metering.Protocol.V1.MaterialKind;
using Material = Metering.Protocol.V1.Material;
using DeclaredDevices = Metering.Protocol.V1.DeclaredDevices;
using FeeLine = Metering.Protocol.V1.FeeLine;
using FeeUnit = Metering.Protocol.V1.FeeUnit;
using Licence = Metering.Engine.Registry.Licence;
using Organisation = Metering.Engine.Registry.Organisation;

namespace Metering.Fixtures;

/// <summary>A clock that stays where it is set.</summary>
internal sealed class ManualClock(DateTimeOffset now) : TimeProvider
{
    public DateTimeOffset Now { get; set; } = now;

    public override DateTimeOffset GetUtcNow() => Now;

    public void Advance(TimeSpan by) => Now += by;
}

/// <summary>The keys <see cref="Admissions.SeedAsync"/> issued, one per role.</summary>
internal sealed record SeededKeys(string Provider, string OtherProvider, string Operator, string Auditor, string Settlement, string SecondOperator);

/// <summary>
/// Takes providers through the whole admission workflow with the engine's own registry, on a
/// clock set in early 2024, so that they are admitted from 2024-02-01 to 2028-01-01 and every
/// test record's time falls inside their admission.
/// </summary>
internal static class Admissions
{
    public const string Batch = "test-2024";
    public const string ServiceItem = "gpu-training";

    /// <summary>Filing and every decision happen at this instant.</summary>
    public static readonly DateTimeOffset AdmittedAt = new(2024, 2, 1, 0, 0, 0, TimeSpan.FromHours(8));

    /// <summary>Admission under the test batch ends here.</summary>
    public static readonly DateTimeOffset ValidityEndsAt = new(2028, 1, 1, 0, 0, 0, TimeSpan.FromHours(8));

    public static readonly Actor Operator = new(Role.Operator, "seed-operator");

    /// <summary>The second operator four-eyes asks for on admission decisions and typed verification figures.</summary>
    public static readonly Actor SecondOperator = new(Role.Operator, "seed-second-operator");

    /// <summary>Admits both test providers and issues a key for each role.</summary>
    public static async Task<SeededKeys> SeedAsync(NpgsqlDataSource dataSource)
    {
        var clock = new ManualClock(AdmittedAt);
        var registry = new ProviderRegistry(dataSource, DeviceCatalog.LoadEmbedded(), clock, new RegistryFleetEvidence(), new RegistryProofEvidence(dataSource));
        await registry.PutBatchAsync(Operator, TestBatch(), singleOperatorDecisions: false, reconsiderationDays: 0, correctionReason: null, CancellationToken.None);
        foreach (string code in new[] { TestRecords.Provider, TestRecords.OtherProvider })
        {
            await AdmitAsync(dataSource, registry, clock, code, $"Test provider {code[^4..]}", filing: SeededFleetFiling(code));
        }

        var credentials = new CredentialStore(dataSource, clock);
        async Task<string> Issue(Role role, string subject) => (await credentials.IssueAsync(Operator, role, subject, "tests", CancellationToken.None)).Key;
        return new SeededKeys(
            await Issue(Role.Provider, TestRecords.Provider),
            await Issue(Role.Provider, TestRecords.OtherProvider),
            await Issue(Role.Operator, "operator-one"),
            await Issue(Role.Auditor, "auditor-one"),
            await Issue(Role.Settlement, "settlement-batch"),
            await Issue(Role.Operator, "operator-two"));
    }

    public static BatchRules TestBatch() => new(
        Batch,
        new DateTimeOffset(2024, 1, 1, 0, 0, 0, TimeSpan.FromHours(8)),
        new DateTimeOffset(2024, 12, 31, 0, 0, 0, TimeSpan.FromHours(8)),
        ValidityEndsAt,
        PublicNoticeDays: 0,
        CapacityMinimumGflops: GuideCapacityMinimumGflops,
        MaterialsRequired: BatchRules.Materials,
        AuditReportYear: 2023,
        AuditReportPriorYearWithReason: true,
        CapitalVerificationForNewEntities: true,
        VoucherProgrammeYear: 2025);

    /// <summary>The 2025 guide's bar: 300P FLOPS (FP16), in GFLOPS.</summary>
    public const long GuideCapacityMinimumGflops = 300_000_000;

    /// <summary>
    /// Gives a batch the 2025 guide's rules beside its own window and years: the 300 PFLOPS bar,
    /// all eight materials, the year before with a reason, capital verification optional for an
    /// organisation under a year old, and the 2025 voucher parameters.
    /// </summary>
    public static AdmissionBatch WithGuideRules(this AdmissionBatch batch)
    {
        batch.CapacityMinimumGflops = GuideCapacityMinimumGflops;
        batch.MaterialsRequired.Clear();
        batch.MaterialsRequired.Add(Enum.GetValues<MaterialKind>().Where(kind => kind != MaterialKind.Unspecified));
        batch.AuditReportPriorYearWithReason = true;
        batch.CapitalVerificationForNewEntities = true;
        batch.VoucherProgrammeYear = 2025;
        return batch;
    }

    /// <summary>Registers, licenses, proves metering for, files, reviews, verifies, notices, decides and admits one provider.</summary>
    public static async Task<Application> AdmitAsync(NpgsqlDataSource dataSource, ProviderRegistry registry, TimeProvider clock, string code, string name, string serviceItem = ServiceItem,
        FileApplicationRequest? filing = null)
    {
        await RegisterAsync(dataSource, registry, clock, code, name);
        Application filed = await registry.FileApplicationAsync(new Actor(Role.Provider, code), ToFiling(filing ?? Filing(code, serviceItem)), CancellationToken.None);
        return await DecideAllAsync(registry, filed.ApplicationId, code);
    }

    /// <summary>Registers the organisation with a licence and writes its metering-log proof stream.</summary>
    public static async Task RegisterAsync(NpgsqlDataSource dataSource, ProviderRegistry registry, TimeProvider clock, string code, string name,
        LegalForm legalForm = LegalForm.Enterprise, string established = "2015-06-01")
    {
        await registry.RegisterOrganisationAsync(Operator, new Organisation
        {
            CreditCode = code,
            Name = name,
            LegalForm = legalForm,
            District = "nanshan",
            EstablishedOn = established,
        }, CancellationToken.None);
        await registry.AddLicenceAsync(Operator, new Licence
        {
            CreditCode = code,
            LicenceNumber = $"B1-{code[^6..]}",
            Issuer = "Ministry of Industry and Information Technology",
            ValidFrom = "2020-01-01",
            ValidUntil = "2030-12-31",
        }, CancellationToken.None);
        await WriteProofAsync(dataSource, clock, code);
    }

    public const string ProofStream = "proof:onboarding";

    /// <summary>Streams two records through ingest into the provider's proof stream, as an applicant would.</summary>
    public static async Task WriteProofAsync(NpgsqlDataSource dataSource, TimeProvider clock, string code, string stream = ProofStream)
    {
        var store = new UsageStore(dataSource);
        var gate = new AdmissionGate(dataSource);
        var validator = new RecordValidator(new IngestLimits(), DeviceCatalog.LoadEmbedded());
        StreamHead head = await store.OpenStreamAsync(code, stream, CancellationToken.None);
        var session = new IngestSession(store, validator, clock, gate, await gate.LoadAsync(code, CancellationToken.None), stream, head);
        long start = clock.GetUtcNow().AddDays(-10).ToUnixTimeMilliseconds();
        var records = new List<UsageRecord>();
        for (ulong sequence = head.CommittedSequence + 1; sequence <= head.CommittedSequence + 2; sequence++)
        {
            UsageRecord record = TestRecords.Valid(sequence);
            record.StartUnixMs = start + (long)sequence * 300_000;
            record.EndUnixMs = record.StartUnixMs + 300_000;
            records.Add(record);
        }

        await session.AppendAsync(EngineRecords.Of(records), CancellationToken.None);
    }

    /// <summary>A filing that meets every rule: 320 H100 (316.6 PFLOPS), all eight materials, a 2023 audit report.</summary>
    public static FileApplicationRequest Filing(string code, string serviceItem = ServiceItem) => new()
    {
        BatchId = Batch,
        CreditCode = code,
        ServiceItem = serviceItem,
        Materials =
        {
            Enum.GetValues<MaterialKind>().Where(k => k != MaterialKind.Unspecified).Select(kind => new Material
            {
                Kind = kind,
                DocumentRef = $"{code}/{Spelling(kind)}.pdf",
                Sha256 = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(Spelling(kind)))),
            }),
        },
        FinancialReportKind = FinancialReportKind.AuditReport,
        AuditReportYear = 2023,
        Capacity =
        {
            new DeclaredDevices { Site = "sz-nanshan-dc1", DeviceModel = "H100-SXM", DeviceCount = 256 },
            new DeclaredDevices { Site = "sz-longgang-dc2", DeviceModel = "H100-SXM", DeviceCount = 64 },
        },
        ServiceContent = "GPU training clusters rented by the node-hour.",
        ServiceStandards = "99.9% monthly availability; usage metered per job.",
        Fees =
        {
            new FeeLine { DeviceModel = "H100-SXM", Unit = FeeUnit.PerCardHour, PriceFen = 1_800 },
            new FeeLine { DeviceModel = "H100-SXM", Unit = FeeUnit.PerPflopsHour, PriceFen = 1_900 },
        },
        MeteringProofStream = ProofStream,
    };

    /// <summary>Devices of each model the two seeded providers declare; see <see cref="SeededFleetFiling"/>.</summary>
    public const uint SeededDevicesPerModel = 250_000;

    /// <summary>Every model the tests, the bench and the sample agent stream for the seeded providers.</summary>
    public static readonly string[] SeededModels = ["H100-SXM", "H800-SXM", "H200-SXM", "A100-SXM", "A800-SXM", "H20", "L40S", "ASCEND-910B", "B200"];

    /// <summary>
    /// The seeded providers' filing: every model the existing tests, the load tool and the sample
    /// agent stream, <see cref="SeededDevicesPerModel"/> devices each. Ingest refuses usage beyond a
    /// provider's fleet, and these providers carry whatever the tests throw at them: the ingest
    /// load tool's 2,000,000-record run has up to about 56,000 H100 in use at once over its two
    /// Nanshan streams, and the raw-log upload about 76,000 L40S (its million generated jobs fall
    /// in one day). Tests about the fleet itself use providers of their own.
    /// </summary>
    public static FileApplicationRequest SeededFleetFiling(string code)
    {
        // The filing's own sites stay as they are (256 H100 at sz-nanshan-dc1, 64 at
        // sz-longgang-dc2); the large fleet sits at a site of its own. The seeded providers have no
        // fleet validation: the audit's capacity tests plant one of their own size
        // (AuditScene.PlantValidationAsync), since the detector judges the validated fleet.
        FileApplicationRequest filing = Filing(code);
        filing.Capacity.Add(SeededModels.Select(model => new DeclaredDevices { Site = "sz-test-fleet", DeviceModel = model, DeviceCount = SeededDevicesPerModel }));
        return filing;
    }

    /// <summary>
    /// A filing request as the engine's own record, field by field as the server's RegistryMapping
    /// copies it, for the tests that file with the engine directly rather than over gRPC.
    /// </summary>
    public static ApplicationFiling ToFiling(FileApplicationRequest request) => new()
    {
        BatchId = request.BatchId,
        CreditCode = request.CreditCode,
        ServiceItem = request.ServiceItem,
        Materials = [.. request.Materials.Select(m => new Metering.Engine.Registry.Material((Metering.Engine.Registry.MaterialKind)(int)m.Kind, m.DocumentRef, m.Sha256))],
        FinancialReportKind = (Metering.Engine.Registry.FinancialReportKind)(int)request.FinancialReportKind,
        AuditReportYear = request.AuditReportYear,
        AuditReportReason = request.AuditReportReason,
        Capacity = [.. request.Capacity.Select(d => new Metering.Engine.Registry.DeclaredDevices(d.Site, d.DeviceModel, d.DeviceCount))],
        ServiceContent = request.ServiceContent,
        ServiceStandards = request.ServiceStandards,
        Fees = [.. request.Fees.Select(f => new Metering.Engine.Registry.FeeLine(f.DeviceModel, (Metering.Engine.Registry.FeeUnit)(int)f.Unit, f.PriceFen))],
        MeteringProofStream = request.MeteringProofStream,
        Intermediary = request.Intermediary,
        RenewsApplicationId = request.RenewsApplicationId,
    };

    /// <summary>A wire material kind as the registry spells it; the engine's enum carries the same numbers.</summary>
    private static string Spelling(MaterialKind kind) => Names.Of((Metering.Engine.Registry.MaterialKind)(int)kind);

    /// <summary>Passes every stage after filing, as one operator with a second approving what four-eyes asks of two.</summary>
    public static async Task<Application> DecideAllAsync(ProviderRegistry registry, long applicationId, string code)
    {
        await DecideAllButTheNoticeAsync(registry, applicationId);
        return await registry.IssueAdmissionNoticeAsync(Operator, new AdmissionNotice(applicationId, $"TEST-{code}-{applicationId}"), CancellationToken.None);
    }

    /// <summary>Every stage up to the admission notice: the application then awaits its notice.</summary>
    public static async Task DecideAllButTheNoticeAsync(ProviderRegistry registry, long applicationId)
    {
        await registry.ReviewMaterialsAsync(Operator, new OperatorDecision(applicationId, Pass: true), CancellationToken.None);
        Application proposed = await registry.RecordVerificationAsync(Operator, applicationId, pass: true, verifiedFp16Gflops: 316_608_000, verifierParts: [], reasons: "", CancellationToken.None);
        await registry.ApproveProposalAsync(SecondOperator, applicationId, proposed.PendingProposal!.ProposalNo, CancellationToken.None);
        await registry.OpenPublicNoticeAsync(Operator, new OperatorDecision(applicationId, Pass: true), CancellationToken.None);
        proposed = await registry.DecideAdmissionAsync(Operator, new OperatorDecision(applicationId, Pass: true), CancellationToken.None);
        await registry.ApproveProposalAsync(SecondOperator, applicationId, proposed.PendingProposal!.ProposalNo, CancellationToken.None);
    }
}
