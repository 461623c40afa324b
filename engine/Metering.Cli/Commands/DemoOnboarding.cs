using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Grpc.Core;
using Grpc.Net.Client;
using Metering.Client.Simulation;
using Metering.Client.Streaming;
using Metering.Engine.Access;
using Metering.Engine.Registry;
using Metering.Engine.Time;
using Metering.Protocol.V1;
using FinancialReportKind = Metering.Protocol.V1.FinancialReportKind;
using LegalForm = Metering.Protocol.V1.LegalForm;
using MaterialKind = Metering.Protocol.V1.MaterialKind;
using Npgsql;
using Material = Metering.Protocol.V1.Material;
using DeclaredDevices = Metering.Protocol.V1.DeclaredDevices;
using FeeLine = Metering.Protocol.V1.FeeLine;
using FeeUnit = Metering.Protocol.V1.FeeUnit;
using Licence = Metering.Protocol.V1.Licence;
using Organisation = Metering.Protocol.V1.Organisation;
using Application = Metering.Protocol.V1.Application;

namespace Metering.Cli.Commands;

/// <summary>A clock the demo moves through the admission workflow, then hands back to real time.</summary>
internal sealed class DemoClock : TimeProvider
{
    public DateTimeOffset? Simulated { get; set; }

    public override DateTimeOffset GetUtcNow() => Simulated ?? System.GetUtcNow();
}

/// <summary>
/// The demo provider's way into the programme, over the real RegistryService: an operator
/// registers it and opens a batch, the provider streams a metering-log proof and files, and the
/// operator takes the application through review, verification, public notice, decision and
/// admission notice. The server's clock is set back so that the admission covers the day the
/// demo then streams.
/// </summary>
internal static class DemoOnboarding
{
    public const string ServiceItem = "gpu-training";

    public static async Task<string> AdmitAsync(NpgsqlDataSource dataSource, GrpcChannel channel, DemoClock clock, string provider, SimulatedCluster[] sites, DateTimeOffset dayStart, CancellationToken cancellationToken)
    {
        DateTimeOffset filedAt = dayStart.AddDays(-40);
        clock.Simulated = filedAt;
        var credentials = new CredentialStore(dataSource, clock);
        var bootstrap = new Actor(Role.Operator, "demo-bootstrap");
        string operatorKey = (await credentials.IssueAsync(bootstrap, Role.Operator, "demo-operator", "demo", cancellationToken)).Key;
        // Four-eyes: the decision and the typed verification figure take a second operator's approval.
        string reviewerKey = (await credentials.IssueAsync(bootstrap, Role.Operator, "demo-reviewer", "demo", cancellationToken)).Key;
        var registry = new RegistryService.RegistryServiceClient(channel);
        Metadata asOperator = Bearer(operatorKey);

        // The demo's batch takes the rules of the batch seeded from the 2025 guide (the bar, the
        // materials, the report's years), in a window around the demo's simulated dates.
        uint auditYear = (uint)(filedAt.AddDays(-1).ToOffset(ShanghaiTime.Offset).Year - 1);
        AdmissionBatch guide = (await registry.ListAdmissionBatchesAsync(new ListAdmissionBatchesRequest(), asOperator, cancellationToken: cancellationToken)).Batches.Single(b => b.BatchId == "2025");
        await registry.PutAdmissionBatchAsync(new AdmissionBatch
        {
            BatchId = "demo",
            WindowOpensUnixMs = filedAt.AddDays(-1).ToUnixTimeMilliseconds(),
            WindowClosesUnixMs = filedAt.AddDays(20).ToUnixTimeMilliseconds(),
            ValidityEndsUnixMs = dayStart.AddDays(60).ToUnixTimeMilliseconds(),
            PublicNoticeDays = guide.PublicNoticeDays,
            AuditReportYear = auditYear,
            CapacityMinimumGflops = guide.CapacityMinimumGflops,
            MaterialsRequired = { guide.MaterialsRequired },
            AuditReportPriorYearWithReason = guide.AuditReportPriorYearWithReason,
            CapitalVerificationForNewEntities = guide.CapitalVerificationForNewEntities,
            VoucherProgrammeYear = guide.VoucherProgrammeYear,
        }, asOperator, cancellationToken: cancellationToken);
        await registry.RegisterOrganisationAsync(new RegisterOrganisationRequest
        {
            Organisation = new Organisation { CreditCode = provider, Name = "深圳示例智算科技有限公司", LegalForm = LegalForm.Enterprise, District = "南山区", EstablishedOn = "2019-05-20" },
        }, asOperator, cancellationToken: cancellationToken);
        await registry.AddLicenceAsync(new AddLicenceRequest
        {
            Licence = new Licence { CreditCode = provider, LicenceNumber = "B1-20190456", Issuer = "工业和信息化部", ValidFrom = "2019-09-01", ValidUntil = "2029-08-31" },
        }, asOperator, cancellationToken: cancellationToken);
        string providerKey = (await credentials.IssueAsync(bootstrap, Role.Provider, provider, "demo agent", cancellationToken)).Key;
        Step($"Operator registered {provider} (南山区) with IDC/ISP licence B1-20190456 and opened batch 'demo'; simulated date {Local(filedAt)}");

        // The metering-log proof: a short real stream through ingest, which filing verifies.
        var proofSite = new SimulatedCluster("proof", sites[0].Pools.ToArray(), filedAt.AddDays(-3), jobsPerInterval: 2, seed: 7);
        StreamResult proof = await new UsageStreamer(channel, providerKey, new StreamerOptions()).RunAsync("proof:onboarding", proofSite.RecordAt, 288, cancellationToken);
        Step($"Provider streamed its metering-log proof: {proof.CommittedSequence} records into 'proof:onboarding'");

        var filing = new FileApplicationRequest
        {
            BatchId = "demo",
            CreditCode = provider,
            ServiceItem = ServiceItem,
            FinancialReportKind = FinancialReportKind.AuditReport,
            AuditReportYear = auditYear,
            ServiceContent = "GPU clusters for model training, rented by the card-hour.",
            ServiceStandards = "99.9% monthly availability; every job metered per 5-minute interval.",
            MeteringProofStream = "proof:onboarding",
        };
        foreach (MaterialKind kind in Enum.GetValues<MaterialKind>().Where(k => k != MaterialKind.Unspecified))
        {
            string document = $"demo/{RegistryOutput.Spelling(kind)}.pdf";
            filing.Materials.Add(new Material { Kind = kind, DocumentRef = document, Sha256 = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(document))) });
        }

        foreach (SimulatedCluster site in sites)
        {
            foreach (DevicePool pool in site.Pools)
            {
                filing.Capacity.Add(new DeclaredDevices { Site = site.Site, DeviceModel = pool.Model, DeviceCount = (uint)pool.Devices });
                if (!filing.Fees.Any(f => f.DeviceModel == pool.Model))
                {
                    filing.Fees.Add(new FeeLine { DeviceModel = pool.Model, Unit = FeeUnit.PerPflopsHour, PriceFen = 2_000 });
                }
            }
        }

        Metadata asProvider = Bearer(providerKey);
        Application application = await registry.FileApplicationAsync(filing, asProvider, cancellationToken: cancellationToken);
        Step($"Provider filed application {application.ApplicationId} for '{ServiceItem}': declared {FilingRules.Pflops(application.DeclaredFp16Gflops)} PFLOPS FP16, 8 kinds of material");

        long id = application.ApplicationId;
        await registry.ReviewMaterialsAsync(new StageDecision { ApplicationId = id, Pass = true }, asOperator, cancellationToken: cancellationToken);
        clock.Simulated = filedAt.AddDays(7);
        Metadata asReviewer = Bearer(reviewerKey);
        Application proposed = await registry.RecordVerificationAsync(new VerificationDecision { ApplicationId = id, Pass = true, VerifiedFp16Gflops = application.DeclaredFp16Gflops, Reasons = "commissioned verifier's site report" }, asOperator, cancellationToken: cancellationToken);
        await registry.ApproveProposalAsync(new ApproveProposalRequest { ApplicationId = id, ProposalNo = proposed.PendingProposal.ProposalNo }, asReviewer, cancellationToken: cancellationToken);
        clock.Simulated = filedAt.AddDays(10);
        await registry.OpenPublicNoticeAsync(new StageDecision { ApplicationId = id, Pass = true }, asOperator, cancellationToken: cancellationToken);
        clock.Simulated = filedAt.AddDays(16);
        proposed = await registry.DecideAdmissionAsync(new StageDecision { ApplicationId = id, Pass = true }, asOperator, cancellationToken: cancellationToken);
        await registry.ApproveProposalAsync(new ApproveProposalRequest { ApplicationId = id, ProposalNo = proposed.PendingProposal.ProposalNo }, asReviewer, cancellationToken: cancellationToken);
        application = await registry.IssueAdmissionNoticeAsync(new IssueAdmissionNoticeRequest { ApplicationId = id, NoticeNumber = "深科创训力入库〔demo〕1号" }, asOperator, cancellationToken: cancellationToken);
        clock.Simulated = null;

        var stages = new TextTable("stage", "by", "when (Asia/Shanghai)", "outcome", "notes");
        foreach (Stage stage in application.Stages)
        {
            stages.Add(stage.Stage_, stage.Actor, Local(DateTimeOffset.FromUnixTimeMilliseconds(stage.AtUnixMs)), stage.Outcome, stage.Reasons);
        }

        Console.WriteLine();
        stages.Write(Console.Out);
        Console.WriteLine();
        return providerKey;
    }

    private static Metadata Bearer(string key) => new() { { "authorization", "Bearer " + key } };

    private static string Local(DateTimeOffset instant) => LocalTime.Minutes(instant);

    private static void Step(string text) => Console.WriteLine($"[{DateTime.Now:HH:mm:ss}] {text}");
}
