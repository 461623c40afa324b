using Wire = Metering.Protocol.V1;

namespace Metering.Server.Registry;

/// <summary>
/// Maps the registry's requests, records and enums between the wire and the engine, at the edge.
/// Each enum pair carries the same names at the same numbers (RegistryEnumMirrorTests holds them
/// so), so an enum maps by value: a number the wire does not know stays that number, and the
/// engine refuses it as it always has. Requests are copied as sent; the engine checks them.
/// </summary>
internal static class RegistryMapping
{
    public static Wire.Application ToWire(Engine.Registry.Application application) => new()
    {
        ApplicationId = application.ApplicationId,
        CreditCode = application.CreditCode,
        BatchId = application.BatchId,
        ServiceItem = application.ServiceItem,
        State = ToWire(application.State),
        FiledUnixMs = application.FiledUnixMs,
        DeclaredFp16Gflops = application.DeclaredFp16Gflops,
        VerifiedFp16Gflops = application.VerifiedFp16Gflops,
        Intermediary = application.Intermediary,
        NoticeEndsUnixMs = application.NoticeEndsUnixMs,
        NoticeNumber = application.NoticeNumber,
        Stages = { application.Stages.Select(s => new Wire.Stage { Stage_ = s.Stage, Actor = s.Actor, AtUnixMs = s.AtUnixMs, Outcome = s.Outcome, Reasons = s.Reasons }) },
        Materials = { application.Materials.Select(m => new Wire.Material { Kind = ToWire(m.Kind), DocumentRef = m.DocumentRef, Sha256 = m.Sha256 }) },
        Capacity = { application.Capacity.Select(d => new Wire.DeclaredDevices { Site = d.Site, DeviceModel = d.DeviceModel, DeviceCount = d.DeviceCount }) },
        Fees = { application.Fees.Select(ToWire) },
        MeteringProofStream = application.MeteringProofStream,
        MeteringProofRecords = application.MeteringProofRecords,
        ServiceContent = application.ServiceContent,
        ServiceStandards = application.ServiceStandards,
        PendingProposal = application.PendingProposal is { } proposal ? ToWire(proposal) : null,
        RenewsApplicationId = application.RenewsApplicationId,
    };

    public static Wire.StageProposal ToWire(Engine.Registry.StageProposal proposal) => new()
    {
        ProposalNo = proposal.ProposalNo,
        Stage = proposal.Stage,
        Pass = proposal.Pass,
        VerifiedFp16Gflops = proposal.VerifiedFp16Gflops,
        Reasons = proposal.Reasons,
        ProposedBy = proposal.ProposedBy,
        ProposedUnixMs = proposal.ProposedUnixMs,
    };

    public static Engine.Registry.Organisation ToEngine(Wire.Organisation organisation) => new()
    {
        CreditCode = organisation.CreditCode,
        Name = organisation.Name,
        LegalForm = ToEngine(organisation.LegalForm),
        District = organisation.District,
        EstablishedOn = organisation.EstablishedOn,
        Licences = [.. organisation.Licences.Select(ToEngine)],
        Listings = [.. organisation.Listings.Select(ToEngine)],
    };

    public static Wire.Organisation ToWire(Engine.Registry.Organisation organisation) => new()
    {
        CreditCode = organisation.CreditCode,
        Name = organisation.Name,
        LegalForm = ToWire(organisation.LegalForm),
        District = organisation.District,
        EstablishedOn = organisation.EstablishedOn,
        Licences = { organisation.Licences.Select(ToWire) },
        Listings = { organisation.Listings.Select(ToWire) },
        ServiceItems = { organisation.ServiceItems.Select(ToWire) },
    };

    public static Engine.Registry.Licence ToEngine(Wire.Licence licence) => new()
    {
        CreditCode = licence.CreditCode,
        LicenceNumber = licence.LicenceNumber,
        Issuer = licence.Issuer,
        ValidFrom = licence.ValidFrom,
        ValidUntil = licence.ValidUntil,
    };

    public static Wire.Licence ToWire(Engine.Registry.Licence licence) => new()
    {
        CreditCode = licence.CreditCode,
        LicenceNumber = licence.LicenceNumber,
        Issuer = licence.Issuer,
        ValidFrom = licence.ValidFrom,
        ValidUntil = licence.ValidUntil,
    };

    public static Engine.Registry.IntegrityListing ToEngine(Wire.IntegrityListing listing) => new()
    {
        CreditCode = listing.CreditCode,
        List = listing.List,
        ListedFrom = listing.ListedFrom,
        ListedUntil = listing.ListedUntil,
        Reason = listing.Reason,
    };

    public static Wire.IntegrityListing ToWire(Engine.Registry.IntegrityListing listing) => new()
    {
        CreditCode = listing.CreditCode,
        List = listing.List,
        ListedFrom = listing.ListedFrom,
        ListedUntil = listing.ListedUntil,
        Reason = listing.Reason,
    };

    public static Wire.ServiceItem ToWire(Engine.Registry.ServiceItem item) => new()
    {
        CreditCode = item.CreditCode,
        ServiceItem_ = item.Item,
        ApplicationId = item.ApplicationId,
        NoticeNumber = item.NoticeNumber,
        ValidFromUnixMs = item.ValidFromUnixMs,
        ValidUntilUnixMs = item.ValidUntilUnixMs,
        Status = ToWire(item.Status),
        StatusReason = item.StatusReason,
        FeeScheduleVersion = item.FeeScheduleVersion,
        RenewsApplicationId = item.RenewsApplicationId,
    };

    public static Wire.FeeSchedule ToWire(Engine.Registry.FeeSchedule schedule) => new()
    {
        CreditCode = schedule.CreditCode,
        ServiceItem = schedule.ServiceItem,
        Version = schedule.Version,
        EffectiveFromUnixMs = schedule.EffectiveFromUnixMs,
        Lines = { schedule.Lines.Select(ToWire) },
    };

    public static Wire.FeeLine ToWire(Engine.Registry.FeeLine line) => new() { DeviceModel = line.DeviceModel, Unit = ToWire(line.Unit), PriceFen = line.PriceFen };

    public static Engine.Registry.FeeLine ToEngine(Wire.FeeLine line) => new(line.DeviceModel, ToEngine(line.Unit), line.PriceFen);

    public static Wire.HistoryEntry ToWire(Engine.Registry.HistoryEntry entry) => new()
    {
        ChangeId = entry.ChangeId,
        Actor = entry.Actor,
        Role = entry.Role,
        AtUnixMs = entry.AtUnixMs,
        Entity = entry.Entity,
        EntityKey = entry.EntityKey,
        Action = entry.Action,
        BeforeJson = entry.BeforeJson,
        AfterJson = entry.AfterJson,
    };

    public static Engine.Registry.OperatorDecision ToEngine(Wire.StageDecision decision) => new(decision.ApplicationId, decision.Pass, decision.Reasons);

    public static Engine.Registry.Objection ToEngine(Wire.RecordObjectionRequest request) => new(request.ApplicationId, request.Objector, request.Content);

    public static Engine.Registry.AdmissionNotice ToEngine(Wire.IssueAdmissionNoticeRequest request) => new(request.ApplicationId, request.NoticeNumber);

    public static Engine.Registry.ServiceItemStatusChange ToEngine(Wire.ChangeServiceItemStatusRequest request) =>
        new(request.CreditCode, request.ServiceItem, ToEngine(request.Action), request.Reasons);

    public static Engine.Registry.FalseMaterialsFinding ToEngine(Wire.RecordFalseMaterialsRequest request) => new(request.CreditCode, request.Reasons);

    public static Engine.Registry.FeeScheduleFiling ToEngine(Wire.FileFeeScheduleRequest request) =>
        new(request.CreditCode, request.ServiceItem, request.EffectiveFromUnixMs, [.. request.Lines.Select(ToEngine)]);

    public static Engine.Registry.ApplicationFiling ToEngine(Wire.FileApplicationRequest request) => new()
    {
        BatchId = request.BatchId,
        CreditCode = request.CreditCode,
        ServiceItem = request.ServiceItem,
        Materials = [.. request.Materials.Select(m => new Engine.Registry.Material(ToEngine(m.Kind), m.DocumentRef, m.Sha256))],
        FinancialReportKind = ToEngine(request.FinancialReportKind),
        AuditReportYear = request.AuditReportYear,
        AuditReportReason = request.AuditReportReason,
        Capacity = [.. request.Capacity.Select(d => new Engine.Registry.DeclaredDevices(d.Site, d.DeviceModel, d.DeviceCount))],
        ServiceContent = request.ServiceContent,
        ServiceStandards = request.ServiceStandards,
        Fees = [.. request.Fees.Select(ToEngine)],
        MeteringProofStream = request.MeteringProofStream,
        Intermediary = request.Intermediary,
        RenewsApplicationId = request.RenewsApplicationId,
    };

    public static Engine.Registry.ApplicationState ToEngine(Wire.ApplicationState state) => (Engine.Registry.ApplicationState)(int)state;

    public static Wire.ApplicationState ToWire(Engine.Registry.ApplicationState state) => (Wire.ApplicationState)(int)state;

    public static Engine.Registry.LegalForm ToEngine(Wire.LegalForm form) => (Engine.Registry.LegalForm)(int)form;

    public static Wire.LegalForm ToWire(Engine.Registry.LegalForm form) => (Wire.LegalForm)(int)form;

    public static Engine.Registry.MaterialKind ToEngine(Wire.MaterialKind kind) => (Engine.Registry.MaterialKind)(int)kind;

    public static Wire.MaterialKind ToWire(Engine.Registry.MaterialKind kind) => (Wire.MaterialKind)(int)kind;

    public static Engine.Registry.FinancialReportKind ToEngine(Wire.FinancialReportKind kind) => (Engine.Registry.FinancialReportKind)(int)kind;

    public static Wire.FinancialReportKind ToWire(Engine.Registry.FinancialReportKind kind) => (Wire.FinancialReportKind)(int)kind;

    public static Engine.Registry.ServiceItemStatus ToEngine(Wire.ServiceItemStatus status) => (Engine.Registry.ServiceItemStatus)(int)status;

    public static Wire.ServiceItemStatus ToWire(Engine.Registry.ServiceItemStatus status) => (Wire.ServiceItemStatus)(int)status;

    public static Engine.Registry.ServiceItemAction ToEngine(Wire.ServiceItemAction action) => (Engine.Registry.ServiceItemAction)(int)action;

    public static Wire.ServiceItemAction ToWire(Engine.Registry.ServiceItemAction action) => (Wire.ServiceItemAction)(int)action;

    public static Engine.Registry.FeeUnit ToEngine(Wire.FeeUnit unit) => (Engine.Registry.FeeUnit)(int)unit;

    public static Wire.FeeUnit ToWire(Engine.Registry.FeeUnit unit) => (Wire.FeeUnit)(int)unit;
}
