using System.Globalization;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Registry;

/// <summary>The programme's rules for reconsideration (复核) of a refusal.</summary>
public static class ReconsiderationRules
{
    /// <summary>The guide names no period; 15 days from the refusal is the programme's choice, which a batch may change.</summary>
    public const int DaysDefault = 15;

    /// <summary>The longest window a batch may set, in days: the 60 days of the administrative reconsideration law.</summary>
    public const int DaysMax = 60;

    /// <summary>The stages whose refusal may be reconsidered, and the state an upheld reconsideration returns the application to.</summary>
    internal static readonly IReadOnlyDictionary<string, string> StateAfterUphold = new Dictionary<string, string>
    {
        ["material_review"] = "awaiting_material_review",
        ["verification"] = "awaiting_verification",
        ["public_notice"] = "awaiting_public_notice",
        // Upheld, a refusal at the decision becomes the admitting decision it was not.
        ["decision"] = "awaiting_admission_notice",
    };
}

/// <summary>What an operator decides on a reconsideration.</summary>
public enum ReconsiderationRuling
{
    /// <summary>The refusal is set aside.</summary>
    Uphold,

    /// <summary>The refusal stands.</summary>
    Dismiss,
}

/// <summary>Where a reconsideration stands.</summary>
public enum ReconsiderationProgress
{
    Pending,
    Upheld,
    Dismissed,
}

/// <summary>Why a reconsideration call was refused; nothing was written. The server names each on the wire (registry.proto).</summary>
public enum ReconsiderationRefusal
{
    /// <summary>The grounds or reasons are missing.</summary>
    ReasonRequired,

    /// <summary>A field is malformed: grounds or reasons too long, no verdict.</summary>
    FieldInvalid,

    /// <summary>Only the applicant asks for reconsideration of its own application.</summary>
    OtherProvider,

    /// <summary>No such application, or (to a provider) not its own: the two read alike.</summary>
    ApplicationUnknown,

    /// <summary>The application is not rejected.</summary>
    NotRejected,

    /// <summary>The rejection was not a review stage's (false materials, a renewal whose admission ended).</summary>
    NotReconsiderable,

    /// <summary>The refusal's window has passed.</summary>
    WindowClosed,

    /// <summary>This refusal's reconsideration was already asked for.</summary>
    AlreadyRequested,

    /// <summary>No reconsideration awaits a decision.</summary>
    NonePending,

    /// <summary>Another operator decided the reconsideration first.</summary>
    AlreadyDecided,

    /// <summary>The service item is admitted under another application, so the refused one cannot go on.</summary>
    ServiceItemTaken,
}

/// <summary>A reconsideration call was refused for a stated rule; nothing was changed.</summary>
public sealed class ReconsiderationRefusedException(ReconsiderationRefusal reason, string message, IReadOnlyDictionary<string, string>? metadata = null)
    : Exception(message)
{
    public ReconsiderationRefusal Reason { get; } = reason;

    public IReadOnlyDictionary<string, string> Metadata { get; } = metadata ?? new Dictionary<string, string>();
}

/// <summary>
/// A reconsideration of one refusal. <paramref name="ApplicationState"/> is the application's state
/// now, as the registry spells it (`under_reconsideration`, `rejected`, ...).
/// </summary>
public sealed record ReconsiderationCase(
    long ApplicationId,
    string ProviderId,
    string RefusedStage,
    DateTimeOffset RefusedAt,
    DateTimeOffset WindowEndsAt,
    string RequestedBy,
    DateTimeOffset RequestedAt,
    string Grounds,
    ReconsiderationProgress Status,
    string? DecidedBy,
    DateTimeOffset? DecidedAt,
    string? Reasons,
    string ApplicationState,
    int PendingProposalNo);

/// <summary>
/// Reconsideration (复核): a refused applicant asks, within its batch's days from the refusal, for
/// the refusal to be looked at again; an operator upholds it (back to the stage refused at, or on
/// to the admission notice when refused at the decision) or dismisses it, with reasons. Each
/// refusal is reconsidered once. Upholding a refusal at the decision admits, so under four-eyes it
/// is a proposal a second operator approves (FourEyes.cs), exactly as the admission decision is.
/// Every step is a stage of the application and an entry of registry_history.
/// </summary>
public sealed partial class ProviderRegistry
{
    /// <summary>The applicant asks for reconsideration of its application's latest refusal.</summary>
    public async Task<ReconsiderationCase> RequestReconsiderationAsync(Actor actor, long applicationId, string grounds, CancellationToken cancellationToken)
    {
        string trimmed = Required(grounds, "grounds", "a request for reconsideration needs its grounds");
        if (actor.Role != Role.Provider)
        {
            // The guide's applicant asks for itself, as it files for itself.
            throw new ReconsiderationRefusedException(ReconsiderationRefusal.OtherProvider, "reconsideration is asked for by the applicant itself, with its provider key");
        }

        return await InTransactionAsync(async (connection, transaction) =>
        {
            // Another provider's application reads as unknown, word for word as one that does not
            // exist, as GetApplication answers: ids reveal nothing.
            Target target = await LockTargetAsync(connection, transaction, applicationId, lockOrganisation: true) is { } found && found.ProviderId == actor.Subject
                ? found
                : throw new ReconsiderationRefusedException(ReconsiderationRefusal.ApplicationUnknown, $"there is no application {applicationId} of yours");

            DateTimeOffset now = time.GetUtcNow();
            if (target.State == "under_reconsideration")
            {
                throw new ReconsiderationRefusedException(ReconsiderationRefusal.AlreadyRequested, $"the reconsideration of application {applicationId} is already asked for and awaits an operator");
            }

            if (target.State != "rejected")
            {
                throw new ReconsiderationRefusedException(ReconsiderationRefusal.NotRejected, $"application {applicationId} is {target.State}; only a rejected application is reconsidered",
                    new Dictionary<string, string> { ["state"] = target.State });
            }

            var refusal = await connection.QuerySingleAsync<(int StageNo, string Stage, DateTime At)>("""
                SELECT stage_no, stage, at FROM application_stages WHERE provider_id = @provider AND application_id = @applicationId AND outcome = 'rejected' ORDER BY stage_no DESC LIMIT 1
                """, new { provider = target.ProviderId, applicationId }, transaction);
            if (!ReconsiderationRules.StateAfterUphold.ContainsKey(refusal.Stage))
            {
                throw new ReconsiderationRefusedException(ReconsiderationRefusal.NotReconsiderable,
                    $"application {applicationId} was rejected at {refusal.Stage}, not by a review stage; only a refusal at {string.Join(", ", ReconsiderationRules.StateAfterUphold.Keys)} is reconsidered");
            }

            var earlier = await connection.QueryFirstOrDefaultAsync<(string By, DateTime At, string Outcome)?>("""
                SELECT requested_by, requested_at, outcome FROM reconsiderations WHERE provider_id = @provider AND application_id = @applicationId AND refused_stage_no = @stageNo
                """, new { provider = target.ProviderId, applicationId, stageNo = refusal.StageNo }, transaction);
            if (earlier is { } e)
            {
                throw new ReconsiderationRefusedException(ReconsiderationRefusal.AlreadyRequested,
                    $"the reconsideration of this refusal was asked for by {e.By} at {ShanghaiTime.LocalMinutes(ShanghaiTime.Instant(e.At))} and {e.Outcome}; each refusal is reconsidered once",
                    new Dictionary<string, string> { ["outcome"] = e.Outcome });
            }

            int days = await connection.ExecuteScalarAsync<int>("SELECT reconsideration_days FROM admission_batches WHERE batch_id = @batch", new { batch = target.BatchId }, transaction);
            DateTimeOffset refusedAt = ShanghaiTime.Instant(refusal.At);
            DateTimeOffset windowEnds = refusedAt.AddDays(days);
            if (now >= windowEnds)
            {
                throw new ReconsiderationRefusedException(ReconsiderationRefusal.WindowClosed,
                    $"application {applicationId} was refused at {ShanghaiTime.LocalMinutes(refusedAt)}; reconsideration could be asked for within {days} day(s), until {ShanghaiTime.LocalMinutes(windowEnds)} Asia/Shanghai",
                    new Dictionary<string, string> { ["window_ends_unix_ms"] = windowEnds.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture) });
            }

            await RequireItemFreeAsync(connection, transaction, target, now);
            string before = (await ApplicationJsonAsync(connection, transaction, target.ProviderId, applicationId))!;
            await connection.ExecuteAsync("""
                INSERT INTO reconsiderations (provider_id, application_id, refused_stage_no, refused_stage, refused_at, window_ends_at, requested_by, requested_at, grounds)
                VALUES (@provider, @applicationId, @stageNo, @stage, @refusedAt, @windowEnds, @by, @now, @grounds)
                """, new
            {
                provider = target.ProviderId,
                applicationId,
                stageNo = refusal.StageNo,
                stage = refusal.Stage,
                refusedAt = refusedAt.UtcDateTime,
                windowEnds = windowEnds.UtcDateTime,
                by = actor.Subject,
                now = now.UtcDateTime,
                grounds = trimmed,
            }, transaction);
            await connection.ExecuteAsync("UPDATE applications SET state = 'under_reconsideration' WHERE provider_id = @provider AND application_id = @applicationId", new { provider = target.ProviderId, applicationId }, transaction);
            await AddStageAsync(connection, transaction, target.ProviderId, applicationId, "reconsideration", actor, now, "requested", $"of the refusal at {refusal.Stage}: {trimmed}");
            await RecordAsync(connection, transaction, actor, now, target.ProviderId, "reconsideration", Key(applicationId, refusal.StageNo), "request", null,
                await ReconsiderationJsonAsync(connection, transaction, target.ProviderId, applicationId, refusal.StageNo));
            await RecordAsync(connection, transaction, actor, now, target.ProviderId, "application", Key(applicationId), "reconsideration_request", before,
                await ApplicationJsonAsync(connection, transaction, target.ProviderId, applicationId));
            return (await ReadReconsiderationAsync(connection, transaction, target.ProviderId, applicationId, refusal.StageNo))!;
        }, cancellationToken);
    }

    /// <summary>
    /// An operator decides the pending reconsideration. Upholding a refusal at the decision is only
    /// proposed under four-eyes: checked now, it takes effect on a second operator's approval.
    /// </summary>
    public async Task<ReconsiderationCase> DecideReconsiderationAsync(Actor actor, long applicationId, ReconsiderationRuling verdict, string reasons, CancellationToken cancellationToken)
    {
        string trimmed = Required(reasons, "reasons", "a reconsideration is decided with its reasons");
        if (!Enum.IsDefined(verdict))
        {
            throw new ReconsiderationRefusedException(ReconsiderationRefusal.FieldInvalid, "verdict must be uphold or dismiss");
        }

        return await InTransactionAsync(async (connection, transaction) =>
        {
            Target target = await LockTargetAsync(connection, transaction, applicationId, lockOrganisation: true)
                ?? throw new ReconsiderationRefusedException(ReconsiderationRefusal.ApplicationUnknown, $"there is no application {applicationId}");
            Pending pending = await RequirePendingAsync(connection, transaction, target);
            DateTimeOffset now = time.GetUtcNow();
            if (verdict == ReconsiderationRuling.Dismiss)
            {
                await DismissAsync(connection, transaction, actor, target, pending, trimmed, now);
                return (await ReadReconsiderationAsync(connection, transaction, target.ProviderId, applicationId, pending.StageNo))!;
            }

            bool singleOperator = await connection.ExecuteScalarAsync<bool>(
                "SELECT single_operator_decisions FROM admission_batches WHERE batch_id = @batch", new { batch = target.BatchId }, transaction);
            if (pending.RefusedStage != StageCall.Decision || singleOperator)
            {
                await UpholdAsync(connection, transaction, actor, applicationId, trimmed, now);
                return (await ReadReconsiderationAsync(connection, transaction, target.ProviderId, applicationId, pending.StageNo))!;
            }

            // As with a proposed decision, the uphold runs now so that one that could never take
            // effect (the applicant listed since, its licence lapsed) is refused at once; what it
            // wrote is rolled back, and it runs again on approval.
            await transaction.SaveAsync(ProposalSavepoint, cancellationToken);
            await UpholdAsync(connection, transaction, actor, applicationId, trimmed, now);
            await transaction.RollbackAsync(ProposalSavepoint, cancellationToken);
            await ProposeAsync(connection, transaction, actor, target.ProviderId, applicationId, new StageCall(StageCall.Reconsideration, true, 0, trimmed), now);
            return (await ReadReconsiderationAsync(connection, transaction, target.ProviderId, applicationId, pending.StageNo))!;
        }, cancellationToken);
    }

    /// <summary>
    /// Sets the refusal aside: the application goes back to the stage refused at, or, refused at
    /// the decision, on to the admission notice as an admitting decision would send it (eligibility
    /// checked again as of now). The caller holds the application's lock and has checked who may.
    /// </summary>
    private async Task UpholdAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, Actor actor, long applicationId, string reasons, DateTimeOffset now)
    {
        // The application is locked already; approval holds no organisation lock, and takes none
        // here, so that it never waits in the opposite order to a request or a notice.
        Target target = (await LockTargetAsync(connection, transaction, applicationId, lockOrganisation: false))!;
        Pending pending = await RequirePendingAsync(connection, transaction, target);
        string next = ReconsiderationRules.StateAfterUphold[pending.RefusedStage];
        await RequireItemFreeAsync(connection, transaction, target, now);
        if (pending.RefusedStage == StageCall.Decision)
        {
            await CheckStillEligibleAsync(connection, transaction, target.ProviderId, target.BatchId, now);
            await connection.ExecuteAsync("UPDATE applications SET decided_at = @now WHERE provider_id = @provider AND application_id = @applicationId", new { now = now.UtcDateTime, provider = target.ProviderId, applicationId }, transaction);
        }

        await CloseAsync(connection, transaction, actor, target, pending, "upheld", next, reasons, now,
            $"the refusal at {pending.RefusedStage} is set aside; {(next == "awaiting_admission_notice" ? "admitted, awaiting the admission notice" : $"back to {next}")}: {reasons}");
    }

    private static async Task DismissAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, Actor actor, Target target, Pending pending, string reasons, DateTimeOffset now)
    {
        // An uphold proposed and not yet approved falls with the dismissal.
        int? proposalNo = await connection.ExecuteScalarAsync<int?>(
            "SELECT proposal_no FROM stage_proposals WHERE provider_id = @provider AND application_id = @id AND closed_as IS NULL FOR UPDATE",
            new { provider = target.ProviderId, id = target.ApplicationId }, transaction);
        if (proposalNo is { } open)
        {
            var key = new { provider = target.ProviderId, id = target.ApplicationId, open };
            string? proposal = await RowJsonAsync(connection, transaction, "stage_proposals", "provider_id = @provider AND application_id = @id AND proposal_no = @open", key);
            await connection.ExecuteAsync("""
                UPDATE stage_proposals SET closed_as = 'superseded', closed_by = @by, closed_at = @now WHERE provider_id = @provider AND application_id = @id AND proposal_no = @open
                """, new { by = actor.Subject, now = now.UtcDateTime, provider = target.ProviderId, id = target.ApplicationId, open }, transaction);
            await RecordAsync(connection, transaction, actor, now, target.ProviderId, "proposal", Key(target.ApplicationId, open), "supersede", proposal,
                await RowJsonAsync(connection, transaction, "stage_proposals", "provider_id = @provider AND application_id = @id AND proposal_no = @open", key));
        }

        await CloseAsync(connection, transaction, actor, target, pending, "dismissed", "rejected", reasons, now, $"the refusal at {pending.RefusedStage} stands: {reasons}");
    }

    /// <summary>Records the decision on the reconsideration, moves the application, and writes the stage and both history entries.</summary>
    private static async Task CloseAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, Actor actor, Target target, Pending pending, string outcome, string next,
        string reasons, DateTimeOffset now, string stageReasons)
    {
        long applicationId = target.ApplicationId;
        string before = (await ApplicationJsonAsync(connection, transaction, target.ProviderId, applicationId))!;
        string reconsiderationBefore = (await ReconsiderationJsonAsync(connection, transaction, target.ProviderId, applicationId, pending.StageNo))!;
        await connection.ExecuteAsync("""
            UPDATE reconsiderations SET outcome = @outcome, decided_by = @by, decided_at = @now, reasons = @reasons, state_after = @next
            WHERE provider_id = @provider AND application_id = @applicationId AND refused_stage_no = @stageNo
            """, new { outcome, by = actor.Subject, now = now.UtcDateTime, reasons, next, provider = target.ProviderId, applicationId, stageNo = pending.StageNo }, transaction);
        await connection.ExecuteAsync("UPDATE applications SET state = @next WHERE provider_id = @provider AND application_id = @applicationId", new { next, provider = target.ProviderId, applicationId }, transaction);
        await AddStageAsync(connection, transaction, target.ProviderId, applicationId, "reconsideration", actor, now, outcome, stageReasons);
        string action = outcome == "upheld" ? "uphold" : "dismiss";
        await RecordAsync(connection, transaction, actor, now, target.ProviderId, "reconsideration", Key(applicationId, pending.StageNo), action, reconsiderationBefore,
            await ReconsiderationJsonAsync(connection, transaction, target.ProviderId, applicationId, pending.StageNo));
        await RecordAsync(connection, transaction, actor, now, target.ProviderId, "application", Key(applicationId), $"reconsideration_{action}", before,
            await ApplicationJsonAsync(connection, transaction, target.ProviderId, applicationId));
    }

    /// <summary>
    /// A rejection that overtakes a pending reconsideration (false materials found, the renewed
    /// admission ended early) closes it as dismissed with that rejection's reasons, so that no
    /// request is left pending on an application nobody can decide any more.
    /// </summary>
    private static async Task DismissOvertakenAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, Actor actor, string provider, long applicationId, string reasons, DateTimeOffset now)
    {
        int? stageNo = await connection.ExecuteScalarAsync<int?>(
            "SELECT refused_stage_no FROM reconsiderations WHERE provider_id = @provider AND application_id = @applicationId AND outcome IS NULL FOR UPDATE",
            new { provider, applicationId }, transaction);
        if (stageNo is not { } pending)
        {
            return;
        }

        string before = (await ReconsiderationJsonAsync(connection, transaction, provider, applicationId, pending))!;
        await connection.ExecuteAsync("""
            UPDATE reconsiderations SET outcome = 'dismissed', decided_by = @by, decided_at = @now, reasons = @reasons, state_after = 'rejected'
            WHERE provider_id = @provider AND application_id = @applicationId AND refused_stage_no = @pending
            """, new { by = actor.Subject, now = now.UtcDateTime, reasons, provider, applicationId, pending }, transaction);
        await RecordAsync(connection, transaction, actor, now, provider, "reconsideration", Key(applicationId, pending), "dismiss", before,
            await ReconsiderationJsonAsync(connection, transaction, provider, applicationId, pending));
    }

    /// <summary>The pending reconsideration; ALREADY_DECIDED when the latest one was just decided by someone, else NONE_PENDING.</summary>
    private static async Task<Pending> RequirePendingAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, Target target)
    {
        var pending = await connection.QueryFirstOrDefaultAsync<(int StageNo, string Stage)?>("""
            SELECT refused_stage_no, refused_stage FROM reconsiderations WHERE provider_id = @provider AND application_id = @id AND outcome IS NULL
            """, new { provider = target.ProviderId, id = target.ApplicationId }, transaction);
        if (pending is { } p && target.State == "under_reconsideration")
        {
            return new Pending(p.StageNo, p.Stage);
        }

        // When the application's latest stage is a reconsideration's decision, a second operator
        // came to a request another had just decided: say who, as a stage decided twice does.
        var latest = await connection.QueryFirstOrDefaultAsync<(string Stage, string Outcome)?>(
            "SELECT stage, outcome FROM application_stages WHERE provider_id = @provider AND application_id = @id ORDER BY stage_no DESC LIMIT 1", new { provider = target.ProviderId, id = target.ApplicationId }, transaction);
        var decided = await connection.QueryFirstOrDefaultAsync<(string By, DateTime At, string Outcome)?>("""
            SELECT decided_by, decided_at, outcome FROM reconsiderations WHERE provider_id = @provider AND application_id = @id AND outcome IS NOT NULL ORDER BY refused_stage_no DESC LIMIT 1
            """, new { provider = target.ProviderId, id = target.ApplicationId }, transaction);
        if (latest is ("reconsideration", "upheld" or "dismissed") && decided is { } d)
        {
            throw new ReconsiderationRefusedException(ReconsiderationRefusal.AlreadyDecided,
                $"the reconsideration of application {target.ApplicationId} was already decided by {d.By} at {ShanghaiTime.LocalMinutes(ShanghaiTime.Instant(d.At))} ({d.Outcome}); it is now {target.State}",
                new Dictionary<string, string> { ["actor"] = d.By, ["outcome"] = d.Outcome, ["state"] = target.State });
        }

        throw new ReconsiderationRefusedException(ReconsiderationRefusal.NonePending, $"application {target.ApplicationId} has no reconsideration awaiting a decision; it is {target.State}",
            new Dictionary<string, string> { ["state"] = target.State });
    }

    /// <summary>
    /// The refused application may go on only if its service item is not admitted under another
    /// application meanwhile (a renewal goes on beside the admission it renews): otherwise the item
    /// would be admitted twice.
    /// </summary>
    private static async Task RequireItemFreeAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, Target target, DateTimeOffset now)
    {
        long? other = await connection.ExecuteScalarAsync<long?>("""
            SELECT s.application_id FROM service_items s
            WHERE s.provider_id = @provider AND s.service_item = @item AND s.end_kind IS NULL AND s.validity_ends_at > @now
              AND s.application_id IS DISTINCT FROM (SELECT renews_application_id FROM applications WHERE provider_id = @provider AND application_id = @id)
            ORDER BY s.valid_from DESC LIMIT 1
            """, new { provider = target.ProviderId, item = target.ServiceItem, now = now.UtcDateTime, id = target.ApplicationId }, transaction);
        if (other is { } admitted)
        {
            throw new ReconsiderationRefusedException(ReconsiderationRefusal.ServiceItemTaken,
                $"service item '{target.ServiceItem}' of {target.ProviderId} is admitted under application {admitted}; the refused application cannot go on beside it");
        }
    }

    private static async Task<Target?> LockTargetAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, long applicationId, bool lockOrganisation)
    {
        // The organisation is locked before the application, in the order every change that
        // takes both locks uses, so that two such changes cannot deadlock.
        string? provider = await ProviderOfApplicationAsync(connection, transaction, applicationId);
        if (provider is not null && lockOrganisation)
        {
            await LockOrganisationAsync(connection, transaction, provider);
        }

        return await connection.QueryFirstOrDefaultAsync<Target>("""
            SELECT application_id AS ApplicationId, provider_id AS ProviderId, batch_id AS BatchId, service_item AS ServiceItem, state AS State
            FROM applications WHERE provider_id = @provider AND application_id = @applicationId FOR UPDATE
            """, new { provider, applicationId }, transaction);
    }

    private static async Task<ReconsiderationCase?> ReadReconsiderationAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string provider, long applicationId, int stageNo)
    {
        var row = await connection.QueryFirstOrDefaultAsync<ReconsiderationRecord>("""
            SELECT r.application_id AS ApplicationId, r.provider_id AS ProviderId, r.refused_stage AS RefusedStage, r.refused_at AS RefusedAt, r.window_ends_at AS WindowEndsAt,
                   r.requested_by AS RequestedBy, r.requested_at AS RequestedAt, r.grounds AS Grounds, r.outcome AS Outcome, r.decided_by AS DecidedBy,
                   r.decided_at AS DecidedAt, r.reasons AS Reasons, a.state AS State,
                   coalesce((SELECT p.proposal_no FROM stage_proposals p WHERE p.provider_id = r.provider_id AND p.application_id = r.application_id AND p.closed_as IS NULL AND p.stage = 'reconsideration'
                             AND r.outcome IS NULL), 0) AS PendingProposalNo
            FROM reconsiderations r JOIN applications a USING (provider_id, application_id)
            WHERE r.provider_id = @provider AND r.application_id = @applicationId AND r.refused_stage_no = @stageNo
            """, new { provider, applicationId, stageNo }, transaction);
        return row is null ? null : new ReconsiderationCase(
            row.ApplicationId,
            row.ProviderId,
            row.RefusedStage,
            ShanghaiTime.Instant(row.RefusedAt),
            ShanghaiTime.Instant(row.WindowEndsAt),
            row.RequestedBy,
            ShanghaiTime.Instant(row.RequestedAt),
            row.Grounds,
            row.Outcome switch
            {
                "upheld" => ReconsiderationProgress.Upheld,
                "dismissed" => ReconsiderationProgress.Dismissed,
                _ => ReconsiderationProgress.Pending,
            },
            row.DecidedBy,
            row.DecidedAt is { } decided ? ShanghaiTime.Instant(decided) : null,
            row.Reasons,
            row.State,
            row.PendingProposalNo);
    }

    private static Task<string?> ReconsiderationJsonAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string provider, long applicationId, int stageNo) =>
        RowJsonAsync(connection, transaction, "reconsiderations", "provider_id = @provider AND application_id = @applicationId AND refused_stage_no = @stageNo", new { provider, applicationId, stageNo });

    private static string Required(string text, string field, string missing)
    {
        string trimmed = text.Trim();
        if (trimmed.Length == 0)
        {
            throw new ReconsiderationRefusedException(ReconsiderationRefusal.ReasonRequired, missing);
        }

        if (trimmed.Length > ReasonsMax)
        {
            throw new ReconsiderationRefusedException(ReconsiderationRefusal.FieldInvalid, $"{field} are at most {ReasonsMax} characters");
        }

        return trimmed;
    }

    private static string Key(long applicationId, int stageNo) => string.Create(CultureInfo.InvariantCulture, $"{applicationId}/{stageNo}");

    private sealed record Target(long ApplicationId, string ProviderId, string BatchId, string ServiceItem, string State);

    private sealed record Pending(int StageNo, string RefusedStage);

    private sealed class ReconsiderationRecord
    {
        public long ApplicationId { get; init; }
        public string ProviderId { get; init; } = "";
        public string RefusedStage { get; init; } = "";
        public DateTime RefusedAt { get; init; }
        public DateTime WindowEndsAt { get; init; }
        public string RequestedBy { get; init; } = "";
        public DateTime RequestedAt { get; init; }
        public string Grounds { get; init; } = "";
        public string? Outcome { get; init; }
        public string? DecidedBy { get; init; }
        public DateTime? DecidedAt { get; init; }
        public string? Reasons { get; init; }
        public string State { get; init; } = "";
        public int PendingProposalNo { get; init; }
    }
}
