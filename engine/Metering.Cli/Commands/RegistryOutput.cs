using System.Globalization;
using System.Text;
using System.Text.Json;
using Google.Protobuf.Reflection;
using Metering.Engine.Catalog;
using Metering.Engine.Formatting;
using Metering.Engine.Registry;
using Metering.Engine.Time;
using Metering.Protocol.V1;
using VerificationPart = Metering.Protocol.V1.VerificationPart;
using MaterialKind = Metering.Protocol.V1.MaterialKind;
using Material = Metering.Protocol.V1.Material;
using DeclaredDevices = Metering.Protocol.V1.DeclaredDevices;
using FeeLine = Metering.Protocol.V1.FeeLine;
using HistoryEntry = Metering.Protocol.V1.HistoryEntry;
using IntegrityListing = Metering.Protocol.V1.IntegrityListing;
using Licence = Metering.Protocol.V1.Licence;
using Organisation = Metering.Protocol.V1.Organisation;
using ServiceItem = Metering.Protocol.V1.ServiceItem;
using Application = Metering.Protocol.V1.Application;
using StageProposal = Metering.Protocol.V1.StageProposal;

namespace Metering.Cli.Commands;

/// <summary>
/// How the registry commands print: key-value blocks and tables, never raw protobuf. Times are
/// Asia/Shanghai as yyyy-MM-dd HH:mm, capacity is PFLOPS, money is integer fen with its yuan
/// rendering by integer arithmetic, enums by their proto names (as the JSON filing spells them).
/// </summary>
internal static class RegistryOutput
{
    /// <summary>History summaries longer than this are cut; `history --json` shows them whole.</summary>
    public const int SummaryCharsMax = 120;

    private const int ValueCharsMax = 32;
    private const int Sha256PrefixChars = 12;

    public static string Local(long unixMs) => unixMs == 0 ? "" : LocalTime.Minutes(unixMs);

    public static string Local(DateTimeOffset instant) => LocalTime.Minutes(instant);

    public static string Pflops(long gflops) => FilingRules.Pflops(gflops);

    /// <summary>
    /// A material kind as the registry spells it (business_licence). The engine's enum and the
    /// wire's carry the same names at the same numbers (RegistryEnumMirrorTests holds them so).
    /// </summary>
    public static string Spelling(MaterialKind kind) => Names.Of((Engine.Registry.MaterialKind)(int)kind);

    /// <summary>The material kind a registry spelling names, or unspecified.</summary>
    public static MaterialKind MaterialKindOf(string spelling) => (MaterialKind)(int)Names.MaterialKindOf(spelling);

    public static string Count(long value) => value.ToString(CultureInfo.InvariantCulture);

    /// <summary>Fen as yuan with two decimals, by integer arithmetic: 1800 is 18.00.</summary>
    public static string Yuan(long fen)
    {
        ulong magnitude = fen < 0 ? (ulong)(-(fen + 1)) + 1 : (ulong)fen;
        return string.Create(CultureInfo.InvariantCulture, $"{(fen < 0 ? "-" : "")}{magnitude / 100}.{magnitude % 100:00}");
    }

    /// <summary>An enum value as registry.proto spells it: ACTIVE, AWAITING_VERIFICATION, BUSINESS_LICENCE.</summary>
    public static string Name<T>(T value)
        where T : struct, Enum
    {
        int number = Convert.ToInt32(value, CultureInfo.InvariantCulture);
        EnumDescriptor descriptor = RegistryReflection.Descriptor.EnumTypes.Single(e => e.ClrType == typeof(T));
        return descriptor.FindValueByNumber(number)?.Name ?? number.ToString(CultureInfo.InvariantCulture);
    }

    // ---------------------------------------------------------------- applications

    /// <summary>
    /// An application's summary and its stages: what every workflow command prints; as JSON one
    /// object with the members application, verificationParts and stages.
    /// </summary>
    public static void WriteApplication(Application application, OutputFormat format = OutputFormat.Table)
    {
        if (format == OutputFormat.Json)
        {
            new Sections().One("application", SummaryRows(application, detail: false)).Many("verificationParts", VerificationPartRows(application))
                .Many("stages", StageRows(application.Stages)).WriteJson(Console.Out);
            return;
        }

        Fields(Summary(application));
        WriteVerificationParts(application);
        Console.WriteLine();
        StageRows(application.Stages).WriteTable(Console.Out);
    }

    /// <summary>
    /// The parts of the recorded verification, each with where it came from: the probe's fleet
    /// validation, or the commissioned verifier's figure for a model the probe cannot reach.
    /// Nothing for an application verified by a total alone or not yet verified.
    /// </summary>
    private static void WriteVerificationParts(Application application)
    {
        if (application.VerificationParts.Count == 0)
        {
            return;
        }

        TextTable table = VerificationPartRows(application).ToTable();
        table.Add("total", "", "", Pflops(application.VerificationParts.Sum(p => p.Fp16Gflops)));
        Section("Verified capacity by part", table, application.VerificationParts.Count);
    }

    /// <summary>The parts of a verification; the data names the source (probe or verifier) and carries capacity as integer GFLOPS.</summary>
    private static Rows VerificationPartRows(Application application)
    {
        var rows = new Rows(Column.TableOnly("source"), Column.DataOnly("source"), Column.DataOnly("validationId"), ("device model", "deviceModel"), ("devices", "devices"),
            ("FP16 PFLOPS", "fp16Gflops"));
        foreach (VerificationPart part in application.VerificationParts)
        {
            bool probe = part.Source == VerificationSource.Probe;
            rows.Add(probe ? $"probe: fleet validation {part.ValidationId}" : "commissioned verifier's figure", probe ? "probe" : "verifier",
                probe ? Cell.Data(part.ValidationId) : Cell.Data(null), probe ? Cell.Data(null, "(the validation's inventory)") : part.DeviceModel,
                probe ? Cell.Data(null) : Cell.Number(part.Devices, Count((long)part.Devices)), Cell.Number(part.Fp16Gflops, Pflops(part.Fp16Gflops)));
        }

        return rows;
    }

    /// <summary>
    /// Everything on record about an application; as JSON one object with the members
    /// application, materials, capacity, verificationParts, fees and stages.
    /// </summary>
    public static void WriteApplicationDetail(Application application, DeviceCatalog catalog, OutputFormat format = OutputFormat.Table)
    {
        var materials = new Rows(("material", "kind"), Column.DataOnly("documentRef"), Column.TableOnly("document"), Column.TableOnly("sha256"), Column.DataOnly("sha256"));
        foreach (Material material in application.Materials)
        {
            materials.Add(Name(material.Kind), material.DocumentRef, material.DocumentRef, material.Sha256[..Math.Min(Sha256PrefixChars, material.Sha256.Length)] + "…", material.Sha256);
        }

        // The last column says whether the probe can prove the figure or only the commissioned verifier can.
        var capacity = new Rows(("site", "site"), ("device model", "deviceModel"), ("devices", "deviceCount"), ("FP16 PFLOPS", "fp16Gflops"), ("capacity figure", "capacityFigure"));
        foreach (DeclaredDevices devices in application.Capacity)
        {
            DeviceModel? model = catalog.Find(devices.DeviceModel);
            capacity.Add(devices.Site, devices.DeviceModel, Cell.Number(devices.DeviceCount, Count(devices.DeviceCount)),
                model is null ? Cell.Data(null) : Cell.Number(devices.DeviceCount * model.Fp16DenseGflops, Pflops(devices.DeviceCount * model.Fp16DenseGflops)),
                model is null ? Cell.Data(null) : model.CapacityFromVerifier ? "commissioned verifier" : "probe");
        }

        var fees = new Rows(("device model", "deviceModel"), ("unit", "unit"), ("price (fen)", "priceFen"), Column.TableOnly("yuan"));
        foreach (FeeLine line in application.Fees)
        {
            fees.Add(line.DeviceModel, Name(line.Unit), Cell.Number(line.PriceFen, Count(line.PriceFen)), Yuan(line.PriceFen));
        }

        if (format == OutputFormat.Json)
        {
            new Sections().One("application", SummaryRows(application, detail: true)).Many("materials", materials).Many("capacity", capacity)
                .Many("verificationParts", VerificationPartRows(application)).Many("fees", fees).Many("stages", StageRows(application.Stages)).WriteJson(Console.Out);
            return;
        }

        var fields = Summary(application);
        fields.Add(("proof stream", $"{application.MeteringProofStream} ({application.MeteringProofRecords} records at filing)"));
        fields.Add(("service content", application.ServiceContent));
        fields.Add(("service standards", application.ServiceStandards));
        Fields(fields);
        Section("Materials", materials.ToTable(), application.Materials.Count);
        Section("Declared capacity", capacity.ToTable(), application.Capacity.Count);
        WriteVerificationParts(application);
        Section("Fee schedule (version 1)", fees.ToTable(), application.Fees.Count);
        Console.WriteLine();
        StageRows(application.Stages).WriteTable(Console.Out);
    }

    /// <summary>A reconsideration and where it stands, with the command that approves an uphold awaiting a second operator; as data one row.</summary>
    public static void WriteReconsideration(Reconsideration r, OutputFormat format = OutputFormat.Table)
    {
        if (format != OutputFormat.Table)
        {
            var row = new Rows(Column.DataOnly("applicationId"), Column.DataOnly("creditCode"), Column.DataOnly("refusedStage"), Column.DataOnly("refusedAt"), Column.DataOnly("windowEnds"),
                Column.DataOnly("requestedAt"), Column.DataOnly("requestedBy"), Column.DataOnly("grounds"), Column.DataOnly("status"), Column.DataOnly("pendingProposalNo"),
                Column.DataOnly("decidedAt"), Column.DataOnly("decidedBy"), Column.DataOnly("reasons"), Column.DataOnly("applicationState"));
            row.Add(Cell.Data(r.ApplicationId), r.CreditCode, r.RefusedStage, Cell.Instant(r.RefusedUnixMs), Cell.Instant(r.WindowEndsUnixMs), Cell.Instant(r.RequestedUnixMs), r.RequestedBy,
                r.Grounds, Name(r.Status), r.PendingProposalNo == 0 ? Cell.Data(null) : Cell.Data(r.PendingProposalNo), Cell.Instant(r.DecidedUnixMs),
                r.DecidedBy.Length == 0 ? Cell.Data(null) : r.DecidedBy, r.Reasons, Name(r.ApplicationState));
            row.WriteOne(format, Console.Out);
            return;
        }

        string status = r.Status switch
        {
            ReconsiderationStatus.ReconsiderationUpheld => "upheld",
            ReconsiderationStatus.ReconsiderationDismissed => "dismissed",
            _ when r.PendingProposalNo != 0 => "uphold proposed, awaiting a second operator",
            _ => "pending",
        };
        Fields(
        [
            ("application", Count(r.ApplicationId)),
            ("applicant", r.CreditCode),
            ("refused at", $"{r.RefusedStage}, {Local(r.RefusedUnixMs)}"),
            ("window ends", Local(r.WindowEndsUnixMs)),
            ("requested", $"{Local(r.RequestedUnixMs)} by {r.RequestedBy}"),
            ("grounds", r.Grounds),
            ("reconsideration", status),
            ("decided", r.DecidedUnixMs == 0 ? "" : $"{Local(r.DecidedUnixMs)} by {r.DecidedBy}"),
            ("reason", r.Reasons),
            ("application state", Name(r.ApplicationState)),
            ("approve with", r.PendingProposalNo == 0 ? "" : $"metering registry approve {r.ApplicationId} --proposal {r.PendingProposalNo}"),
        ]);
    }

    public static void WriteApplications(IReadOnlyList<Application> applications, OutputFormat format)
    {
        if (applications.Count == 0 && format == OutputFormat.Table)
        {
            Console.WriteLine(Labels.Of("No applications."));
            return;
        }

        ApplicationRows(applications).Write(format, Console.Out);
    }

    private static TextTable Table(IEnumerable<Application> applications) => ApplicationRows(applications).ToTable();

    /// <summary>Applications as rows; the data carries capacity as the integer GFLOPS on record, not the PFLOPS shown.</summary>
    private static Rows ApplicationRows(IEnumerable<Application> applications)
    {
        var rows = new Rows(("id", "applicationId"), ("applicant", "creditCode"), ("batch", "batchId"), ("service item", "serviceItem"), ("state", "state"), ("filed", "filedAt"),
            ("declared PFLOPS", "declaredFp16Gflops"), ("verified PFLOPS", "verifiedFp16Gflops"), ("notice", "noticeNumber"));
        foreach (Application a in applications)
        {
            rows.Add(Cell.Number(a.ApplicationId, Count(a.ApplicationId)), a.CreditCode, a.BatchId, a.ServiceItem, Name(a.State), Cell.Instant(a.FiledUnixMs) with { Text = Local(a.FiledUnixMs) },
                Cell.Number(a.DeclaredFp16Gflops, Pflops(a.DeclaredFp16Gflops)),
                a.VerifiedFp16Gflops == 0 ? Cell.Data(null) : Cell.Number(a.VerifiedFp16Gflops, Pflops(a.VerifiedFp16Gflops)), a.NoticeNumber);
        }

        return rows;
    }

    /// <summary>An application's summary as one row of data: capacity as integer GFLOPS, times as instants, a pending proposal by its number and the command that approves it.</summary>
    private static Rows SummaryRows(Application a, bool detail)
    {
        List<Column> columns = [Column.DataOnly("applicationId"), Column.DataOnly("creditCode"), Column.DataOnly("batchId"), Column.DataOnly("serviceItem"), Column.DataOnly("state"),
            Column.DataOnly("filedAt"), Column.DataOnly("declaredFp16Gflops"), Column.DataOnly("verifiedFp16Gflops"), Column.DataOnly("intermediary"),
            Column.DataOnly("publicNoticeEnds"), Column.DataOnly("noticeNumber"), Column.DataOnly("pendingProposalNo"), Column.DataOnly("awaitingApproval")];
        List<Cell> cells = [Cell.Data(a.ApplicationId), a.CreditCode, a.BatchId, a.ServiceItem, Name(a.State), Cell.Instant(a.FiledUnixMs), Cell.Data(a.DeclaredFp16Gflops),
            a.VerifiedFp16Gflops == 0 ? Cell.Data(null) : Cell.Data(a.VerifiedFp16Gflops), a.Intermediary, Cell.Instant(a.NoticeEndsUnixMs), a.NoticeNumber,
            a.PendingProposal is { } pending ? Cell.Data(pending.ProposalNo) : Cell.Data(null), a.PendingProposal is { } p ? (Cell)Proposal(a.ApplicationId, p) : Cell.Data(null)];
        if (detail)
        {
            columns.AddRange([Column.DataOnly("meteringProofStream"), Column.DataOnly("meteringProofRecords"), Column.DataOnly("serviceContent"), Column.DataOnly("serviceStandards")]);
            cells.AddRange([a.MeteringProofStream, Cell.Data(a.MeteringProofRecords), a.ServiceContent, a.ServiceStandards]);
        }

        var rows = new Rows([.. columns]);
        rows.Add([.. cells]);
        return rows;
    }

    private static List<(string Label, string Value)> Summary(Application a) =>
    [
        ("application", Count(a.ApplicationId)),
        ("applicant", a.CreditCode),
        ("batch", a.BatchId),
        ("service item", a.ServiceItem),
        ("state", Name(a.State)),
        ("filed", Local(a.FiledUnixMs)),
        ("declared", $"{Pflops(a.DeclaredFp16Gflops)} PFLOPS FP16"),
        ("verified", a.VerifiedFp16Gflops == 0 ? "" : $"{Pflops(a.VerifiedFp16Gflops)} PFLOPS FP16"),
        ("intermediary", a.Intermediary),
        ("public notice until", Local(a.NoticeEndsUnixMs)),
        ("admission notice", a.NoticeNumber),
        ("awaiting approval", a.PendingProposal is not { } p ? "" : Proposal(a.ApplicationId, p)),
    ];

    /// <summary>A pending four-eyes proposal, with the command that approves it.</summary>
    private static string Proposal(long applicationId, StageProposal p) =>
        $"proposal {p.ProposalNo}: {p.Stage} {(p.Stage == "reconsideration" ? "uphold" : p.Pass ? "pass" : "reject")}"
        + (p.VerifiedFp16Gflops > 0 ? $" at {Pflops(p.VerifiedFp16Gflops)} PFLOPS FP16" : "")
        + (p.VerifierParts.Count > 0
            ? " with the commissioned verifier's figure for " + string.Join(", ", p.VerifierParts.Select(v => $"{v.DeviceModel} ({Count(v.Devices)} devices, {Pflops(v.DenseFp16Gflops)} PFLOPS FP16)"))
              + " added to the fleet validation in force at approval"
            : "")
        + $" by {p.ProposedBy} at {Local(p.ProposedUnixMs)}; a second operator approves it with: metering registry approve {applicationId} --proposal {p.ProposalNo}";

    private static Rows StageRows(IEnumerable<Stage> stages)
    {
        var rows = new Rows(("stage", "stage"), ("by", "actor"), ("when", "at"), ("outcome", "outcome"), ("reasons", "reasons"));
        foreach (Stage stage in stages)
        {
            rows.Add(stage.Stage_, stage.Actor, Cell.Instant(stage.AtUnixMs), stage.Outcome, stage.Reasons);
        }

        return rows;
    }

    // ---------------------------------------------------------------- organisations

    public static void WriteOrganisation(Organisation organisation, IReadOnlyList<Application> applications, DateTimeOffset now, OutputFormat format = OutputFormat.Table)
    {
        if (format == OutputFormat.Json)
        {
            WriteOrganisationJson(organisation, applications);
            return;
        }

        Fields(
        [
            ("credit code", organisation.CreditCode),
            ("name", organisation.Name),
            ("legal form", Name(organisation.LegalForm)),
            ("district", $"{organisation.District} ({Districts.NameOf(organisation.District)})"),
            ("established", organisation.EstablishedOn),
        ]);

        string today = RegistryInput.Date(ShanghaiTime.DateOf(now));
        var licences = new TextTable("licence", "issuer", "valid from", "valid until", "valid today");
        foreach (Licence licence in organisation.Licences)
        {
            bool valid = string.CompareOrdinal(licence.ValidFrom, today) <= 0 && string.CompareOrdinal(today, licence.ValidUntil) <= 0;
            licences.Add(licence.LicenceNumber, licence.Issuer, licence.ValidFrom, licence.ValidUntil, valid ? "yes" : "no");
        }

        Section("IDC/ISP licences", licences, organisation.Licences.Count);

        var listings = new TextTable("list", "from", "until", "reason");
        foreach (IntegrityListing listing in organisation.Listings)
        {
            listings.Add(listing.List, listing.ListedFrom, listing.ListedUntil.Length == 0 ? "(no end)" : listing.ListedUntil, listing.Reason);
        }

        Section("Integrity listings", listings, organisation.Listings.Count);

        var items = new TextTable("service item", "status", "valid from", "valid until", "application", "notice", "fees", "reason");
        foreach (ServiceItem item in organisation.ServiceItems)
        {
            items.Add(item.ServiceItem_, Name(item.Status), Local(item.ValidFromUnixMs), Local(item.ValidUntilUnixMs), Count(item.ApplicationId), item.NoticeNumber,
                $"v{item.FeeScheduleVersion}", item.StatusReason);
        }

        Section("Service items", items, organisation.ServiceItems.Count);
        Section("Applications", Table(applications), applications.Count);
    }

    /// <summary>The organisation as one JSON object: its fields, then a member per section, each a list of rows.</summary>
    private static void WriteOrganisationJson(Organisation organisation, IReadOnlyList<Application> applications)
    {
        var fields = new Rows(Column.DataOnly("creditCode"), Column.DataOnly("name"), Column.DataOnly("legalForm"), Column.DataOnly("district"), Column.DataOnly("establishedOn"));
        fields.Add(organisation.CreditCode, organisation.Name, Name(organisation.LegalForm), organisation.District, organisation.EstablishedOn);
        var licences = new Rows(Column.DataOnly("licenceNumber"), Column.DataOnly("issuer"), Column.DataOnly("validFrom"), Column.DataOnly("validUntil"));
        foreach (Licence licence in organisation.Licences)
        {
            licences.Add(licence.LicenceNumber, licence.Issuer, licence.ValidFrom, licence.ValidUntil);
        }

        var listings = new Rows(Column.DataOnly("list"), Column.DataOnly("listedFrom"), Column.DataOnly("listedUntil"), Column.DataOnly("reason"));
        foreach (IntegrityListing listing in organisation.Listings)
        {
            listings.Add(listing.List, listing.ListedFrom, listing.ListedUntil.Length == 0 ? Cell.Data(null) : listing.ListedUntil, listing.Reason);
        }

        var items = new Rows(Column.DataOnly("serviceItem"), Column.DataOnly("status"), Column.DataOnly("validFrom"), Column.DataOnly("validUntil"), Column.DataOnly("applicationId"),
            Column.DataOnly("noticeNumber"), Column.DataOnly("feeScheduleVersion"), Column.DataOnly("reason"));
        foreach (ServiceItem item in organisation.ServiceItems)
        {
            items.Add(item.ServiceItem_, Name(item.Status), Cell.Instant(item.ValidFromUnixMs), Cell.Instant(item.ValidUntilUnixMs),
                item.ApplicationId == 0 ? Cell.Data(null) : Cell.Data(item.ApplicationId), item.NoticeNumber, Cell.Data(item.FeeScheduleVersion), item.StatusReason);
        }

        new Sections().One("organisation", fields).Many("licences", licences).Many("integrityListings", listings).Many("serviceItems", items)
            .Many("applications", ApplicationRows(applications)).WriteJson(Console.Out);
    }

    public static void WriteServiceItem(ServiceItem item, OutputFormat format = OutputFormat.Table)
    {
        if (format != OutputFormat.Table)
        {
            var row = new Rows(Column.DataOnly("creditCode"), Column.DataOnly("serviceItem"), Column.DataOnly("status"), Column.DataOnly("reason"), Column.DataOnly("validFrom"),
                Column.DataOnly("validUntil"), Column.DataOnly("applicationId"), Column.DataOnly("noticeNumber"), Column.DataOnly("feeScheduleVersion"));
            row.Add(item.CreditCode, item.ServiceItem_, Name(item.Status), item.StatusReason, Cell.Instant(item.ValidFromUnixMs), Cell.Instant(item.ValidUntilUnixMs),
                item.ApplicationId == 0 ? Cell.Data(null) : Cell.Data(item.ApplicationId), item.NoticeNumber, Cell.Data(item.FeeScheduleVersion));
            row.WriteOne(format, Console.Out);
            return;
        }

        Fields(
        [
            ("provider", item.CreditCode),
            ("service item", item.ServiceItem_),
            ("status", Name(item.Status)),
            ("reason", item.StatusReason),
            ("valid from", Local(item.ValidFromUnixMs)),
            ("valid until", Local(item.ValidUntilUnixMs)),
            ("application", Count(item.ApplicationId)),
            ("admission notice", item.NoticeNumber),
            ("fee schedule", $"version {item.FeeScheduleVersion}"),
        ]);
    }

    public static void WriteBatches(IReadOnlyList<AdmissionBatch> batches, OutputFormat format = OutputFormat.Table)
    {
        if (format != OutputFormat.Table)
        {
            BatchRows(batches).Write(format, Console.Out);
            return;
        }

        if (batches.Count == 0)
        {
            Console.WriteLine("No admission batches.");
            return;
        }

        var table = new TextTable("batch", "rules", "window opens", "window closes", "validity ends", "notice days", "bar PFLOPS", "audit year", "voucher year", "decisions", "reconsideration days");
        foreach (AdmissionBatch batch in batches)
        {
            table.Add(batch.BatchId, $"v{batch.RulesVersion}", Local(batch.WindowOpensUnixMs), Local(batch.WindowClosesUnixMs), Local(batch.ValidityEndsUnixMs),
                Count(batch.PublicNoticeDays), FilingRules.Pflops(batch.CapacityMinimumGflops),
                batch.AuditReportPriorYearWithReason ? $"{batch.AuditReportYear} (or {batch.AuditReportYear - 1} with a reason)" : Count(batch.AuditReportYear),
                Count(batch.VoucherProgrammeYear), batch.SingleOperatorDecisions ? "one operator" : "four-eyes", Count(batch.ReconsiderationDays));
        }

        table.Write(Console.Out);
        foreach (AdmissionBatch batch in batches)
        {
            Console.WriteLine();
            Console.WriteLine($"Batch {batch.BatchId}, rules version {batch.RulesVersion}, recorded by {batch.RulesRecordedBy} at {Local(batch.RulesRecordedUnixMs)}"
                + (batch.CorrectionReason.Length > 0 ? $" (correction: {batch.CorrectionReason})" : ""));
            Console.WriteLine($"  materials required: {string.Join(", ", batch.MaterialsRequired.Select(Spelling))}");
            Console.WriteLine($"  capital verification in place of the audit report, for an organisation under a year old: {(batch.CapitalVerificationForNewEntities ? "accepted" : "not accepted")}");
            Console.WriteLine($"  least annual rental of a holder ({batch.VoucherProgrammeYear} programme parameters): {Yuan(batch.MinAnnualRentalFen)} CNY");
        }
    }

    /// <summary>Batches as data: every field the table and the lines under it show, times as instants, money as fen, capacity as integer GFLOPS.</summary>
    private static Rows BatchRows(IEnumerable<AdmissionBatch> batches)
    {
        var rows = new Rows(Column.DataOnly("batchId"), Column.DataOnly("rulesVersion"), Column.DataOnly("windowOpens"), Column.DataOnly("windowCloses"), Column.DataOnly("validityEnds"),
            Column.DataOnly("publicNoticeDays"), Column.DataOnly("capacityMinimumGflops"), Column.DataOnly("auditReportYear"), Column.DataOnly("auditReportPriorYearWithReason"),
            Column.DataOnly("voucherProgrammeYear"), Column.DataOnly("singleOperatorDecisions"), Column.DataOnly("reconsiderationDays"), Column.DataOnly("materialsRequired"),
            Column.DataOnly("capitalVerificationForNewEntities"), Column.DataOnly("minAnnualRentalFen"), Column.DataOnly("rulesRecordedBy"), Column.DataOnly("rulesRecordedAt"),
            Column.DataOnly("correctionReason"));
        foreach (AdmissionBatch b in batches)
        {
            rows.Add(b.BatchId, Cell.Data(b.RulesVersion), Cell.Instant(b.WindowOpensUnixMs), Cell.Instant(b.WindowClosesUnixMs), Cell.Instant(b.ValidityEndsUnixMs),
                Cell.Data(b.PublicNoticeDays), Cell.Data(b.CapacityMinimumGflops), Cell.Data(b.AuditReportYear), Cell.Data(b.AuditReportPriorYearWithReason),
                Cell.Data(b.VoucherProgrammeYear), Cell.Data(b.SingleOperatorDecisions), Cell.Data(b.ReconsiderationDays), string.Join(' ', b.MaterialsRequired.Select(Spelling)),
                Cell.Data(b.CapitalVerificationForNewEntities), Cell.Data(b.MinAnnualRentalFen), b.RulesRecordedBy, Cell.Instant(b.RulesRecordedUnixMs), b.CorrectionReason);
        }

        return rows;
    }

    // ---------------------------------------------------------------- history

    public static void WriteHistory(IReadOnlyList<HistoryEntry> entries, bool json, OutputFormat format = OutputFormat.Table)
    {
        if (format != OutputFormat.Table)
        {
            // The entity before and after stay the JSON text the server recorded, so that nothing is reinterpreted.
            var rows = new Rows(Column.DataOnly("changeId"), Column.DataOnly("at"), Column.DataOnly("actor"), Column.DataOnly("role"), Column.DataOnly("entity"),
                Column.DataOnly("entityKey"), Column.DataOnly("action"), Column.DataOnly("beforeJson"), Column.DataOnly("afterJson"));
            foreach (HistoryEntry e in entries)
            {
                rows.Add(Cell.Data(e.ChangeId), Cell.Instant(e.AtUnixMs), e.Actor, e.Role, e.Entity, e.EntityKey, e.Action,
                    e.BeforeJson.Length == 0 ? Cell.Data(null) : e.BeforeJson, e.AfterJson.Length == 0 ? Cell.Data(null) : e.AfterJson);
            }

            rows.Write(format, Console.Out);
            return;
        }

        if (entries.Count == 0)
        {
            Console.WriteLine("No changes recorded.");
            return;
        }

        if (json)
        {
            foreach (HistoryEntry e in entries)
            {
                Console.WriteLine($"#{e.ChangeId}  {Local(e.AtUnixMs)}  {e.Actor} ({e.Role})  {e.Entity} {e.EntityKey}  {e.Action}");
                Console.WriteLine($"  before: {(e.BeforeJson.Length == 0 ? "(none)" : e.BeforeJson)}");
                Console.WriteLine($"  after:  {(e.AfterJson.Length == 0 ? "(none)" : e.AfterJson)}");
            }

            return;
        }

        var table = new TextTable("change", "when", "actor", "role", "entity", "key", "action", "what changed");
        foreach (HistoryEntry e in entries)
        {
            table.Add(Count(e.ChangeId), Local(e.AtUnixMs), e.Actor, e.Role, e.Entity, e.EntityKey, e.Action, Changes(e.BeforeJson, e.AfterJson));
        }

        table.Write(Console.Out);
    }

    /// <summary>
    /// A one-line account of a change: the top-level fields whose values differ (`state:
    /// awaiting_material_review → awaiting_verification`), or the fields of a new entity.
    /// </summary>
    internal static string Changes(string beforeJson, string afterJson)
    {
        if (afterJson.Length == 0)
        {
            return "";
        }

        using JsonDocument afterDocument = JsonDocument.Parse(afterJson);
        using JsonDocument? beforeDocument = beforeJson.Length == 0 ? null : JsonDocument.Parse(beforeJson);
        JsonElement after = afterDocument.RootElement;
        var parts = new List<string>();
        if (after.ValueKind != JsonValueKind.Object)
        {
            parts.Add(Value(after));
        }
        else if (beforeDocument?.RootElement is not { ValueKind: JsonValueKind.Object } before)
        {
            parts.AddRange(Fields(after));
        }
        else
        {
            parts.AddRange(Differences(before, after));
        }

        string summary = string.Join(", ", parts);
        return summary.Length <= SummaryCharsMax ? summary : summary[..(SummaryCharsMax - 1)] + "…";
    }

    private static IEnumerable<string> Fields(JsonElement entity) =>
        entity.EnumerateObject()
            .Where(p => p.Value.ValueKind != JsonValueKind.Null && !(p.Value.ValueKind == JsonValueKind.String && p.Value.GetString()!.Length == 0))
            .Select(p => $"{p.Name}={Value(p.Value)}");

    private static IEnumerable<string> Differences(JsonElement before, JsonElement after)
    {
        // A verification's parts come first, so that the summary's cut never hides where the figure came from.
        foreach (JsonProperty property in after.EnumerateObject().OrderBy(p => p.Name == VerificationPartsField ? 0 : 1))
        {
            bool had = before.TryGetProperty(property.Name, out JsonElement was);
            if ((had ? was.GetRawText() : "null") != property.Value.GetRawText())
            {
                yield return property.Name == VerificationPartsField
                    ? $"{property.Name}: {Parts(property.Value)}"
                    : $"{property.Name}: {(had ? Value(was) : "null")} → {Value(property.Value)}";
            }
        }
    }

    private const string VerificationPartsField = "verification_parts";

    /// <summary>A verification's parts in one line: `probe (fleet validation 3) 1.234 + commissioned verifier ASCEND-910B × 960 298.766 PFLOPS`.</summary>
    private static string Parts(JsonElement parts) =>
        string.Join(" + ", parts.EnumerateArray().Select(part =>
        {
            long gflops = part.TryGetProperty("fp16_gflops", out JsonElement g) && g.ValueKind == JsonValueKind.Number ? g.GetInt64() : 0;
            return part.TryGetProperty("source", out JsonElement source) && source.GetString() == "probe"
                ? $"probe (fleet validation {part.GetProperty("validation_id").GetRawText()}) {Pflops(gflops)}"
                : $"commissioned verifier {part.GetProperty("device_model").GetString()} × {part.GetProperty("devices").GetRawText()} {Pflops(gflops)}";
        })) + " PFLOPS";

    private static string Value(JsonElement value)
    {
        string text = value.ValueKind switch
        {
            JsonValueKind.String => value.GetString()!,
            JsonValueKind.Object => "{" + string.Join(", ", Fields(value)) + "}",
            JsonValueKind.Array => "[…]",
            _ => value.GetRawText(),
        };
        text = text.ReplaceLineEndings(" ");
        return text.Length <= ValueCharsMax ? text : text[..(ValueCharsMax - 1)] + "…";
    }

    // ---------------------------------------------------------------- layout

    /// <summary>Label-value lines with the values aligned; empty values are left out.</summary>
    private static void Fields(IReadOnlyList<(string Label, string Value)> fields)
    {
        var shown = fields.Where(f => f.Value.Length > 0).Select(f => (Label: Labels.Of(f.Label), f.Value)).ToList();
        int width = shown.Max(f => DisplayWidth.Of(f.Label));
        var text = new StringBuilder();
        foreach (var (label, value) in shown)
        {
            text.Append(DisplayWidth.Pad(label, width + 2, alignRight: false)).AppendLine(value);
        }

        Console.Write(text.ToString());
    }

    private static void Section(string title, TextTable table, int rows)
    {
        Console.WriteLine();
        Console.WriteLine($"{Labels.Of(title)}:");
        if (rows == 0)
        {
            Console.WriteLine("  " + Labels.Of("(none)"));
            return;
        }

        table.Write(Console.Out);
    }
}
