using System.Globalization;
using System.Text.Json;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Catalog;
using Metering.Engine.Storage;
using Metering.Engine.Time;
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
        string before = (await ApplicationJsonAsync(connection, transaction, row.ProviderId, row.ApplicationId))!;
        var (next, outcome, reasons) = await rule(connection, transaction, row, now);
        await connection.ExecuteAsync("UPDATE applications SET state = @state WHERE provider_id = @code AND application_id = @id", new { state = Names.Of(next), code = row.ProviderId, id = row.ApplicationId }, transaction);
        await AddStageAsync(connection, transaction, row.ProviderId, row.ApplicationId, stage, actor, now, outcome, reasons);
        await RecordAsync(connection, transaction, actor, now, row.ProviderId, "application", Key(row.ApplicationId), action, before, await ApplicationJsonAsync(connection, transaction, row.ProviderId, row.ApplicationId));
        return (await ReadApplicationAsync(connection, transaction, row.ProviderId, row.ApplicationId, details: true))!;
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
            SELECT actor, at, outcome FROM application_stages WHERE provider_id = @code AND application_id = @id AND stage = @stage ORDER BY stage_no DESC LIMIT 1
            """, new { code = row.ProviderId, id = row.ApplicationId, stage }, transaction);
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
        catch (PostgresException e) when (e.SqlState == PostgresErrorCodes.UniqueViolation && e.ConstraintName == "admission_notice_numbers_pkey")
        {
            throw new RegistryRefusedException(RegistryRefusalReason.NoticeNumberTaken, "the admission notice number was used at the same moment");
        }
    }

    /// <summary>Appends a stage record and returns its number.</summary>
    private static Task<int> AddStageAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code, long id, string stage, Actor actor, DateTimeOffset now, string outcome, string reasons) =>
        connection.ExecuteScalarAsync<int>("""
            INSERT INTO application_stages (provider_id, application_id, stage_no, stage, actor, at, outcome, reasons)
            SELECT @code, @id, coalesce(max(stage_no), 0) + 1, @stage, @actor, @now, @outcome, @reasons FROM application_stages WHERE provider_id = @code AND application_id = @id
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
    private static Task<string?> ApplicationJsonAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code, long id) =>
        connection.ExecuteScalarAsync<string?>("""
            SELECT ((to_jsonb(a) - 'fee_lines' - 'service_content' - 'service_standards') || coalesce((
                SELECT jsonb_build_object('verification_parts', jsonb_agg(jsonb_build_object(
                           'source', CASE p.source WHEN 'probe' THEN 'probe' ELSE 'commissioned_verifier' END,
                           'validation_id', p.validation_id, 'device_model', p.device_model, 'devices', p.devices, 'fp16_gflops', p.fp16_gflops) ORDER BY p.part_no))
                FROM verification_parts p
                WHERE p.provider_id = a.provider_id AND p.application_id = a.application_id
                  AND p.stage_no = (SELECT max(s.stage_no) FROM application_stages s
                                    WHERE s.provider_id = a.provider_id AND s.application_id = a.application_id AND s.stage = 'verification')
                HAVING count(*) > 0), '{}'::jsonb))::text
            FROM applications a WHERE provider_id = @code AND application_id = @id
            """, new { code, id }, transaction);

    private static Task BumpEpochAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code) =>
        connection.ExecuteAsync("UPDATE organisations SET admission_epoch = admission_epoch + 1 WHERE provider_id = @code", new { code }, transaction);

    private static async Task LockOrganisationAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code) =>
        await RequireOrganisationAsync(connection, transaction, code, lockRow: true);

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

    private static string Serialize<T>(T value) => JsonSerializer.Serialize(value, Json);
}
