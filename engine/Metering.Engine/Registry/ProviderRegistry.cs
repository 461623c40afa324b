using System.Data;
using System.Globalization;
using System.Text.Json;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Catalog;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Metering.Protocol.V1;
using Npgsql;

namespace Metering.Engine.Registry;

/// <summary>
/// The provider registry and its admission workflow: online application → electronic material
/// review → commissioned verification → consultation and public notice → admission decision →
/// admission notice; then the admitted service items and their exits.
///
/// Every write runs in one transaction that locks the rows it decides on, checks its rule, makes
/// the change and appends the change to registry_history. A refusal throws
/// <see cref="RegistryRefusedException"/> before anything is written. Who may call what is the
/// server's access policy; this class checks only what follows from the actor itself (a provider
/// files for itself). What it needs from the features above it (the fleet validation, the proof
/// stream's chain) comes in through its ports, <see cref="IFleetValidationEvidence"/> and
/// <see cref="IProofChainEvidence"/>.
/// </summary>
public sealed partial class ProviderRegistry(NpgsqlDataSource dataSource, DeviceCatalog catalog, TimeProvider time,
    IFleetValidationEvidence fleetValidations, IProofChainEvidence proofChains)
{
    public const int ListLimitDefault = 100;
    public const int ListLimitMax = 1_000;
    public const int ReasonsMax = 4_000;

    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    public DeviceCatalog Catalog => catalog;

    // ---------------------------------------------------------------- organisations and lists

    public async Task<Organisation> RegisterOrganisationAsync(Actor actor, Organisation organisation, CancellationToken cancellationToken)
    {
        string code = CheckCreditCode(organisation.CreditCode);
        if (organisation.Name.Trim().Length is 0 or > 200)
        {
            throw FilingRules.Invalid("name must be 1 to 200 characters");
        }

        string legalForm = Names.Of(organisation.LegalForm);
        string district = Districts.Normalise(organisation.District)
            ?? throw new RegistryRefusedException(RegistryRefusalReason.NotRegisteredInShenzhen,
                $"district '{organisation.District}' is not in Shenzhen; the programme admits organisations registered in one of: {string.Join(", ", Districts.Keys)}");
        if (!Districts.CodeRegionMatches(code, district))
        {
            throw new RegistryRefusedException(RegistryRefusalReason.NotRegisteredInShenzhen,
                $"{code} was registered in region {code.Substring(2, 6)}, which is not Shenzhen (4403xx)");
        }

        DateOnly established = ParseDate("established_on", organisation.EstablishedOn);
        DateTimeOffset now = time.GetUtcNow();
        if (established > ShanghaiTime.DateOf(now))
        {
            throw FilingRules.Invalid("established_on lies in the future");
        }

        return await InTransactionAsync(async (connection, transaction) =>
        {
            int inserted = await connection.ExecuteAsync("""
                INSERT INTO organisations (provider_id, name, legal_form, district, established_on, registered_at)
                VALUES (@code, @name, @legalForm, @district, @established, @now)
                ON CONFLICT (provider_id) DO NOTHING
                """, new { code, name = organisation.Name.Trim(), legalForm, district, established, now = now.UtcDateTime }, transaction);
            if (inserted == 0)
            {
                throw new RegistryRefusedException(RegistryRefusalReason.OrganisationExists, $"{code} is already registered");
            }

            await RecordAsync(connection, transaction, actor, now, code, "organisation", code, "register", null, await RowJsonAsync(connection, transaction, "organisations", "provider_id = @code", new { code }));
            return (await ReadOrganisationAsync(connection, transaction, code, now))!;
        }, cancellationToken);
    }

    public async Task<Licence> AddLicenceAsync(Actor actor, Licence licence, CancellationToken cancellationToken)
    {
        string code = CheckCreditCode(licence.CreditCode);
        if (licence.LicenceNumber.Trim().Length is 0 or > 64 || licence.Issuer.Trim().Length is 0 or > 200)
        {
            throw FilingRules.Invalid("a licence needs a licence_number (1 to 64 characters) and an issuer (1 to 200)");
        }

        DateOnly from = ParseDate("valid_from", licence.ValidFrom);
        DateOnly until = ParseDate("valid_until", licence.ValidUntil);
        if (until < from)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.PeriodInvalid, $"the licence is valid until {until:yyyy-MM-dd}, before it is valid from {from:yyyy-MM-dd}");
        }

        DateTimeOffset now = time.GetUtcNow();
        return await InTransactionAsync(async (connection, transaction) =>
        {
            await RequireOrganisationAsync(connection, transaction, code, lockRow: true);
            string number = licence.LicenceNumber.Trim();
            int inserted = await connection.ExecuteAsync("""
                INSERT INTO licences (provider_id, licence_number, issuer, valid_from, valid_until) VALUES (@code, @number, @issuer, @from, @until)
                ON CONFLICT DO NOTHING
                """, new { code, number, issuer = licence.Issuer.Trim(), from, until }, transaction);
            if (inserted == 0)
            {
                throw FilingRules.Invalid($"licence {number} of {code} is already on record");
            }

            await RecordAsync(connection, transaction, actor, now, code, "licence", $"{code}/{number}", "add", null,
                await RowJsonAsync(connection, transaction, "licences", "provider_id = @code AND licence_number = @number", new { code, number }));
            return new Licence { CreditCode = code, LicenceNumber = number, Issuer = licence.Issuer.Trim(), ValidFrom = ShanghaiTime.IsoDate(from), ValidUntil = ShanghaiTime.IsoDate(until) };
        }, cancellationToken);
    }

    public async Task<IntegrityListing> AddIntegrityListingAsync(Actor actor, IntegrityListing listing, CancellationToken cancellationToken)
    {
        string code = CheckCreditCode(listing.CreditCode);
        if (!Names.ListNames.Contains(listing.List))
        {
            throw FilingRules.Invalid($"list must be one of: {string.Join(", ", Names.ListNames)}");
        }

        DateOnly from = ParseDate("listed_from", listing.ListedFrom);
        DateOnly? until = listing.ListedUntil.Length == 0 ? null : ParseDate("listed_until", listing.ListedUntil);
        if (until < from)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.PeriodInvalid, $"the listing ends on {until:yyyy-MM-dd}, before it starts on {from:yyyy-MM-dd}");
        }

        string reason = RequireReasons(listing.Reason, "a listing needs its reason");
        DateTimeOffset now = time.GetUtcNow();
        return await InTransactionAsync(async (connection, transaction) =>
        {
            long id = await connection.ExecuteScalarAsync<long>("""
                INSERT INTO integrity_listings (provider_id, list_name, listed_from, listed_until, reason) VALUES (@code, @list, @from, @until, @reason)
                RETURNING listing_id
                """, new { code, list = listing.List, from, until, reason }, transaction);
            await BumpEpochAsync(connection, transaction, code);
            await RecordAsync(connection, transaction, actor, now, code, "listing", $"{code}/{id}", "add", null,
                await RowJsonAsync(connection, transaction, "integrity_listings", "provider_id = @code AND listing_id = @id", new { code, id }));
            return new IntegrityListing { CreditCode = code, List = listing.List, ListedFrom = ShanghaiTime.IsoDate(from), ListedUntil = until is { } u ? ShanghaiTime.IsoDate(u) : "", Reason = reason };
        }, cancellationToken);
    }

    // ---------------------------------------------------------------- applications

    /// <param name="enteredBy">The operator who entered the applicant's filing on its behalf, recorded beside the applicant; null when the applicant filed over the API.</param>
    public async Task<Application> FileApplicationAsync(Actor actor, FileApplicationRequest request, CancellationToken cancellationToken, string? enteredBy = null)
    {
        string code = CheckCreditCode(request.CreditCode);
        if (actor.Role != Role.Provider || actor.Subject != code)
        {
            // The guide requires applicants to file for themselves (自主申报).
            throw new RegistryRefusedException(RegistryRefusalReason.OtherProvider, $"an application for {code} must be filed by {code} itself");
        }

        FilingRules.CheckForm(request, catalog);
        return await InTransactionAsync(async (connection, transaction) =>
        {
            OrganisationRow organisation = await RequireOrganisationAsync(connection, transaction, code, lockRow: true);
            DateTimeOffset now = time.GetUtcNow();
            BatchRow batch = (await ReadBatchesAsync(connection, transaction, request.BatchId)).SingleOrDefault()
                ?? throw new RegistryRefusedException(RegistryRefusalReason.BatchUnknown, $"there is no admission batch '{request.BatchId}'");
            var context = new FilingContext(
                organisation,
                batch,
                await ReadLicencesAsync(connection, transaction, code),
                await ReadListingsAsync(connection, transaction, code),
                await connection.ExecuteScalarAsync<string?>("SELECT status FROM voucher_holders WHERE holder_code = @code AND status <> 'left'", new { code }, transaction),
                now);
            long declared = FilingRules.Check(request, context, catalog);

            string? pending = await connection.ExecuteScalarAsync<string?>("""
                SELECT state FROM applications WHERE provider_id = @code AND service_item = @item AND state NOT IN ('admitted', 'rejected')
                """, new { code, item = request.ServiceItem }, transaction);
            if (pending is not null)
            {
                throw new RegistryRefusedException(RegistryRefusalReason.ServiceItemTaken, $"{code} already has an application for service item '{request.ServiceItem}' in progress ({pending})");
            }

            // An item whose admission has ended (expired, withdrawn, revoked) may be applied for
            // again; one still admitted only as a renewal of that admission in a later batch.
            long? renews = null;
            if (request.RenewsApplicationId != 0)
            {
                renews = await CheckRenewalAsync(connection, transaction, code, request, batch, now);
            }
            else if (await CurrentItemAsync(connection, transaction, code, request.ServiceItem, now) is { } current
                && current.Status(now) is ServiceItemStatus.Active or ServiceItemStatus.Suspended)
            {
                throw new RegistryRefusedException(RegistryRefusalReason.ServiceItemTaken,
                    $"{code} is already admitted for service item '{request.ServiceItem}' until {current.ValidityEndsAt.ToOffset(ShanghaiTime.Offset):yyyy-MM-dd HH:mm} Asia/Shanghai; a new service is applied for under a new item, and this one is renewed in a later batch with renews_application_id {current.ApplicationId}");
            }

            long proofRecords = await CheckMeteringProofAsync(connection, transaction, code, request.MeteringProofStream, cancellationToken);
            long id = await connection.ExecuteScalarAsync<long>("""
                INSERT INTO applications (provider_id, batch_id, service_item, state, filed_at, financial_report_kind, audit_report_year, audit_report_reason,
                    declared_fp16_gflops, service_content, service_standards, metering_proof_stream, metering_proof_records, fee_lines, intermediary, renews_application_id)
                VALUES (@code, @batch, @item, 'awaiting_material_review', @now, @reportKind, @year, @reason, @declared, @content, @standards,
                    @proof, @proofRecords, @fees::jsonb, @intermediary, @renews)
                RETURNING application_id
                """, new
            {
                code,
                batch = batch.BatchId,
                item = request.ServiceItem,
                now = now.UtcDateTime,
                reportKind = Names.Of(request.FinancialReportKind),
                year = request.FinancialReportKind == FinancialReportKind.CapitalVerification || request.AuditReportYear == 0 ? (int?)null : (int)request.AuditReportYear,
                reason = NullIfEmpty(request.AuditReportReason),
                declared,
                content = request.ServiceContent,
                standards = request.ServiceStandards,
                proof = request.MeteringProofStream,
                proofRecords,
                fees = FeesJson(request.Fees),
                intermediary = NullIfEmpty(request.Intermediary.Trim()),
                renews,
            }, transaction);

            foreach (Material material in request.Materials)
            {
                await connection.ExecuteAsync("""
                    INSERT INTO application_materials (provider_id, application_id, kind, document_ref, sha256) VALUES (@code, @id, @kind, @ref, @sha)
                    """, new { code, id, kind = Names.Of(material.Kind), @ref = material.DocumentRef, sha = Convert.FromHexString(material.Sha256) }, transaction);
            }

            foreach (DeclaredDevices devices in request.Capacity)
            {
                await connection.ExecuteAsync("""
                    INSERT INTO application_capacity (provider_id, application_id, site, device_model, device_count) VALUES (@code, @id, @site, @model, @count)
                    """, new { code, id, site = devices.Site, model = devices.DeviceModel, count = (int)devices.DeviceCount }, transaction);
            }

            string filingNote = string.Join("; ", new[]
            {
                request.Intermediary.Length > 0 ? $"flagged: filed through an intermediary ({request.Intermediary.Trim()})" : "",
                renews is { } renewed ? $"renews the admission of application {renewed}" : "",
                enteredBy is not null ? $"entered by operator {enteredBy}" : "",
            }.Where(note => note.Length > 0));
            Actor recorded = enteredBy is null ? actor : actor with { Subject = $"{actor.Subject} (entered by {enteredBy})" };
            await AddStageAsync(connection, transaction, code, id, "filing", actor, now, "recorded", filingNote);
            await RecordAsync(connection, transaction, recorded, now, code, "application", id.ToString(CultureInfo.InvariantCulture), "file", null, await ApplicationJsonAsync(connection, transaction, id));
            return (await ReadApplicationAsync(connection, transaction, id, details: true))!;
        }, cancellationToken);
    }

    /// <summary>Electronic material review. An application filed through an intermediary is rejected here, whatever the operator asked.</summary>
    public Task<Application> ReviewMaterialsAsync(Actor actor, StageDecision decision, CancellationToken cancellationToken) =>
        DecideStageAsync(actor, decision.ApplicationId, "material_review", ApplicationState.AwaitingMaterialReview, "material_review", async (connection, transaction, row, now) =>
        {
            if (row.Intermediary is not null)
            {
                string reasons = $"FILED_VIA_INTERMEDIARY: the application was filed through an intermediary ({row.Intermediary}); the guide refuses such applications at formal review";
                return (ApplicationState.Rejected, "rejected", reasons);
            }

            return decision.Pass
                ? (ApplicationState.AwaitingVerification, "passed", decision.Reasons.Trim())
                : (ApplicationState.Rejected, "rejected", RequireReasons(decision.Reasons, "a rejection needs its reasons"));
        }, cancellationToken);

    /// <summary>
    /// Commissioned verification: the verified FP16 capacity must reach the batch's capacity bar
    /// for the stage to pass. The figure is the commissioned verifier's typed total
    /// (verified_fp16_gflops &gt; 0, confirming no devices per model) or, with 0, the sum of the
    /// provider's current fleet validation from the capacity probe (completed and not expired)
    /// and the commissioned verifier's parts, one per model the probe cannot reach; passing with
    /// neither is refused with CAPACITY_UNVERIFIED. A rejection with 0 takes what there is and
    /// records no figure where there is nothing.
    /// </summary>
    /// <remarks>This overload takes no verifier parts: the server maps them to engine records and calls the one below.</remarks>
    public Task<Application> RecordVerificationAsync(Actor actor, VerificationDecision decision, CancellationToken cancellationToken) =>
        decision.VerifierParts.Count > 0
            ? throw new ArgumentException("Verifier parts go through the overload that takes engine VerifierPart records.", nameof(decision))
            : RecordVerificationAsync(actor, decision.ApplicationId, decision.Pass, decision.VerifiedFp16Gflops, [], decision.Reasons, cancellationToken);

    /// <summary>Commissioned verification with the commissioned verifier's parts per model; see the overload above.</summary>
    public Task<Application> RecordVerificationAsync(Actor actor, long applicationId, bool pass, long verifiedFp16Gflops, IReadOnlyList<VerifierPart> verifierParts, string reasons,
        CancellationToken cancellationToken)
    {
        if (verifiedFp16Gflops < 0)
        {
            throw FilingRules.Invalid("verified_fp16_gflops cannot be negative");
        }

        VerificationParts.Check(catalog, verifierParts, verifiedFp16Gflops);
        // Parts are stored under their catalog keys, in one order, whatever order they came in.
        VerifierPart[] parts = [.. verifierParts.Select(p => p with { DeviceModel = catalog.Find(p.DeviceModel)!.Key }).OrderBy(p => p.DeviceModel, StringComparer.Ordinal)];
        return DecideOrProposeAsync(actor, applicationId, new StageCall(StageCall.Verification, pass, verifiedFp16Gflops, reasons, parts), cancellationToken);
    }

    /// <summary>Each application's latest recorded verification parts and its pending proposal's verifier parts, for the answers that show them.</summary>
    public async Task<IReadOnlyDictionary<long, VerificationFigures>> GetVerificationFiguresAsync(IEnumerable<long> applicationIds, CancellationToken cancellationToken)
    {
        long[] ids = [.. applicationIds.Distinct()];
        if (ids.Length == 0)
        {
            return new Dictionary<long, VerificationFigures>();
        }

        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await VerificationParts.ReadAsync(connection, ids, cancellationToken);
    }

    private StageRule VerificationRule(StageCall decision) =>
        async (connection, transaction, row, now) =>
        {
            long verified = decision.VerifiedFp16Gflops;
            string source = "the commissioned verifier's figure";
            var parts = new List<VerificationPart>();
            if (verified == 0)
            {
                FleetValidationEvidence? validation = await fleetValidations.CurrentAsync(connection, transaction, row.ProviderId, now);
                var origins = new List<string>();
                if (validation is { } current)
                {
                    VerificationParts.CheckNotCoveredByProbe(decision.VerifierParts, current.ValidationId,
                        await VerificationParts.ProbedModelsAsync(connection, transaction, row.ProviderId, current.InventoryVersion));
                    parts.Add(new VerificationPart(VerificationPartSource.Probe, current.ValidationId, "", 0, current.VerifiedFp16Gflops));
                    origins.Add(string.Create(CultureInfo.InvariantCulture,
                        $"fleet validation {current.ValidationId} (inventory version {current.InventoryVersion}: {current.Sampled} of {current.Nodes} nodes probed, {current.Failed} failed, pass rate at least {current.PassRateLowerBoundPpm / 10_000m:0.00}% at 95% confidence; valid until {current.ExpiresAt.ToOffset(ShanghaiTime.Offset):yyyy-MM-dd HH:mm} Asia/Shanghai)"));
                }
                else if (decision.Pass && decision.VerifierParts.Count == 0)
                {
                    throw new RegistryRefusedException(RegistryRefusalReason.CapacityUnverified,
                        $"verified_fp16_gflops 0 takes {row.ProviderId}'s fleet validation and the commissioned verifier's parts; it has no validation completed and unexpired and no parts were given; validate the fleet through CapacityService or record the commissioned verifier's figure");
                }

                foreach (VerifierPart part in decision.VerifierParts)
                {
                    var verifier = new VerificationPart(VerificationPartSource.CommissionedVerifier, 0, part.DeviceModel, part.Devices, part.DenseFp16Gflops);
                    parts.Add(verifier);
                    origins.Add(verifier.Origin);
                }

                verified = parts.Sum(p => p.Fp16Gflops);
                source = parts.Count == 1
                    ? origins[0]
                    : string.Join(" + ", parts.Zip(origins, (p, origin) => $"{FilingRules.Pflops(p.Fp16Gflops)} PFLOPS from {origin}"));
            }

            if (decision.Pass)
            {
                BatchRow batch = (await ReadBatchesAsync(connection, transaction, row.BatchId)).Single();
                FilingRules.CheckCapacity(batch, verified, "verified", $" ({source})");
            }

            if (verified > 0)
            {
                await connection.ExecuteAsync("UPDATE applications SET verified_fp16_gflops = @v WHERE application_id = @id",
                    new { v = verified, id = row.ApplicationId }, transaction);
            }

            if (parts.Count > 0)
            {
                // The stage record the workflow adds next takes this number (the application is locked).
                int stageNo = await connection.ExecuteScalarAsync<int>(
                    "SELECT coalesce(max(stage_no), 0) + 1 FROM application_stages WHERE application_id = @id", new { id = row.ApplicationId }, transaction);
                await VerificationParts.WriteAsync(connection, transaction, row.ProviderId, row.ApplicationId, stageNo, parts);
            }

            string figure = verified > 0 ? $"verified {FilingRules.Pflops(verified)} PFLOPS FP16 from {source}" : "no verified figure";
            return decision.Pass
                ? (ApplicationState.AwaitingPublicNotice, "passed", Join(figure, decision.Reasons))
                : (ApplicationState.Rejected, "rejected", Join(figure, RequireReasons(decision.Reasons, "a rejection needs its reasons")));
        };

    /// <summary>Opens consultation and public notice for the batch's number of days (or rejects after consultation).</summary>
    public Task<Application> OpenPublicNoticeAsync(Actor actor, StageDecision decision, CancellationToken cancellationToken) =>
        DecideStageAsync(actor, decision.ApplicationId, "public_notice", ApplicationState.AwaitingPublicNotice, "public_notice", async (connection, transaction, row, now) =>
        {
            if (!decision.Pass)
            {
                return (ApplicationState.Rejected, "rejected", RequireReasons(decision.Reasons, "a rejection needs its reasons"));
            }

            int days = await connection.ExecuteScalarAsync<int>("SELECT public_notice_days FROM admission_batches WHERE batch_id = @b", new { b = row.BatchId }, transaction);
            DateTimeOffset ends = now.AddDays(days);
            await connection.ExecuteAsync("UPDATE applications SET notice_ends_at = @ends WHERE application_id = @id", new { ends = ends.UtcDateTime, id = row.ApplicationId }, transaction);
            return (ApplicationState.InPublicNotice, "opened", Join($"public notice for {days} day(s), until {ends.ToOffset(ShanghaiTime.Offset):yyyy-MM-dd HH:mm} Asia/Shanghai", decision.Reasons));
        }, cancellationToken);

    public async Task<Application> RecordObjectionAsync(Actor actor, RecordObjectionRequest request, CancellationToken cancellationToken)
    {
        string objector = request.Objector.Trim();
        string content = request.Content.Trim();
        if (objector.Length is 0 or > 200 || content.Length is 0 or > ReasonsMax)
        {
            throw FilingRules.Invalid($"an objection needs the objector (1 to 200 characters) and its content (1 to {ReasonsMax})");
        }

        return await InTransactionAsync(async (connection, transaction) =>
        {
            ApplicationRow row = await LockApplicationAsync(connection, transaction, request.ApplicationId);
            DateTimeOffset now = time.GetUtcNow();
            // An objection raised during the notice may reach the operator after the period ends;
            // it is recorded until the decision, which must then answer it.
            if (row.State != ApplicationState.InPublicNotice)
            {
                throw new RegistryRefusedException(RegistryRefusalReason.WrongStage, $"objections are recorded between public notice and the decision; application {row.ApplicationId} is {Names.Of(row.State)}");
            }

            int stageNo = await AddStageAsync(connection, transaction, row.ProviderId, row.ApplicationId, "objection", actor, now, "recorded", $"{objector}: {content}");
            await RecordAsync(connection, transaction, actor, now, row.ProviderId, "objection", $"{row.ApplicationId}/{stageNo}", "record", null,
                await RowJsonAsync(connection, transaction, "application_stages", "application_id = @id AND stage_no = @stageNo", new { id = row.ApplicationId, stageNo }));
            return (await ReadApplicationAsync(connection, transaction, row.ApplicationId, details: true))!;
        }, cancellationToken);
    }

    /// <summary>The admission decision, once public notice has ended. Admitting over objections needs reasons.</summary>
    public Task<Application> DecideAdmissionAsync(Actor actor, StageDecision decision, CancellationToken cancellationToken) =>
        DecideOrProposeAsync(actor, decision.ApplicationId, new StageCall(StageCall.Decision, decision.Pass, 0, decision.Reasons), cancellationToken);

    private StageRule DecisionRule(StageCall decision) =>
        async (connection, transaction, row, now) =>
        {
            if (row.NoticeEndsAt is { } ends && now < ends)
            {
                throw new RegistryRefusedException(RegistryRefusalReason.NoticePeriodRunning,
                    $"public notice of application {row.ApplicationId} runs until {ends.ToOffset(ShanghaiTime.Offset):yyyy-MM-dd HH:mm} Asia/Shanghai");
            }

            if (!decision.Pass)
            {
                return (ApplicationState.Rejected, "rejected", RequireReasons(decision.Reasons, "a rejection needs its reasons"));
            }

            // Eligibility may have changed since filing: a listing, a lapsed licence, a voucher application.
            await CheckStillEligibleAsync(connection, transaction, row, now);
            int objections = await connection.ExecuteScalarAsync<int>(
                "SELECT count(*) FROM application_stages WHERE application_id = @id AND stage = 'objection'", new { id = row.ApplicationId }, transaction);
            string reasons = objections > 0
                ? RequireReasons(decision.Reasons, $"admitting over {objections} recorded objection(s) needs reasons that answer them")
                : decision.Reasons.Trim();
            await connection.ExecuteAsync("UPDATE applications SET decided_at = @now WHERE application_id = @id", new { now = now.UtcDateTime, id = row.ApplicationId }, transaction);
            return (ApplicationState.AwaitingAdmissionNotice, "passed", reasons);
        };

    /// <summary>Issues the admission notice: the service item is admitted from the decision to the batch's validity end.</summary>
    public async Task<Application> IssueAdmissionNoticeAsync(Actor actor, IssueAdmissionNoticeRequest request, CancellationToken cancellationToken)
    {
        string number = request.NoticeNumber.Trim();
        if (number.Length is 0 or > 64)
        {
            throw FilingRules.Invalid("notice_number must be 1 to 64 characters");
        }

        return await InTransactionAsync(async (connection, transaction) =>
        {
            // The organisation is locked before the application, in the order every other change
            // that takes both locks uses, so that two such changes cannot deadlock.
            string? provider = await connection.ExecuteScalarAsync<string?>("SELECT provider_id FROM applications WHERE application_id = @id", new { id = request.ApplicationId }, transaction);
            if (provider is not null)
            {
                await LockOrganisationAsync(connection, transaction, provider);
            }

            ApplicationRow row = await LockApplicationAsync(connection, transaction, request.ApplicationId);
            DateTimeOffset now = time.GetUtcNow();
            if (row.State != ApplicationState.AwaitingAdmissionNotice)
            {
                throw await StageConflictAsync(connection, transaction, row, "admission_notice", "the admission notice follows the admission decision");
            }
            if (await connection.ExecuteScalarAsync<bool>("SELECT EXISTS (SELECT 1 FROM applications WHERE notice_number = @number)", new { number }, transaction))
            {
                throw new RegistryRefusedException(RegistryRefusalReason.NoticeNumberTaken, $"admission notice number {number} is already used");
            }

            BatchRow batch = (await ReadBatchesAsync(connection, transaction, row.BatchId)).Single();
            DateTimeOffset validFrom = row.DecidedAt ?? now;
            long? renews = await connection.ExecuteScalarAsync<long?>("SELECT renews_application_id FROM applications WHERE application_id = @id", new { id = row.ApplicationId }, transaction);
            ServiceItemRow? renewed = null;
            if (renews is { } renewedId)
            {
                renewed = (await ReadServiceItemsAsync(connection, transaction, row.ProviderId, now)).Single(i => i.ApplicationId == renewedId);
                if (renewed.EndKind is not null)
                {
                    // Withdrawal and revocation reject a renewal in progress; this guards the rule.
                    throw new RegistryRefusedException(RegistryRefusalReason.RenewalInvalid,
                        $"the admission of application {renewedId} was {renewed.EndKind}; a renewal does not revive it");
                }

                // Admitted before the old admission ends, the renewal takes over at that end, so
                // the item runs without a gap; admitted later, it starts at its decision.
                if (validFrom < renewed.ValidityEndsAt)
                {
                    validFrom = renewed.ValidityEndsAt;
                }
            }

            if (validFrom >= batch.ValidityEndsAt)
            {
                throw new RegistryRefusedException(RegistryRefusalReason.PeriodInvalid, $"batch {batch.BatchId}'s validity ended at {batch.ValidityEndsAt:O}; nothing can be admitted under it");
            }

            string before = (await ApplicationJsonAsync(connection, transaction, row.ApplicationId))!;
            await connection.ExecuteAsync("UPDATE applications SET state = 'admitted', notice_number = @number WHERE application_id = @id", new { number, id = row.ApplicationId }, transaction);
            await connection.ExecuteAsync("""
                INSERT INTO service_items (provider_id, service_item, application_id, notice_number, valid_from, validity_ends_at, renews_application_id)
                VALUES (@code, @item, @id, @number, @from, @ends, @renews)
                """, new { code = row.ProviderId, item = row.ServiceItem, id = row.ApplicationId, number, from = validFrom.UtcDateTime, ends = batch.ValidityEndsAt.UtcDateTime, renews }, transaction);
            if (renewed?.SuspendedAt is not null)
            {
                // A renewal does not lift a suspension: only a reinstatement does.
                await connection.ExecuteAsync("""
                    INSERT INTO service_item_suspensions (provider_id, service_item, application_id, suspended_at, reason) VALUES (@code, @item, @id, @from, @reason)
                    """, new { code = row.ProviderId, item = row.ServiceItem, id = row.ApplicationId, from = validFrom.UtcDateTime, reason = $"carried over from application {renewed.ApplicationId}: {renewed.SuspensionReason}" }, transaction);
            }

            int version = await connection.ExecuteScalarAsync<int>("""
                INSERT INTO fee_schedules (provider_id, service_item, version, effective_from, filed_at, lines)
                SELECT @code, @item, coalesce((SELECT max(version) FROM fee_schedules WHERE provider_id = @code AND service_item = @item), 0) + 1, @from, filed_at, fee_lines
                FROM applications WHERE application_id = @id
                RETURNING version
                """, new { code = row.ProviderId, item = row.ServiceItem, id = row.ApplicationId, from = validFrom.UtcDateTime }, transaction);
            await RecordAsync(connection, transaction, actor, now, row.ProviderId, "fee_schedule", $"{row.ProviderId}/{row.ServiceItem}/{version}", "file", null,
                await RowJsonAsync(connection, transaction, "fee_schedules", "provider_id = @code AND service_item = @item AND version = @version", new { code = row.ProviderId, item = row.ServiceItem, version }));
            await BumpEpochAsync(connection, transaction, row.ProviderId);
            await AddStageAsync(connection, transaction, row.ProviderId, row.ApplicationId, "admission_notice", actor, now, "passed",
                $"notice {number}; {(renewed is null ? "" : $"renews application {renewed.ApplicationId}{(validFrom == renewed.ValidityEndsAt ? " without a gap" : $", whose admission ended at {renewed.ValidityEndsAt.ToOffset(ShanghaiTime.Offset):yyyy-MM-dd HH:mm}")}; ")}admitted from {validFrom.ToOffset(ShanghaiTime.Offset):yyyy-MM-dd HH:mm} until {batch.ValidityEndsAt.ToOffset(ShanghaiTime.Offset):yyyy-MM-dd HH:mm} Asia/Shanghai; fee schedule version {version}");
            await RecordAsync(connection, transaction, actor, now, row.ProviderId, "application", Key(row.ApplicationId), "admission_notice", before, await ApplicationJsonAsync(connection, transaction, row.ApplicationId));
            await RecordAsync(connection, transaction, actor, now, row.ProviderId, "service_item", $"{row.ProviderId}/{row.ServiceItem}", renewed is null ? "admit" : "renew", null,
                await ServiceItemJsonAsync(connection, transaction, row.ProviderId, row.ApplicationId));
            return (await ReadApplicationAsync(connection, transaction, row.ApplicationId, details: true))!;
        }, cancellationToken);
    }

    public async Task<Application?> GetApplicationAsync(long applicationId, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await ReadApplicationAsync(connection, null, applicationId, details: true);
    }

    public async Task<IReadOnlyList<Application>> ListApplicationsAsync(string? creditCode, ApplicationState state, int limit, CancellationToken cancellationToken)
    {
        limit = limit == 0 ? ListLimitDefault : Math.Clamp(limit, 1, ListLimitMax);
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var ids = await connection.QueryAsync<long>("""
            SELECT application_id FROM applications
            WHERE (@code::text IS NULL OR provider_id = @code) AND (@state::text IS NULL OR state = @state)
            ORDER BY application_id DESC LIMIT @limit
            """, new { code = NullIfEmpty(creditCode), state = state == ApplicationState.Unspecified ? null : Names.Of(state), limit });
        var applications = new List<Application>();
        foreach (long id in ids)
        {
            applications.Add((await ReadApplicationAsync(connection, null, id, details: false))!);
        }

        return applications;
    }

    // ---------------------------------------------------------------- admitted service items

    public async Task<FeeSchedule> FileFeeScheduleAsync(Actor actor, FileFeeScheduleRequest request, CancellationToken cancellationToken)
    {
        string code = CheckCreditCode(request.CreditCode);
        if (actor.Role != Role.Provider || actor.Subject != code)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.OtherProvider, $"{code}'s fee schedule is filed by {code} itself");
        }

        Names.CheckServiceItem(request.ServiceItem);
        FilingRules.CheckFees(request.Lines, catalog);
        CheckInstant("effective_from_unix_ms", request.EffectiveFromUnixMs, allowZero: true);
        return await InTransactionAsync(async (connection, transaction) =>
        {
            await LockOrganisationAsync(connection, transaction, code);
            DateTimeOffset now = time.GetUtcNow();
            // Prices change from a day not yet begun, so that no day that may have been settled
            // is ever priced again.
            DateTimeOffset tomorrow = ShanghaiTime.StartOf(ShanghaiTime.DateOf(now).AddDays(1));
            DateTimeOffset effective = request.EffectiveFromUnixMs == 0 ? tomorrow : DateTimeOffset.FromUnixTimeMilliseconds(request.EffectiveFromUnixMs);
            if (effective < tomorrow)
            {
                throw new RegistryRefusedException(RegistryRefusalReason.FeeScheduleInvalid,
                    $"a new fee schedule takes effect from the start of a day that has not begun: {tomorrow.ToOffset(ShanghaiTime.Offset):yyyy-MM-dd HH:mm} Asia/Shanghai or later");
            }
            ServiceItemRow item = await CurrentItemAsync(connection, transaction, code, request.ServiceItem, now)
                ?? throw new RegistryRefusedException(RegistryRefusalReason.ServiceItemUnknown, $"{code} holds no admitted service item '{request.ServiceItem}'");
            if (item.Status(now) is ServiceItemStatus.Withdrawn or ServiceItemStatus.Revoked or ServiceItemStatus.Expired)
            {
                throw new RegistryRefusedException(RegistryRefusalReason.StatusChangeInvalid, $"service item '{request.ServiceItem}' is {item.Status(now)}; its fees can no longer change");
            }

            var latest = await connection.QuerySingleAsync<(int Version, DateTime EffectiveFrom)>("""
                SELECT version, effective_from FROM fee_schedules WHERE provider_id = @code AND service_item = @item ORDER BY version DESC LIMIT 1
                """, new { code, item = request.ServiceItem }, transaction);
            if (effective.UtcDateTime < latest.EffectiveFrom)
            {
                throw new RegistryRefusedException(RegistryRefusalReason.FeeScheduleInvalid,
                    $"a new fee schedule takes effect no earlier than version {latest.Version} ({latest.EffectiveFrom:O})");
            }

            int version = latest.Version + 1;
            await connection.ExecuteAsync("""
                INSERT INTO fee_schedules (provider_id, service_item, version, effective_from, filed_at, lines) VALUES (@code, @item, @version, @effective, @now, @lines::jsonb)
                """, new { code, item = request.ServiceItem, version, effective = effective.UtcDateTime, now = now.UtcDateTime, lines = FeesJson(request.Lines) }, transaction);
            await RecordAsync(connection, transaction, actor, now, code, "fee_schedule", $"{code}/{request.ServiceItem}/{version}", "file", null,
                await RowJsonAsync(connection, transaction, "fee_schedules", "provider_id = @code AND service_item = @item AND version = @version", new { code, item = request.ServiceItem, version }));
            return new FeeSchedule
            {
                CreditCode = code,
                ServiceItem = request.ServiceItem,
                Version = (uint)version,
                EffectiveFromUnixMs = effective.ToUnixTimeMilliseconds(),
                Lines = { request.Lines },
            };
        }, cancellationToken);
    }

    public async Task<ServiceItem> ChangeServiceItemStatusAsync(Actor actor, ChangeServiceItemStatusRequest request, CancellationToken cancellationToken)
    {
        string code = CheckCreditCode(request.CreditCode);
        Names.CheckServiceItem(request.ServiceItem);
        string reasons = request.Action is ServiceItemAction.Suspend or ServiceItemAction.Revoke
            ? RequireReasons(request.Reasons, $"{request.Action.ToString().ToLowerInvariant()} needs its reasons")
            : request.Reasons.Trim();
        if (request.Action == ServiceItemAction.Unspecified || !Enum.IsDefined(request.Action))
        {
            throw FilingRules.Invalid("action must be SUSPEND, REINSTATE, WITHDRAW or REVOKE");
        }

        return await InTransactionAsync(async (connection, transaction) =>
        {
            await LockOrganisationAsync(connection, transaction, code);
            DateTimeOffset now = time.GetUtcNow();
            IReadOnlyList<ServiceItemRow> admissions = (await ReadServiceItemsAsync(connection, transaction, code, now)).Where(i => i.Item == request.ServiceItem).ToList();
            ServiceItemRow item = InForce(admissions, now)
                ?? throw new RegistryRefusedException(RegistryRefusalReason.ServiceItemUnknown, $"{code} holds no admitted service item '{request.ServiceItem}'");
            // A renewal admitted but not yet started follows the admission in force: it is
            // suspended, reinstated and ended with it, so that no status change is escaped by
            // waiting for the renewal to take over, and a renewal never revives an admission
            // that was withdrawn or revoked.
            ServiceItemRow? waiting = admissions.FirstOrDefault(i => i.ValidFrom > now && i.EndKind is null);
            long[] ids = waiting is null ? [item.ApplicationId] : [item.ApplicationId, waiting.ApplicationId];
            ServiceItemStatus status = item.Status(now);
            string before = (await ServiceItemJsonAsync(connection, transaction, code, item.ApplicationId))!;
            string? waitingBefore = waiting is null ? null : await ServiceItemJsonAsync(connection, transaction, code, waiting.ApplicationId);
            switch (request.Action, status)
            {
                case (ServiceItemAction.Suspend, ServiceItemStatus.Active):
                    await connection.ExecuteAsync("""
                        INSERT INTO service_item_suspensions (provider_id, service_item, application_id, suspended_at, reason) VALUES (@code, @item, @id, @now, @reasons)
                        """, new { code, item = request.ServiceItem, id = item.ApplicationId, now = now.UtcDateTime, reasons }, transaction);
                    if (waiting is not null)
                    {
                        // A renewal's suspension starts with it. Suspended, reinstated and
                        // suspended again before it starts, it reopens the same (empty) row.
                        await connection.ExecuteAsync("""
                            INSERT INTO service_item_suspensions (provider_id, service_item, application_id, suspended_at, reason) VALUES (@code, @item, @id, @from, @reasons)
                            ON CONFLICT (provider_id, service_item, application_id, suspended_at) DO UPDATE SET reinstated_at = NULL, reason = excluded.reason
                            """, new { code, item = request.ServiceItem, id = waiting.ApplicationId, from = waiting.ValidFrom.UtcDateTime, reasons }, transaction);
                    }

                    break;
                case (ServiceItemAction.Reinstate, ServiceItemStatus.Suspended):
                    await connection.ExecuteAsync("""
                        UPDATE service_item_suspensions SET reinstated_at = greatest(@now, suspended_at)
                        WHERE provider_id = @code AND service_item = @item AND application_id = ANY(@ids) AND reinstated_at IS NULL
                        """, new { code, item = request.ServiceItem, ids, now = now.UtcDateTime }, transaction);
                    break;
                case (ServiceItemAction.Withdraw or ServiceItemAction.Revoke, ServiceItemStatus.Active or ServiceItemStatus.Suspended):
                    string kind = request.Action == ServiceItemAction.Withdraw ? "withdrawn" : "revoked";
                    await connection.ExecuteAsync("""
                        UPDATE service_items SET ended_at = @now, end_kind = @kind, end_reason = @reasons
                        WHERE provider_id = @code AND service_item = @item AND application_id = ANY(@ids)
                        """, new { code, item = request.ServiceItem, ids, now = now.UtcDateTime, kind, reasons }, transaction);
                    await connection.ExecuteAsync("""
                        UPDATE service_item_suspensions SET reinstated_at = greatest(@now, suspended_at)
                        WHERE provider_id = @code AND service_item = @item AND application_id = ANY(@ids) AND reinstated_at IS NULL
                        """, new { code, item = request.ServiceItem, ids, now = now.UtcDateTime }, transaction);
                    await RejectRenewalsInProgressAsync(connection, transaction, actor, code, request.ServiceItem, kind, now);
                    break;
                default:
                    throw new RegistryRefusedException(RegistryRefusalReason.StatusChangeInvalid,
                        $"service item '{request.ServiceItem}' of {code} is {status.ToString().ToLowerInvariant()}; it cannot be {Past(request.Action)}");
            }

            if (waiting is not null)
            {
                await RecordAsync(connection, transaction, actor, now, code, "service_item", $"{code}/{request.ServiceItem}", request.Action.ToString().ToLowerInvariant(), waitingBefore,
                    await ServiceItemJsonAsync(connection, transaction, code, waiting.ApplicationId));
            }

            await BumpEpochAsync(connection, transaction, code);
            await RecordAsync(connection, transaction, actor, now, code, "service_item", $"{code}/{request.ServiceItem}", request.Action.ToString().ToLowerInvariant(), before,
                await ServiceItemJsonAsync(connection, transaction, code, item.ApplicationId));
            return (await ReadServiceItemsAsync(connection, transaction, code, now)).First(i => i.Item == request.ServiceItem && i.ApplicationId == item.ApplicationId).ToMessage(now);
        }, cancellationToken);
    }

    /// <summary>
    /// False materials found: pending applications are rejected, admitted items revoked, and the
    /// organisation goes on the integrity-anomaly list (科研诚信异常名录) from today.
    /// </summary>
    public async Task<Organisation> RecordFalseMaterialsAsync(Actor actor, RecordFalseMaterialsRequest request, CancellationToken cancellationToken)
    {
        string code = CheckCreditCode(request.CreditCode);
        string reasons = RequireReasons(request.Reasons, "recording false materials needs what was found false");
        return await InTransactionAsync(async (connection, transaction) =>
        {
            await RequireOrganisationAsync(connection, transaction, code, lockRow: true);
            DateTimeOffset now = time.GetUtcNow();
            var pending = (await connection.QueryAsync<long>("""
                SELECT application_id FROM applications WHERE provider_id = @code AND state NOT IN ('admitted', 'rejected') FOR UPDATE
                """, new { code }, transaction)).ToList();
            foreach (long id in pending)
            {
                string before = (await ApplicationJsonAsync(connection, transaction, id))!;
                await connection.ExecuteAsync("UPDATE applications SET state = 'rejected' WHERE application_id = @id", new { id }, transaction);
                await DismissOvertakenAsync(connection, transaction, actor, id, "false materials: " + reasons, now);
                await AddStageAsync(connection, transaction, code, id, "false_materials", actor, now, "rejected", reasons);
                await RecordAsync(connection, transaction, actor, now, code, "application", Key(id), "false_materials", before, await ApplicationJsonAsync(connection, transaction, id));
            }

            foreach (ServiceItemRow item in await ReadServiceItemsAsync(connection, transaction, code, now))
            {
                if (item.Status(now) is ServiceItemStatus.Active or ServiceItemStatus.Suspended)
                {
                    string before = (await ServiceItemJsonAsync(connection, transaction, code, item.ApplicationId))!;
                    await connection.ExecuteAsync("""
                        UPDATE service_items SET ended_at = @now, end_kind = 'revoked', end_reason = @reason WHERE provider_id = @code AND application_id = @id;
                        UPDATE service_item_suspensions SET reinstated_at = @now WHERE provider_id = @code AND application_id = @id AND reinstated_at IS NULL;
                        """, new { now = now.UtcDateTime, reason = "false materials: " + reasons, code, id = item.ApplicationId }, transaction);
                    await RecordAsync(connection, transaction, actor, now, code, "service_item", $"{code}/{item.Item}", "revoke", before,
                        await ServiceItemJsonAsync(connection, transaction, code, item.ApplicationId));
                }
            }

            long listing = await connection.ExecuteScalarAsync<long>("""
                INSERT INTO integrity_listings (provider_id, list_name, listed_from, reason) VALUES (@code, 'integrity_anomaly', @today, @reason) RETURNING listing_id
                """, new { code, today = ShanghaiTime.DateOf(now), reason = "false materials: " + reasons }, transaction);
            await RecordAsync(connection, transaction, actor, now, code, "listing", $"{code}/{listing}", "false_materials", null,
                await RowJsonAsync(connection, transaction, "integrity_listings", "provider_id = @code AND listing_id = @listing", new { code, listing }));
            await BumpEpochAsync(connection, transaction, code);
            return (await ReadOrganisationAsync(connection, transaction, code, now))!;
        }, cancellationToken);
    }

    public async Task<Organisation?> GetOrganisationAsync(string creditCode, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await ReadOrganisationAsync(connection, null, creditCode, time.GetUtcNow());
    }

    public async Task<IReadOnlyList<HistoryEntry>> GetHistoryAsync(string? creditCode, int limit, CancellationToken cancellationToken)
    {
        limit = limit == 0 ? ListLimitDefault : Math.Clamp(limit, 1, ListLimitMax);
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var rows = await connection.QueryAsync<(long Id, string Actor, string Role, long AtMs, string Entity, string Key, string Action, string? Before, string? After)>("""
            SELECT change_id, actor, role, floor(extract(epoch FROM at) * 1000)::bigint, entity, entity_key, action, before::text, after::text
            FROM registry_history WHERE (@code::text IS NULL OR provider_id = @code) ORDER BY change_id DESC LIMIT @limit
            """, new { code = NullIfEmpty(creditCode), limit });
        return rows.Select(r => new HistoryEntry
        {
            ChangeId = r.Id,
            Actor = r.Actor,
            Role = r.Role,
            AtUnixMs = r.AtMs,
            Entity = r.Entity,
            EntityKey = r.Key,
            Action = r.Action,
            BeforeJson = r.Before ?? "",
            AfterJson = r.After ?? "",
        }).ToList();
    }

    // ---------------------------------------------------------------- workflow machinery

    private delegate Task<(ApplicationState Next, string Outcome, string Reasons)> StageRule(NpgsqlConnection connection, NpgsqlTransaction transaction, ApplicationRow row, DateTimeOffset now);

    /// <summary>
    /// Decides one stage of one application. The application row is locked first, so of two
    /// operators deciding at once the second sees the first's outcome and is refused with
    /// ALREADY_DECIDED, naming who decided and when.
    /// </summary>
    private Task<Application> DecideStageAsync(Actor actor, long applicationId, string stage, ApplicationState expected, string action, StageRule rule, CancellationToken cancellationToken) =>
        InTransactionAsync(async (connection, transaction) =>
        {
            ApplicationRow row = await LockApplicationAsync(connection, transaction, applicationId);
            await ExpectStateAsync(connection, transaction, row, stage, expected);
            return await ApplyStageAsync(connection, transaction, actor, row, stage, action, rule, time.GetUtcNow());
        }, cancellationToken);

    private static async Task ExpectStateAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, ApplicationRow row, string stage, ApplicationState expected)
    {
        if (row.State != expected)
        {
            throw await StageConflictAsync(connection, transaction, row, stage, $"{stage.Replace('_', ' ')} acts on an application that is {Names.Of(expected)}");
        }
    }

    /// <summary>Runs a stage's rule on the locked application and records its outcome, the stage and the history entry.</summary>
    private async Task<Application> ApplyStageAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, Actor actor, ApplicationRow row, string stage, string action, StageRule rule, DateTimeOffset now)
    {
        string before = (await ApplicationJsonAsync(connection, transaction, row.ApplicationId))!;
        var (next, outcome, reasons) = await rule(connection, transaction, row, now);
        await connection.ExecuteAsync("UPDATE applications SET state = @state WHERE application_id = @id", new { state = Names.Of(next), id = row.ApplicationId }, transaction);
        await AddStageAsync(connection, transaction, row.ProviderId, row.ApplicationId, stage, actor, now, outcome, reasons);
        await RecordAsync(connection, transaction, actor, now, row.ProviderId, "application", Key(row.ApplicationId), action, before, await ApplicationJsonAsync(connection, transaction, row.ApplicationId));
        return (await ReadApplicationAsync(connection, transaction, row.ApplicationId, details: true))!;
    }

    private static Task CheckStillEligibleAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, ApplicationRow row, DateTimeOffset now) =>
        CheckStillEligibleAsync(connection, transaction, row.ProviderId, row.BatchId, now);

    private static async Task CheckStillEligibleAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string providerId, string batchId, DateTimeOffset now)
    {
        OrganisationRow organisation = await RequireOrganisationAsync(connection, transaction, providerId, lockRow: false);
        BatchRow batch = (await ReadBatchesAsync(connection, transaction, batchId)).Single();
        FilingRules.CheckEligibility(new FilingContext(
            organisation,
            batch,
            await ReadLicencesAsync(connection, transaction, providerId),
            await ReadListingsAsync(connection, transaction, providerId),
            await connection.ExecuteScalarAsync<string?>("SELECT status FROM voucher_holders WHERE holder_code = @code AND status <> 'left'", new { code = providerId }, transaction),
            now));
    }

    /// <summary>ALREADY_DECIDED when the stage was decided by someone already, else WRONG_STAGE.</summary>
    private static async Task<RegistryRefusedException> StageConflictAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, ApplicationRow row, string stage, string rule)
    {
        var decided = await connection.QueryFirstOrDefaultAsync<(string Actor, DateTime At, string Outcome)?>("""
            SELECT actor, at, outcome FROM application_stages WHERE application_id = @id AND stage = @stage ORDER BY stage_no DESC LIMIT 1
            """, new { id = row.ApplicationId, stage }, transaction);
        if (decided is { } d)
        {
            return new RegistryRefusedException(RegistryRefusalReason.AlreadyDecided,
                $"{stage.Replace('_', ' ')} of application {row.ApplicationId} was already decided by {d.Actor} at {new DateTimeOffset(d.At, TimeSpan.Zero).ToOffset(ShanghaiTime.Offset):yyyy-MM-dd HH:mm:ss} ({d.Outcome}); it is now {Names.Of(row.State)}",
                new Dictionary<string, string> { ["actor"] = d.Actor, ["outcome"] = d.Outcome, ["state"] = Names.Of(row.State) });
        }

        return new RegistryRefusedException(RegistryRefusalReason.WrongStage, $"{rule}; application {row.ApplicationId} is {Names.Of(row.State)}",
            new Dictionary<string, string> { ["state"] = Names.Of(row.State) });
    }

    private async Task<T> InTransactionAsync<T>(Func<NpgsqlConnection, NpgsqlTransaction, Task<T>> work, CancellationToken cancellationToken)
    {
        try
        {
            return await dataSource.InTransactionAsync(work, cancellationToken);
        }
        catch (PostgresException e) when (e.SqlState == PostgresErrorCodes.UniqueViolation && e.ConstraintName == "applications_one_pending_per_item")
        {
            throw new RegistryRefusedException(RegistryRefusalReason.ServiceItemTaken, "another application for this service item was filed at the same moment");
        }
        catch (PostgresException e) when (e.SqlState == PostgresErrorCodes.UniqueViolation && e.ConstraintName == "applications_notice_number_key")
        {
            throw new RegistryRefusedException(RegistryRefusalReason.NoticeNumberTaken, "the admission notice number was used at the same moment");
        }
    }

    private async Task<long> CheckMeteringProofAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code, string stream, CancellationToken cancellationToken)
    {
        long records = await connection.ExecuteScalarAsync<long>(
            "SELECT coalesce((SELECT committed_sequence FROM ingest_streams WHERE provider_id = @code AND stream_id = @stream), 0)", new { code, stream }, transaction);
        if (records == 0)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.MeteringProofMissing,
                $"metering-log proof stream '{stream}' of {code} holds no records; stream a test log to it through ingest first");
        }

        ProofChainEvidence verification = await proofChains.VerifyStreamAsync(code, stream, cancellationToken);
        byte[] head = await connection.ExecuteScalarAsync<byte[]>(
            "SELECT chain_head FROM ingest_streams WHERE provider_id = @code AND stream_id = @stream", new { code, stream }, transaction) ?? [];
        if (verification.Intact && ((long)verification.RecordsChecked != records || !verification.ComputedHead.AsSpan().SequenceEqual(head)))
        {
            throw new RegistryRefusedException(RegistryRefusalReason.MeteringProofBroken,
                $"metering-log proof stream '{stream}' holds {verification.RecordsChecked} verifiable records, but its head says {records}: the stored log is incomplete",
                new Dictionary<string, string> { ["sequence"] = (verification.RecordsChecked + 1).ToString(CultureInfo.InvariantCulture) });
        }

        if (!verification.Intact)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.MeteringProofBroken,
                $"metering-log proof stream '{stream}' does not verify: {verification.Evidence}",
                new Dictionary<string, string> { ["sequence"] = verification.FirstBrokenSequence!.Value.ToString(CultureInfo.InvariantCulture) });
        }

        return records;
    }

    /// <summary>Appends a stage record and returns its number.</summary>
    private static Task<int> AddStageAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code, long id, string stage, Actor actor, DateTimeOffset now, string outcome, string reasons) =>
        connection.ExecuteScalarAsync<int>("""
            INSERT INTO application_stages (provider_id, application_id, stage_no, stage, actor, at, outcome, reasons)
            SELECT @code, @id, coalesce(max(stage_no), 0) + 1, @stage, @actor, @now, @outcome, @reasons FROM application_stages WHERE application_id = @id
            RETURNING stage_no
            """, new { code, id, stage, actor = actor.Subject, now = now.UtcDateTime, outcome, reasons }, transaction);

    private static Task RecordAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, Actor actor, DateTimeOffset now, string? providerId,
        string entity, string key, string action, string? before, string? after) =>
        connection.ExecuteAsync("""
            INSERT INTO registry_history (actor, role, at, provider_id, entity, entity_key, action, before, after)
            VALUES (@actor, @role, @now, @providerId, @entity, @key, @action, @before::jsonb, @after::jsonb)
            """, new { actor = actor.Subject, role = actor.RoleName, now = now.UtcDateTime, providerId, entity, key, action, before, after }, transaction);

    private static Task<string?> RowJsonAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string table, string where, object parameters, bool lockRow = false) =>
        connection.ExecuteScalarAsync<string?>($"SELECT to_jsonb(t)::text FROM {table} t WHERE {where}{(lockRow ? " FOR UPDATE" : "")}", parameters, transaction);

    /// <summary>A service item as history shows it: its row, with the open suspension (or null) beside it.</summary>
    private static Task<string?> ServiceItemJsonAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code, long applicationId) =>
        connection.ExecuteScalarAsync<string?>("""
            SELECT (to_jsonb(s) || jsonb_build_object('open_suspension',
                (SELECT to_jsonb(p) FROM service_item_suspensions p
                 WHERE p.provider_id = s.provider_id AND p.application_id = s.application_id AND p.reinstated_at IS NULL)))::text
            FROM service_items s WHERE s.provider_id = @code AND s.application_id = @applicationId
            """, new { code, applicationId }, transaction);

    /// <summary>An application as history shows it: its row, with the parts of its latest verification where it has any.</summary>
    private static Task<string?> ApplicationJsonAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, long id) =>
        connection.ExecuteScalarAsync<string?>("""
            SELECT ((to_jsonb(a) - 'fee_lines' - 'service_content' - 'service_standards') || coalesce((
                SELECT jsonb_build_object('verification_parts', jsonb_agg(jsonb_build_object(
                           'source', CASE p.source WHEN 'probe' THEN 'probe' ELSE 'commissioned_verifier' END,
                           'validation_id', p.validation_id, 'device_model', p.device_model, 'devices', p.devices, 'fp16_gflops', p.fp16_gflops) ORDER BY p.part_no))
                FROM verification_parts p
                WHERE p.application_id = a.application_id
                  AND p.stage_no = (SELECT max(s.stage_no) FROM application_stages s WHERE s.application_id = a.application_id AND s.stage = 'verification')
                HAVING count(*) > 0), '{}'::jsonb))::text
            FROM applications a WHERE application_id = @id
            """, new { id }, transaction);

    private static Task BumpEpochAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code) =>
        connection.ExecuteAsync("UPDATE organisations SET admission_epoch = admission_epoch + 1 WHERE provider_id = @code", new { code }, transaction);

    private static async Task LockOrganisationAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code) =>
        await RequireOrganisationAsync(connection, transaction, code, lockRow: true);

    private static async Task<OrganisationRow> RequireOrganisationAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string code, bool lockRow)
    {
        var row = await connection.QueryFirstOrDefaultAsync<(string Code, string Name, string LegalForm, string District, DateTime Established, long Epoch, DateTime RegisteredAt)?>($"""
            SELECT provider_id, name, legal_form, district, established_on, admission_epoch, registered_at FROM organisations WHERE provider_id = @code{(lockRow ? " FOR UPDATE" : "")}
            """, new { code }, transaction);
        return row is { } r
            ? new OrganisationRow(r.Code, r.Name, r.LegalForm, r.District, DateOnly.FromDateTime(r.Established), r.Epoch, new DateTimeOffset(r.RegisteredAt, TimeSpan.Zero))
            : throw new RegistryRefusedException(RegistryRefusalReason.OrganisationUnknown, $"no organisation {code} is registered");
    }

    private static async Task<IReadOnlyList<LicenceRow>> ReadLicencesAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string code) =>
        (await connection.QueryAsync<(string Number, string Issuer, DateTime From, DateTime Until)>(
            "SELECT licence_number, issuer, valid_from, valid_until FROM licences WHERE provider_id = @code ORDER BY valid_from", new { code }, transaction))
        .Select(r => new LicenceRow(code, r.Number, r.Issuer, DateOnly.FromDateTime(r.From), DateOnly.FromDateTime(r.Until))).ToList();

    private static async Task<IReadOnlyList<ListingRow>> ReadListingsAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string code) =>
        (await connection.QueryAsync<(long Id, string List, DateTime From, DateTime? Until, string Reason)>(
            "SELECT listing_id, list_name, listed_from, listed_until, reason FROM integrity_listings WHERE provider_id = @code ORDER BY listing_id", new { code }, transaction))
        .Select(r => new ListingRow(code, r.Id, r.List, DateOnly.FromDateTime(r.From), r.Until is { } u ? DateOnly.FromDateTime(u) : null, r.Reason)).ToList();

    private sealed record ApplicationRow(long ApplicationId, string ProviderId, string BatchId, string ServiceItem, ApplicationState State, string? Intermediary, DateTimeOffset? NoticeEndsAt, DateTimeOffset? DecidedAt);

    private static async Task<ApplicationRow> LockApplicationAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, long id)
    {
        var row = await connection.QueryFirstOrDefaultAsync<(long Id, string Code, string Batch, string Item, string State, string? Intermediary, DateTime? NoticeEnds, DateTime? Decided)?>("""
            SELECT application_id, provider_id, batch_id, service_item, state, intermediary, notice_ends_at, decided_at FROM applications WHERE application_id = @id FOR UPDATE
            """, new { id }, transaction);
        return row is { } r
            ? new ApplicationRow(r.Id, r.Code, r.Batch, r.Item, Names.StateOf(r.State), r.Intermediary, r.NoticeEnds is { } n ? ShanghaiTime.Instant(n) : null, r.Decided is { } d ? ShanghaiTime.Instant(d) : null)
            : throw new RegistryRefusedException(RegistryRefusalReason.ApplicationUnknown, $"there is no application {id}");
    }

    private async Task<Application?> ReadApplicationAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, long id, bool details)
    {
        var row = await connection.QueryFirstOrDefaultAsync<ApplicationRecord>("""
            SELECT application_id AS Id, provider_id AS Code, batch_id AS Batch, service_item AS Item, state AS State,
                   floor(extract(epoch FROM filed_at) * 1000)::bigint AS FiledMs, declared_fp16_gflops AS Declared, coalesce(verified_fp16_gflops, 0) AS Verified,
                   coalesce(intermediary, '') AS Intermediary, coalesce(floor(extract(epoch FROM notice_ends_at) * 1000)::bigint, 0) AS NoticeEndsMs,
                   coalesce(notice_number, '') AS NoticeNumber, metering_proof_stream AS ProofStream, metering_proof_records AS ProofRecords,
                   service_content AS Content, service_standards AS Standards, fee_lines::text AS Fees, coalesce(renews_application_id, 0) AS Renews
            FROM applications WHERE application_id = @id
            """, new { id }, transaction);
        if (row is null)
        {
            return null;
        }

        var application = new Application
        {
            ApplicationId = row.Id,
            CreditCode = row.Code,
            BatchId = row.Batch,
            ServiceItem = row.Item,
            State = Names.StateOf(row.State),
            FiledUnixMs = row.FiledMs,
            DeclaredFp16Gflops = row.Declared,
            VerifiedFp16Gflops = row.Verified,
            Intermediary = row.Intermediary,
            NoticeEndsUnixMs = row.NoticeEndsMs,
            NoticeNumber = row.NoticeNumber,
            MeteringProofStream = row.ProofStream,
            MeteringProofRecords = (ulong)row.ProofRecords,
            RenewsApplicationId = row.Renews,
        };
        var stages = await connection.QueryAsync<(string Stage, string Actor, long AtMs, string Outcome, string Reasons)>("""
            SELECT stage, actor, floor(extract(epoch FROM at) * 1000)::bigint, outcome, reasons FROM application_stages WHERE application_id = @id ORDER BY stage_no
            """, new { id }, transaction);
        application.Stages.Add(stages.Select(s => new Stage { Stage_ = s.Stage, Actor = s.Actor, AtUnixMs = s.AtMs, Outcome = s.Outcome, Reasons = s.Reasons }));
        application.PendingProposal = await ReadPendingProposalAsync(connection, transaction, id);
        if (!details)
        {
            return application;
        }

        application.ServiceContent = row.Content;
        application.ServiceStandards = row.Standards;
        application.Fees.Add(ParseFees(row.Fees));
        var materials = await connection.QueryAsync<(string Kind, string Ref, byte[] Sha)>(
            "SELECT kind, document_ref, sha256 FROM application_materials WHERE application_id = @id ORDER BY kind", new { id }, transaction);
        application.Materials.Add(materials.Select(m => new Material { Kind = Names.MaterialKindOf(m.Kind), DocumentRef = m.Ref, Sha256 = Convert.ToHexStringLower(m.Sha) }));
        var capacity = await connection.QueryAsync<(string Site, string Model, int Count)>(
            "SELECT site, device_model, device_count FROM application_capacity WHERE application_id = @id ORDER BY site, device_model", new { id }, transaction);
        application.Capacity.Add(capacity.Select(c => new DeclaredDevices { Site = c.Site, DeviceModel = c.Model, DeviceCount = (uint)c.Count }));
        return application;
    }

    private sealed class ApplicationRecord
    {
        public long Id { get; init; }
        public string Code { get; init; } = "";
        public string Batch { get; init; } = "";
        public string Item { get; init; } = "";
        public string State { get; init; } = "";
        public long FiledMs { get; init; }
        public long Declared { get; init; }
        public long Verified { get; init; }
        public string Intermediary { get; init; } = "";
        public long NoticeEndsMs { get; init; }
        public string NoticeNumber { get; init; } = "";
        public string ProofStream { get; init; } = "";
        public long ProofRecords { get; init; }
        public string Content { get; init; } = "";
        public string Standards { get; init; } = "";
        public string Fees { get; init; } = "[]";
        public long Renews { get; init; }
    }

    private async Task<Organisation?> ReadOrganisationAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string code, DateTimeOffset now)
    {
        OrganisationRow row;
        try
        {
            row = await RequireOrganisationAsync(connection, transaction, code, lockRow: false);
        }
        catch (RegistryRefusedException)
        {
            return null;
        }

        var organisation = new Organisation
        {
            CreditCode = row.ProviderId,
            Name = row.Name,
            LegalForm = Names.LegalFormOf(row.LegalForm),
            District = row.District,
            EstablishedOn = ShanghaiTime.IsoDate(row.EstablishedOn),
        };
        organisation.Licences.Add((await ReadLicencesAsync(connection, transaction, code)).Select(l => new Licence
        {
            CreditCode = code,
            LicenceNumber = l.LicenceNumber,
            Issuer = l.Issuer,
            ValidFrom = ShanghaiTime.IsoDate(l.ValidFrom),
            ValidUntil = ShanghaiTime.IsoDate(l.ValidUntil),
        }));
        organisation.Listings.Add((await ReadListingsAsync(connection, transaction, code)).Select(l => new IntegrityListing
        {
            CreditCode = code,
            List = l.ListName,
            ListedFrom = ShanghaiTime.IsoDate(l.ListedFrom),
            ListedUntil = l.ListedUntil is { } u ? ShanghaiTime.IsoDate(u) : "",
            Reason = l.Reason,
        }));
        organisation.ServiceItems.Add((await ReadServiceItemsAsync(connection, transaction, code, now)).Select(i => i.ToMessage(now)));
        return organisation;
    }

    /// <summary>A service item row with its open suspension, if any.</summary>
    internal sealed record ServiceItemRow(string ProviderId, string Item, long ApplicationId, string NoticeNumber, DateTimeOffset ValidFrom, DateTimeOffset ValidityEndsAt,
        DateTimeOffset? EndedAt, string? EndKind, string? EndReason, DateTimeOffset? SuspendedAt, string? SuspensionReason, int FeeVersion, long? RenewsApplicationId)
    {
        public ServiceItemStatus Status(DateTimeOffset now) => EndKind switch
        {
            "withdrawn" => ServiceItemStatus.Withdrawn,
            "revoked" => ServiceItemStatus.Revoked,
            _ when now >= ValidityEndsAt => ServiceItemStatus.Expired,
            _ when SuspendedAt is not null => ServiceItemStatus.Suspended,
            _ => ServiceItemStatus.Active,
        };

        public ServiceItem ToMessage(DateTimeOffset now) => new()
        {
            CreditCode = ProviderId,
            ServiceItem_ = Item,
            ApplicationId = ApplicationId,
            NoticeNumber = NoticeNumber,
            ValidFromUnixMs = ValidFrom.ToUnixTimeMilliseconds(),
            ValidUntilUnixMs = (EndedAt is { } ended && ended < ValidityEndsAt ? ended : ValidityEndsAt).ToUnixTimeMilliseconds(),
            Status = Status(now),
            StatusReason = EndReason ?? SuspensionReason ?? "",
            FeeScheduleVersion = (uint)FeeVersion,
            RenewsApplicationId = RenewsApplicationId ?? 0,
        };
    }

    private static async Task<IReadOnlyList<ServiceItemRow>> ReadServiceItemsAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string code, DateTimeOffset now) =>
        (await connection.QueryAsync<(string Item, long Id, string Notice, DateTime From, DateTime Ends, DateTime? Ended, string? Kind, string? Reason, DateTime? Suspended, string? SuspensionReason, int Fees, long? Renews)>("""
            SELECT s.service_item, s.application_id, s.notice_number, s.valid_from, s.validity_ends_at, s.ended_at, s.end_kind, s.end_reason,
                   p.suspended_at, p.reason,
                   coalesce((SELECT max(version) FROM fee_schedules f WHERE f.provider_id = s.provider_id AND f.service_item = s.service_item), 0),
                   s.renews_application_id
            FROM service_items s
            LEFT JOIN service_item_suspensions p ON p.provider_id = s.provider_id AND p.service_item = s.service_item AND p.application_id = s.application_id AND p.reinstated_at IS NULL
            WHERE s.provider_id = @code ORDER BY s.valid_from, s.service_item
            """, new { code }, transaction))
        .Select(r => new ServiceItemRow(code, r.Item, r.Id, r.Notice, ShanghaiTime.Instant(r.From), ShanghaiTime.Instant(r.Ends), r.Ended is { } e ? ShanghaiTime.Instant(e) : null, r.Kind, r.Reason,
            r.Suspended is { } s ? ShanghaiTime.Instant(s) : null, r.SuspensionReason, r.Fees, r.Renews)).ToList();

    /// <summary>The item's admission in force (the latest that has started), whatever its status; a renewal waiting to start is not it.</summary>
    private static async Task<ServiceItemRow?> CurrentItemAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code, string item, DateTimeOffset now) =>
        InForce((await ReadServiceItemsAsync(connection, transaction, code, now)).Where(i => i.Item == item).ToList(), now);

    private static ServiceItemRow? InForce(IReadOnlyList<ServiceItemRow> admissions, DateTimeOffset now) =>
        admissions.Where(i => i.ValidFrom <= now).MaxBy(i => i.ValidFrom) ?? admissions.MaxBy(i => i.ValidFrom);

    /// <summary>
    /// Checks that the filing may renew the admission it names, and returns that admission's
    /// application id. The renewal is of the applicant's own admission of the same item, still
    /// running, not already followed by a later admission, in a batch other than its own that
    /// runs past its end.
    /// </summary>
    private static async Task<long> CheckRenewalAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code, FileApplicationRequest request, BatchRow batch, DateTimeOffset now)
    {
        long id = request.RenewsApplicationId;
        IReadOnlyList<ServiceItemRow> admissions = await ReadServiceItemsAsync(connection, transaction, code, now);
        ServiceItemRow renewed = admissions.FirstOrDefault(i => i.ApplicationId == id)
            ?? throw new RegistryRefusedException(RegistryRefusalReason.RenewalInvalid, $"application {id} admitted no service item of {code}; a renewal names the applicant's own admission");
        if (renewed.Item != request.ServiceItem)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.RenewalInvalid,
                $"application {id} admitted service item '{renewed.Item}', not '{request.ServiceItem}'; a renewal is for the same item, and another item is a new application");
        }

        if (renewed.Status(now) is not (ServiceItemStatus.Active or ServiceItemStatus.Suspended))
        {
            throw new RegistryRefusedException(RegistryRefusalReason.RenewalInvalid,
                $"the admission of application {id} is {renewed.Status(now).ToString().ToLowerInvariant()}; only a running admission is renewed, and an ended item is applied for anew (renews_application_id 0)");
        }

        if (admissions.FirstOrDefault(i => i.Item == renewed.Item && i.ValidFrom > renewed.ValidFrom) is { } later)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.ServiceItemTaken,
                $"the admission of application {id} is already renewed by application {later.ApplicationId} from {later.ValidFrom.ToOffset(ShanghaiTime.Offset):yyyy-MM-dd HH:mm} Asia/Shanghai");
        }

        string renewedBatch = await connection.ExecuteScalarAsync<string>("SELECT batch_id FROM applications WHERE application_id = @id", new { id }, transaction) ?? "";
        if (renewedBatch == batch.BatchId || batch.ValidityEndsAt <= renewed.ValidityEndsAt)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.RenewalInvalid,
                $"batch {batch.BatchId} is valid until {batch.ValidityEndsAt.ToOffset(ShanghaiTime.Offset):yyyy-MM-dd HH:mm} Asia/Shanghai; it cannot renew an admission of batch {renewedBatch} valid until {renewed.ValidityEndsAt.ToOffset(ShanghaiTime.Offset):yyyy-MM-dd HH:mm}: a renewal is filed in a later batch");
        }

        return id;
    }

    /// <summary>Rejects a renewal of the item still in progress, since the admission it would continue has just ended early.</summary>
    private static async Task RejectRenewalsInProgressAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, Actor actor, string code, string item, string endKind, DateTimeOffset now)
    {
        var pending = await connection.QueryAsync<long>("""
            SELECT application_id FROM applications
            WHERE provider_id = @code AND service_item = @item AND renews_application_id IS NOT NULL AND state NOT IN ('admitted', 'rejected') FOR UPDATE
            """, new { code, item }, transaction);
        foreach (long id in pending)
        {
            string before = (await ApplicationJsonAsync(connection, transaction, id))!;
            await connection.ExecuteAsync("UPDATE applications SET state = 'rejected' WHERE application_id = @id", new { id }, transaction);
            await DismissOvertakenAsync(connection, transaction, actor, id, $"the admission this application renews was {endKind}", now);
            await AddStageAsync(connection, transaction, code, id, "exit", actor, now, "rejected", $"the admission this application renews was {endKind}; a renewal does not revive it");
            await RecordAsync(connection, transaction, actor, now, code, "application", Key(id), "exit", before, await ApplicationJsonAsync(connection, transaction, id));
        }
    }

    // ---------------------------------------------------------------- small helpers

    private static string CheckCreditCode(string code)
    {
        if (!Identity.CreditCode.IsValid(code))
        {
            throw new RegistryRefusedException(RegistryRefusalReason.CreditCodeInvalid, $"'{code}' is not a valid unified social credit code (18 characters, GB 32100-2015 check character)");
        }

        return code;
    }

    private static string RequireReasons(string reasons, string message)
    {
        string trimmed = reasons.Trim();
        if (trimmed.Length == 0)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.ReasonRequired, message);
        }

        if (trimmed.Length > ReasonsMax)
        {
            throw FilingRules.Invalid($"reasons are at most {ReasonsMax} characters");
        }

        return trimmed;
    }

    /// <summary>Instants from 2000 to 2100: anything else is a mistake, and far values would not convert.</summary>
    private static void CheckInstant(string field, long unixMs, bool allowZero = false)
    {
        const long earliestMs = 946_684_800_000;   // 2000-01-01T00:00:00Z
        const long latestMs = 4_102_444_800_000;   // 2100-01-01T00:00:00Z
        if (!(allowZero && unixMs == 0) && unixMs is < earliestMs or > latestMs)
        {
            throw FilingRules.Invalid($"{field} {unixMs} is not an instant between 2000 and 2100 in Unix milliseconds");
        }
    }

    private static DateOnly ParseDate(string field, string text) =>
        DateOnly.TryParseExact(text, "yyyy-MM-dd", CultureInfo.InvariantCulture, DateTimeStyles.None, out DateOnly date)
            ? date
            : throw FilingRules.Invalid($"{field} must be a date as yyyy-MM-dd, not '{text}'");

    private static string Key(long id) => id.ToString(CultureInfo.InvariantCulture);

    private static string? NullIfEmpty(string? text) => string.IsNullOrEmpty(text) ? null : text;

    private static string Join(string first, string second) => second.Trim().Length == 0 ? first : $"{first}; {second.Trim()}";

    private static string Past(ServiceItemAction action) => action switch
    {
        ServiceItemAction.Suspend => "suspended",
        ServiceItemAction.Reinstate => "reinstated",
        ServiceItemAction.Withdraw => "withdrawn",
        _ => "revoked",
    };

    private static string Serialize<T>(T value) => JsonSerializer.Serialize(value, Json);

    private sealed record FeeLineJson(string DeviceModel, string Unit, long PriceFen);

    private static string FeesJson(IEnumerable<FeeLine> lines) =>
        Serialize(lines.Select(l => new FeeLineJson(l.DeviceModel, Names.Of(l.Unit), l.PriceFen)).ToList());

    public static IEnumerable<FeeLine> ParseFees(string json) =>
        (JsonSerializer.Deserialize<List<FeeLineJson>>(json, Json) ?? []).Select(l => new FeeLine { DeviceModel = l.DeviceModel, Unit = Names.FeeUnitOf(l.Unit), PriceFen = l.PriceFen });
}
