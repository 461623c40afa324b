using System.Globalization;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Catalog;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Registry;

/// <summary>Filing: an application checked against its batch's rules, the applicant's licences and listings, its metering-log proof and, for a renewal, the admission it renews.</summary>
public sealed partial class ProviderRegistry
{
    /// <param name="enteredBy">The operator who entered the applicant's filing on its behalf, recorded beside the applicant; null when the applicant filed over the API.</param>
    public async Task<Application> FileApplicationAsync(Actor actor, ApplicationFiling filing, CancellationToken cancellationToken, string? enteredBy = null)
    {
        string code = CheckCreditCode(filing.CreditCode);
        if (actor.Role != Role.Provider || actor.Subject != code)
        {
            // The guide requires applicants to file for themselves (自主申报).
            throw new RegistryRefusedException(RegistryRefusalReason.OtherProvider, $"an application for {code} must be filed by {code} itself");
        }

        FilingRules.CheckForm(filing, catalog);
        return await InTransactionAsync(async (connection, transaction) =>
        {
            OrganisationRow organisation = await RequireOrganisationAsync(connection, transaction, code, lockRow: true);
            DateTimeOffset now = time.GetUtcNow();
            BatchRow batch = (await ReadBatchesAsync(connection, transaction, filing.BatchId)).SingleOrDefault()
                ?? throw new RegistryRefusedException(RegistryRefusalReason.BatchUnknown, $"there is no admission batch '{filing.BatchId}'");
            var context = new FilingContext(
                organisation,
                batch,
                await ReadLicencesAsync(connection, transaction, code),
                await ReadListingsAsync(connection, transaction, code),
                await connection.ExecuteScalarAsync<string?>("SELECT status FROM voucher_holders WHERE holder_code = @code AND status <> 'left'", new { code }, transaction),
                now);
            long declared = FilingRules.Check(filing, context, catalog);

            string? pending = await connection.ExecuteScalarAsync<string?>("""
                SELECT state FROM applications WHERE provider_id = @code AND service_item = @item AND state NOT IN ('admitted', 'rejected')
                """, new { code, item = filing.ServiceItem }, transaction);
            if (pending is not null)
            {
                throw new RegistryRefusedException(RegistryRefusalReason.ServiceItemTaken, $"{code} already has an application for service item '{filing.ServiceItem}' in progress ({pending})");
            }

            // An item whose admission has ended (expired, withdrawn, revoked) may be applied for
            // again; one still admitted only as a renewal of that admission in a later batch.
            long? renews = null;
            if (filing.RenewsApplicationId != 0)
            {
                renews = await CheckRenewalAsync(connection, transaction, code, filing, batch, now);
            }
            else if (await CurrentItemAsync(connection, transaction, code, filing.ServiceItem, now) is { } current
                && current.Status(now) is ServiceItemStatus.Active or ServiceItemStatus.Suspended)
            {
                throw new RegistryRefusedException(RegistryRefusalReason.ServiceItemTaken,
                    $"{code} is already admitted for service item '{filing.ServiceItem}' until {current.ValidityEndsAt.ToOffset(ShanghaiTime.Offset):yyyy-MM-dd HH:mm} Asia/Shanghai; a new service is applied for under a new item, and this one is renewed in a later batch with renews_application_id {current.ApplicationId}");
            }

            long proofRecords = await CheckMeteringProofAsync(connection, transaction, code, filing.MeteringProofStream, cancellationToken);
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
                item = filing.ServiceItem,
                now = now.UtcDateTime,
                reportKind = Names.Of(filing.FinancialReportKind),
                year = filing.FinancialReportKind == FinancialReportKind.CapitalVerification || filing.AuditReportYear == 0 ? (int?)null : (int)filing.AuditReportYear,
                reason = NullIfEmpty(filing.AuditReportReason),
                declared,
                content = filing.ServiceContent,
                standards = filing.ServiceStandards,
                proof = filing.MeteringProofStream,
                proofRecords,
                fees = FeesJson(filing.Fees),
                intermediary = NullIfEmpty(filing.Intermediary.Trim()),
                renews,
            }, transaction);

            foreach (Material material in filing.Materials)
            {
                await connection.ExecuteAsync("""
                    INSERT INTO application_materials (provider_id, application_id, kind, document_ref, sha256) VALUES (@code, @id, @kind, @ref, @sha)
                    """, new { code, id, kind = Names.Of(material.Kind), @ref = material.DocumentRef, sha = Convert.FromHexString(material.Sha256) }, transaction);
            }

            foreach (DeclaredDevices devices in filing.Capacity)
            {
                await connection.ExecuteAsync("""
                    INSERT INTO application_capacity (provider_id, application_id, site, device_model, device_count) VALUES (@code, @id, @site, @model, @count)
                    """, new { code, id, site = devices.Site, model = devices.DeviceModel, count = (int)devices.DeviceCount }, transaction);
            }

            string filingNote = string.Join("; ", new[]
            {
                filing.Intermediary.Length > 0 ? $"flagged: filed through an intermediary ({filing.Intermediary.Trim()})" : "",
                renews is { } renewed ? $"renews the admission of application {renewed}" : "",
                enteredBy is not null ? $"entered by operator {enteredBy}" : "",
            }.Where(note => note.Length > 0));
            Actor recorded = enteredBy is null ? actor : actor with { Subject = $"{actor.Subject} (entered by {enteredBy})" };
            await AddStageAsync(connection, transaction, code, id, "filing", actor, now, "recorded", filingNote);
            await RecordAsync(connection, transaction, recorded, now, code, "application", id.ToString(CultureInfo.InvariantCulture), "file", null, await ApplicationJsonAsync(connection, transaction, code, id));
            return (await ReadApplicationAsync(connection, transaction, code, id, details: true))!;
        }, cancellationToken);
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

    /// <summary>
    /// Checks that the filing may renew the admission it names, and returns that admission's
    /// application id. The renewal is of the applicant's own admission of the same item, still
    /// running, not already followed by a later admission, in a batch other than its own that
    /// runs past its end.
    /// </summary>
    private static async Task<long> CheckRenewalAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code, ApplicationFiling filing, BatchRow batch, DateTimeOffset now)
    {
        long id = filing.RenewsApplicationId;
        IReadOnlyList<ServiceItemRow> admissions = await ReadServiceItemsAsync(connection, transaction, code, now);
        ServiceItemRow renewed = admissions.FirstOrDefault(i => i.ApplicationId == id)
            ?? throw new RegistryRefusedException(RegistryRefusalReason.RenewalInvalid, $"application {id} admitted no service item of {code}; a renewal names the applicant's own admission");
        if (renewed.Item != filing.ServiceItem)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.RenewalInvalid,
                $"application {id} admitted service item '{renewed.Item}', not '{filing.ServiceItem}'; a renewal is for the same item, and another item is a new application");
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

        string renewedBatch = await connection.ExecuteScalarAsync<string>("SELECT batch_id FROM applications WHERE provider_id = @code AND application_id = @id", new { code, id }, transaction) ?? "";
        if (renewedBatch == batch.BatchId || batch.ValidityEndsAt <= renewed.ValidityEndsAt)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.RenewalInvalid,
                $"batch {batch.BatchId} is valid until {batch.ValidityEndsAt.ToOffset(ShanghaiTime.Offset):yyyy-MM-dd HH:mm} Asia/Shanghai; it cannot renew an admission of batch {renewedBatch} valid until {renewed.ValidityEndsAt.ToOffset(ShanghaiTime.Offset):yyyy-MM-dd HH:mm}: a renewal is filed in a later batch");
        }

        return id;
    }
}
