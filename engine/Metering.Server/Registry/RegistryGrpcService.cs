using Grpc.Core;
using Metering.Engine.Access;
using Metering.Engine.Registry;
using Metering.Protocol.V1;
using Metering.Server.Access;
using Application = Metering.Protocol.V1.Application;
using FeeSchedule = Metering.Protocol.V1.FeeSchedule;
using IntegrityListing = Metering.Protocol.V1.IntegrityListing;
using Licence = Metering.Protocol.V1.Licence;
using Organisation = Metering.Protocol.V1.Organisation;
using ServiceItem = Metering.Protocol.V1.ServiceItem;

namespace Metering.Server.Registry;

/// <summary>
/// The registry over gRPC. The access policy has already checked the caller's role; this service
/// keeps providers to their own entries: a provider naming another organisation is refused with
/// OTHER_PROVIDER, and an application of another provider reads as unknown, so that ids reveal
/// nothing.
/// </summary>
internal sealed class RegistryGrpcService(ProviderRegistry registry) : RegistryService.RegistryServiceBase
{
    public override Task<Organisation> RegisterOrganisation(RegisterOrganisationRequest request, ServerCallContext context) =>
        Run(context, "RegisterOrganisation", async (actor, ct) =>
            RegistryMapping.ToWire(await registry.RegisterOrganisationAsync(actor, RegistryMapping.ToEngine(request.Organisation ?? new Organisation()), ct)));

    public override Task<Licence> AddLicence(AddLicenceRequest request, ServerCallContext context) =>
        Run(context, "AddLicence", async (actor, ct) => RegistryMapping.ToWire(await registry.AddLicenceAsync(actor, RegistryMapping.ToEngine(request.Licence ?? new Licence()), ct)));

    public override Task<IntegrityListing> AddIntegrityListing(AddIntegrityListingRequest request, ServerCallContext context) =>
        Run(context, "AddIntegrityListing", async (actor, ct) =>
            RegistryMapping.ToWire(await registry.AddIntegrityListingAsync(actor, RegistryMapping.ToEngine(request.Listing ?? new IntegrityListing()), ct)));

    public override Task<AdmissionBatch> PutAdmissionBatch(AdmissionBatch request, ServerCallContext context) =>
        Run(context, "PutAdmissionBatch", async (actor, ct) =>
            BatchMessages.ToMessage(await registry.PutBatchAsync(actor, BatchMessages.RulesOf(request), request.SingleOperatorDecisions, (int)Math.Min(request.ReconsiderationDays, int.MaxValue), request.CorrectionReason, ct)));

    public override Task<ListAdmissionBatchesResponse> ListAdmissionBatches(ListAdmissionBatchesRequest request, ServerCallContext context) =>
        Run(context, "ListAdmissionBatches", async (actor, ct) => new ListAdmissionBatchesResponse { Batches = { (await registry.ListBatchesAsync(ct)).Select(BatchMessages.ToMessage) } });

    public override Task<Application> FileApplication(FileApplicationRequest request, ServerCallContext context) =>
        Run(context, "FileApplication", async (actor, ct) =>
        {
            OwnOnly(actor, request.CreditCode);
            return RegistryMapping.ToWire(await registry.FileApplicationAsync(actor, RegistryMapping.ToEngine(request), ct));
        });

    public override Task<Application> ReviewMaterials(StageDecision request, ServerCallContext context) =>
        RunShown(context, "ReviewMaterials", (actor, ct) => registry.ReviewMaterialsAsync(actor, RegistryMapping.ToEngine(request), ct));

    public override Task<Application> RecordVerification(VerificationDecision request, ServerCallContext context) =>
        RunShown(context, "RecordVerification", (actor, ct) =>
            registry.RecordVerificationAsync(actor, request.ApplicationId, request.Pass, request.VerifiedFp16Gflops, VerificationMessages.PartsOf(request), request.Reasons, ct));

    public override Task<Application> OpenPublicNotice(StageDecision request, ServerCallContext context) =>
        RunShown(context, "OpenPublicNotice", (actor, ct) => registry.OpenPublicNoticeAsync(actor, RegistryMapping.ToEngine(request), ct));

    public override Task<Application> RecordObjection(RecordObjectionRequest request, ServerCallContext context) =>
        RunShown(context, "RecordObjection", (actor, ct) => registry.RecordObjectionAsync(actor, RegistryMapping.ToEngine(request), ct));

    public override Task<Application> DecideAdmission(StageDecision request, ServerCallContext context) =>
        RunShown(context, "DecideAdmission", (actor, ct) => registry.DecideAdmissionAsync(actor, RegistryMapping.ToEngine(request), ct));

    public override Task<Application> ApproveProposal(ApproveProposalRequest request, ServerCallContext context) =>
        RunShown(context, "ApproveProposal", (actor, ct) => registry.ApproveProposalAsync(actor, request.ApplicationId, request.ProposalNo, ct));

    public override Task<Application> IssueAdmissionNotice(IssueAdmissionNoticeRequest request, ServerCallContext context) =>
        RunShown(context, "IssueAdmissionNotice", (actor, ct) => registry.IssueAdmissionNoticeAsync(actor, RegistryMapping.ToEngine(request), ct));

    public override Task<Reconsideration> RequestReconsideration(RequestReconsiderationRequest request, ServerCallContext context) =>
        Run(context, "RequestReconsideration", async (actor, ct) =>
            ReconsiderationMessages.ToMessage(await registry.RequestReconsiderationAsync(actor, request.ApplicationId, request.Grounds, ct)));

    public override Task<Reconsideration> DecideReconsideration(DecideReconsiderationRequest request, ServerCallContext context) =>
        Run(context, "DecideReconsideration", async (actor, ct) =>
            ReconsiderationMessages.ToMessage(await registry.DecideReconsiderationAsync(actor, request.ApplicationId, ReconsiderationMessages.VerdictOf(request.Verdict), request.Reasons, ct)));

    public override Task<Application> GetApplication(GetApplicationRequest request, ServerCallContext context) =>
        Run(context, "GetApplication", async (actor, ct) =>
        {
            Engine.Registry.Application? application = await registry.GetApplicationAsync(request.ApplicationId, ct);
            if (application is null || (actor.Role == Role.Provider && application.CreditCode != actor.Subject))
            {
                throw new RegistryRefusedException(RegistryRefusalReason.ApplicationUnknown, $"there is no application {request.ApplicationId} of yours");
            }

            return await VerificationMessages.WithPartsAsync(registry, RegistryMapping.ToWire(application), ct);
        });

    public override Task<ListApplicationsResponse> ListApplications(ListApplicationsRequest request, ServerCallContext context) =>
        Run(context, "ListApplications", async (actor, ct) =>
        {
            string? code = request.CreditCode.Length == 0 ? null : request.CreditCode;
            if (actor.Role == Role.Provider)
            {
                OwnOnly(actor, code ?? actor.Subject);
                code = actor.Subject;
            }

            IReadOnlyList<Application> applications =
                [.. (await registry.ListApplicationsAsync(code, RegistryMapping.ToEngine(request.State), (int)Math.Min(request.Limit, int.MaxValue), ct)).Select(RegistryMapping.ToWire)];
            return new ListApplicationsResponse { Applications = { await VerificationMessages.WithPartsAsync(registry, applications, ct) } };
        });

    public override Task<FeeSchedule> FileFeeSchedule(FileFeeScheduleRequest request, ServerCallContext context) =>
        Run(context, "FileFeeSchedule", async (actor, ct) =>
        {
            OwnOnly(actor, request.CreditCode);
            return RegistryMapping.ToWire(await registry.FileFeeScheduleAsync(actor, RegistryMapping.ToEngine(request), ct));
        });

    public override Task<ServiceItem> ChangeServiceItemStatus(ChangeServiceItemStatusRequest request, ServerCallContext context) =>
        Run(context, "ChangeServiceItemStatus", async (actor, ct) =>
            RegistryMapping.ToWire(await registry.ChangeServiceItemStatusAsync(actor, RegistryMapping.ToEngine(request), ct)));

    public override Task<Organisation> RecordFalseMaterials(RecordFalseMaterialsRequest request, ServerCallContext context) =>
        Run(context, "RecordFalseMaterials", async (actor, ct) =>
            RegistryMapping.ToWire(await registry.RecordFalseMaterialsAsync(actor, RegistryMapping.ToEngine(request), ct)));

    public override Task<Organisation> GetOrganisation(GetOrganisationRequest request, ServerCallContext context) =>
        Run(context, "GetOrganisation", async (actor, ct) =>
        {
            OwnOnly(actor, request.CreditCode);
            return RegistryMapping.ToWire(await registry.GetOrganisationAsync(request.CreditCode, ct)
                ?? throw new RegistryRefusedException(RegistryRefusalReason.OrganisationUnknown, $"no organisation {request.CreditCode} is registered"));
        });

    public override Task<GetHistoryResponse> GetHistory(GetHistoryRequest request, ServerCallContext context) =>
        Run(context, "GetHistory", async (actor, ct) => new GetHistoryResponse
        {
            Entries = { (await registry.GetHistoryAsync(request.CreditCode, (int)Math.Min(request.Limit, int.MaxValue), ct)).Select(RegistryMapping.ToWire) },
        });

    /// <summary>A provider may name only itself.</summary>
    private static void OwnOnly(Actor actor, string creditCode)
    {
        if (actor.Role == Role.Provider && creditCode != actor.Subject)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.OtherProvider, $"a provider reads and writes only its own registry entries; {actor.Subject} named '{creditCode}'");
        }
    }

    /// <summary>A call that answers with the application, shown with its verification's parts.</summary>
    private Task<Application> RunShown(ServerCallContext context, string method, Func<Actor, CancellationToken, Task<Engine.Registry.Application>> call) =>
        Run(context, method, async (actor, ct) => await VerificationMessages.WithPartsAsync(registry, RegistryMapping.ToWire(await call(actor, ct)), ct));

    /// <summary>
    /// Runs a call as its authenticated caller. RefusalInterceptor turns the registry's refusals into statuses and
    /// logs them with the gRPC method, which <paramref name="method"/> names where the call is written.
    /// </summary>
    private Task<T> Run<T>(ServerCallContext context, string method, Func<Actor, CancellationToken, Task<T>> call) =>
        call(AuthenticationInterceptor.Caller(context), context.CancellationToken);
}
