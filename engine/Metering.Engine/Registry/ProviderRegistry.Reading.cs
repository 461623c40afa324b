using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Catalog;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Registry;

/// <summary>Reading rows the stages share: applications, organisations, their licences and listings, admitted service items and the history.</summary>
public sealed partial class ProviderRegistry
{
    public async Task<Application?> GetApplicationAsync(long applicationId, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await ReadApplicationAsync(connection, null, null, applicationId, details: true);
    }

    public async Task<IReadOnlyList<Application>> ListApplicationsAsync(string? creditCode, ApplicationState state, int limit, CancellationToken cancellationToken)
    {
        limit = limit == 0 ? ListLimitDefault : Math.Clamp(limit, 1, ListLimitMax);
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        var ids = await connection.QueryAsync<(string, long)>("""
            SELECT provider_id, application_id FROM applications
            WHERE (@code::text IS NULL OR provider_id = @code) AND (@state::text IS NULL OR state = @state)
            ORDER BY application_id DESC LIMIT @limit
            """, new { code = NullIfEmpty(creditCode), state = state == ApplicationState.Unspecified ? null : Names.Of(state), limit });
        var applications = new List<Application>();
        foreach (var (provider, id) in ids)
        {
            applications.Add((await ReadApplicationAsync(connection, null, provider, id, details: false))!);
        }

        return applications;
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

    /// <summary>
    /// Locks the application. Its provider, which never changes, is read first without a lock and
    /// then named in the locking statement: on Citus a row lock must route to one shard (a
    /// `SELECT … FOR UPDATE` over several shards is refused), and on one node it is the same row.
    /// </summary>
    private static async Task<ApplicationRow> LockApplicationAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, long id)
    {
        string? provider = await ProviderOfApplicationAsync(connection, transaction, id);
        var row = provider is null ? null : await connection.QueryFirstOrDefaultAsync<(long Id, string Code, string Batch, string Item, string State, string? Intermediary, DateTime? NoticeEnds, DateTime? Decided)?>("""
            SELECT application_id, provider_id, batch_id, service_item, state, intermediary, notice_ends_at, decided_at FROM applications
            WHERE provider_id = @provider AND application_id = @id FOR UPDATE
            """, new { provider, id }, transaction);
        return row is { } r
            ? new ApplicationRow(r.Id, r.Code, r.Batch, r.Item, Names.StateOf(r.State), r.Intermediary, r.NoticeEnds is { } n ? ShanghaiTime.Instant(n) : null, r.Decided is { } d ? ShanghaiTime.Instant(d) : null)
            : throw new RegistryRefusedException(RegistryRefusalReason.ApplicationUnknown, $"there is no application {id}");
    }

    /// <summary>
    /// The provider of application <paramref name="id"/>, or null: read unlocked, by the id alone
    /// (on Citus a read of every shard), so that every statement after it names provider_id and
    /// reads or locks the row on the provider's shard alone.
    /// </summary>
    private static Task<string?> ProviderOfApplicationAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, long id) =>
        connection.ExecuteScalarAsync<string?>("SELECT provider_id FROM applications WHERE application_id = @id", new { id }, transaction);

    /// <summary>Application <paramref name="id"/> of <paramref name="code"/>, or of whichever provider filed it when <paramref name="code"/> is null.</summary>
    private async Task<Application?> ReadApplicationAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string? code, long id, bool details)
    {
        code ??= await ProviderOfApplicationAsync(connection, transaction, id);
        if (code is null)
        {
            return null;
        }

        var row = await connection.QueryFirstOrDefaultAsync<ApplicationRecord>("""
            SELECT application_id AS Id, provider_id AS Code, batch_id AS Batch, service_item AS Item, state AS State,
                   floor(extract(epoch FROM filed_at) * 1000)::bigint AS FiledMs, declared_fp16_gflops AS Declared, coalesce(verified_fp16_gflops, 0) AS Verified,
                   coalesce(intermediary, '') AS Intermediary, coalesce(floor(extract(epoch FROM notice_ends_at) * 1000)::bigint, 0) AS NoticeEndsMs,
                   coalesce(notice_number, '') AS NoticeNumber, metering_proof_stream AS ProofStream, metering_proof_records AS ProofRecords,
                   service_content AS Content, service_standards AS Standards, fee_lines::text AS Fees, coalesce(renews_application_id, 0) AS Renews
            FROM applications WHERE provider_id = @code AND application_id = @id
            """, new { code, id }, transaction);
        if (row is null)
        {
            return null;
        }

        var stages = await connection.QueryAsync<(string Stage, string Actor, long AtMs, string Outcome, string Reasons)>("""
            SELECT stage, actor, floor(extract(epoch FROM at) * 1000)::bigint, outcome, reasons FROM application_stages WHERE provider_id = @code AND application_id = @id ORDER BY stage_no
            """, new { code, id }, transaction);
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
            Stages = [.. stages.Select(s => new StageEntry { Stage = s.Stage, Actor = s.Actor, AtUnixMs = s.AtMs, Outcome = s.Outcome, Reasons = s.Reasons })],
            PendingProposal = await ReadPendingProposalAsync(connection, transaction, row.Code, id),
        };
        if (!details)
        {
            return application;
        }

        IReadOnlyList<FeeLine> fees = [.. ParseFees(row.Fees)];
        var materials = await connection.QueryAsync<(string Kind, string Ref, byte[] Sha)>(
            "SELECT kind, document_ref, sha256 FROM application_materials WHERE provider_id = @code AND application_id = @id ORDER BY kind", new { code, id }, transaction);
        var capacity = await connection.QueryAsync<(string Site, string Model, int Count)>(
            "SELECT site, device_model, device_count FROM application_capacity WHERE provider_id = @code AND application_id = @id ORDER BY site, device_model", new { code, id }, transaction);
        return application with
        {
            ServiceContent = row.Content,
            ServiceStandards = row.Standards,
            Fees = fees,
            Materials = [.. materials.Select(m => new Material(Names.MaterialKindOf(m.Kind), m.Ref, Convert.ToHexStringLower(m.Sha)))],
            Capacity = [.. capacity.Select(c => new DeclaredDevices(c.Site, c.Model, (uint)c.Count))],
        };
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

        IReadOnlyList<LicenceRow> licences = await ReadLicencesAsync(connection, transaction, code);
        IReadOnlyList<ListingRow> listings = await ReadListingsAsync(connection, transaction, code);
        IReadOnlyList<ServiceItemRow> items = await ReadServiceItemsAsync(connection, transaction, code, now);
        return new Organisation
        {
            CreditCode = row.ProviderId,
            Name = row.Name,
            LegalForm = Names.LegalFormOf(row.LegalForm),
            District = row.District,
            EstablishedOn = ShanghaiTime.IsoDate(row.EstablishedOn),
            Licences = [.. licences.Select(l => new Licence
            {
                CreditCode = code,
                LicenceNumber = l.LicenceNumber,
                Issuer = l.Issuer,
                ValidFrom = ShanghaiTime.IsoDate(l.ValidFrom),
                ValidUntil = ShanghaiTime.IsoDate(l.ValidUntil),
            })],
            Listings = [.. listings.Select(l => new IntegrityListing
            {
                CreditCode = code,
                List = l.ListName,
                ListedFrom = ShanghaiTime.IsoDate(l.ListedFrom),
                ListedUntil = l.ListedUntil is { } u ? ShanghaiTime.IsoDate(u) : "",
                Reason = l.Reason,
            })],
            ServiceItems = [.. items.Select(i => i.ToRecord(now))],
        };
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

        public ServiceItem ToRecord(DateTimeOffset now) => new()
        {
            CreditCode = ProviderId,
            Item = Item,
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
}
