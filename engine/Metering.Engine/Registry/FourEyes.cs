using Dapper;
using Metering.Engine.Access;
using Npgsql;

namespace Metering.Engine.Registry;

/// <summary>
/// A verification or admission decision as one operator calls it. Under four-eyes it is a
/// proposal until a second, different operator approves it.
/// </summary>
internal sealed record StageCall(string Stage, bool Pass, long VerifiedFp16Gflops, string Reasons, IReadOnlyList<VerifierPart>? Parts = null)
{
    public const string Verification = "verification";
    public const string Decision = "decision";

    /// <summary>Upholding a refusal at the decision, which admits (Reconsiderations.cs).</summary>
    public const string Reconsideration = "reconsideration";

    /// <summary>The commissioned verifier's parts (verification only).</summary>
    public IReadOnlyList<VerifierPart> VerifierParts => Parts ?? [];

    /// <summary>
    /// The admission decision always needs a second operator; verification only when the
    /// operator typed a figure (a total or a verifier's part). A figure taken from the capacity
    /// service's fleet validation was measured by the server, not typed, so one operator may
    /// record it.
    /// </summary>
    public bool NeedsSecondOperator => Stage == Decision || VerifiedFp16Gflops > 0 || VerifierParts.Count > 0;
}

/// <summary>
/// Four-eyes on the registry's two decisions an operator could wave through alone: the
/// admission decision and a typed verification figure. The proposal is checked by the stage's
/// own rule when it is made (so one that could never take effect is refused at once) and again
/// when it is approved, as of then.
/// </summary>
public sealed partial class ProviderRegistry
{
    private const string ProposalSavepoint = "four_eyes_proposal";

    /// <summary>
    /// Approves the application's pending proposal: the stage takes effect as proposed, checked
    /// again now, recorded under both operators' names.
    /// </summary>
    public Task<Application> ApproveProposalAsync(Actor approver, long applicationId, uint proposalNo, CancellationToken cancellationToken) =>
        InTransactionAsync(async (connection, transaction) =>
        {
            ApplicationRow row = await LockApplicationAsync(connection, transaction, applicationId);
            ProposalRow? open = await connection.QueryFirstOrDefaultAsync<ProposalRow>("""
                SELECT proposal_no AS ProposalNo, stage AS Stage, pass AS Pass, verified_fp16_gflops AS VerifiedFp16Gflops, reasons AS Reasons, proposed_by AS ProposedBy
                FROM stage_proposals WHERE provider_id = @provider AND application_id = @applicationId AND closed_as IS NULL
                """, new { provider = row.ProviderId, applicationId }, transaction);
            if (open is null)
            {
                // Of two approvals racing, the second finds the stage decided: say so, and by whom.
                string? approvedStage = await connection.ExecuteScalarAsync<string?>(
                    "SELECT stage FROM stage_proposals WHERE provider_id = @provider AND application_id = @applicationId AND proposal_no = @no AND closed_as = 'approved'",
                    new { provider = row.ProviderId, applicationId, no = (int)proposalNo }, transaction);
                throw approvedStage is not null
                    ? await StageConflictAsync(connection, transaction, row, approvedStage, $"proposal {proposalNo} was approved")
                    : new RegistryRefusedException(RegistryRefusalReason.NoPendingProposal, $"application {applicationId} has no proposal awaiting approval");
            }

            if (open.ProposalNo != proposalNo)
            {
                throw new RegistryRefusedException(RegistryRefusalReason.ProposalChanged,
                    $"proposal {proposalNo} of application {applicationId} is not the pending one; proposal {open.ProposalNo} ({open.Stage} by {open.ProposedBy}) is. Read it before approving");
            }

            if (string.Equals(open.ProposedBy, approver.Subject, StringComparison.Ordinal))
            {
                throw new RegistryRefusedException(RegistryRefusalReason.SameOperator,
                    $"{approver.Subject} proposed this {open.Stage}; a second, different operator must approve it");
            }

            var call = new StageCall(open.Stage, open.Pass, open.VerifiedFp16Gflops, open.Reasons,
                await VerificationParts.ReadProposedAsync(connection, transaction, row.ProviderId, applicationId, open.ProposalNo));
            await ExpectStateAsync(connection, transaction, row, call.Stage, ExpectedState(call.Stage));
            DateTimeOffset now = time.GetUtcNow();
            await connection.ExecuteAsync("""
                UPDATE stage_proposals SET closed_as = 'approved', closed_by = @by, closed_at = @now
                WHERE provider_id = @provider AND application_id = @applicationId AND proposal_no = @no
                """, new { by = approver.Subject, now = now.UtcDateTime, provider = row.ProviderId, applicationId, no = (int)open.ProposalNo }, transaction);
            Actor both = approver with { Subject = $"{open.ProposedBy}, approved by {approver.Subject}" };
            if (call.Stage == StageCall.Reconsideration)
            {
                await UpholdAsync(connection, transaction, both, applicationId, call.Reasons, now);
                return (await ReadApplicationAsync(connection, transaction, row.ProviderId, applicationId, details: true))!;
            }

            return await ApplyStageAsync(connection, transaction, both, row, call.Stage, call.Stage, RuleFor(call), now);
        }, cancellationToken);

    /// <summary>Decides at once where one operator may; otherwise checks the call and records it as the pending proposal.</summary>
    private Task<Application> DecideOrProposeAsync(Actor actor, long applicationId, StageCall call, CancellationToken cancellationToken) =>
        InTransactionAsync(async (connection, transaction) =>
        {
            ApplicationRow row = await LockApplicationAsync(connection, transaction, applicationId);
            await ExpectStateAsync(connection, transaction, row, call.Stage, ExpectedState(call.Stage));
            DateTimeOffset now = time.GetUtcNow();
            StageRule rule = RuleFor(call);
            bool singleOperator = await connection.ExecuteScalarAsync<bool>(
                "SELECT single_operator_decisions FROM admission_batches WHERE batch_id = @batch", new { batch = row.BatchId }, transaction);
            if (!call.NeedsSecondOperator || singleOperator)
            {
                return await ApplyStageAsync(connection, transaction, actor, row, call.Stage, call.Stage, rule, now);
            }

            // The rule runs now so that a proposal that could never take effect is refused at
            // once with its reason; what it wrote is rolled back, and it runs again on approval.
            await transaction.SaveAsync(ProposalSavepoint, cancellationToken);
            await rule(connection, transaction, row, now);
            await transaction.RollbackAsync(ProposalSavepoint, cancellationToken);

            await ProposeAsync(connection, transaction, actor, row.ProviderId, applicationId, call, now);
            return (await ReadApplicationAsync(connection, transaction, row.ProviderId, applicationId, details: true))!;
        }, cancellationToken);

    /// <summary>Records <paramref name="call"/> as the application's pending proposal, superseding an open one, and returns its number.</summary>
    private static async Task<int> ProposeAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, Actor actor, string providerId, long applicationId, StageCall call, DateTimeOffset now)
    {
        string? superseded = await RowJsonAsync(connection, transaction, "stage_proposals", "provider_id = @provider AND application_id = @id AND closed_as IS NULL",
            new { provider = providerId, id = applicationId }, lockRow: true);
        await connection.ExecuteAsync("""
            UPDATE stage_proposals SET closed_as = 'superseded', closed_by = @by, closed_at = @now
            WHERE provider_id = @provider AND application_id = @id AND closed_as IS NULL
            """, new { by = actor.Subject, now = now.UtcDateTime, provider = providerId, id = applicationId }, transaction);
        int proposalNo = await connection.ExecuteScalarAsync<int>("""
            INSERT INTO stage_proposals (provider_id, application_id, proposal_no, stage, pass, verified_fp16_gflops, reasons, proposed_by, proposed_at)
            SELECT @provider, @id, coalesce(max(proposal_no), 0) + 1, @stage, @pass, @verified, @reasons, @by, @now
            FROM stage_proposals WHERE provider_id = @provider AND application_id = @id
            RETURNING proposal_no
            """, new { provider = providerId, id = applicationId, stage = call.Stage, pass = call.Pass, verified = call.VerifiedFp16Gflops, reasons = call.Reasons.Trim(), by = actor.Subject, now = now.UtcDateTime }, transaction);
        await VerificationParts.WriteProposedAsync(connection, transaction, providerId, applicationId, proposalNo, call.VerifierParts);
        await RecordAsync(connection, transaction, actor, now, providerId, "proposal", $"{applicationId}/{proposalNo}", "propose", superseded,
            await ProposalJsonAsync(connection, transaction, providerId, applicationId, proposalNo));
        return proposalNo;
    }

    private static ApplicationState ExpectedState(string stage) => stage switch
    {
        StageCall.Decision => ApplicationState.InPublicNotice,
        StageCall.Reconsideration => ApplicationState.UnderReconsideration,
        _ => ApplicationState.AwaitingVerification,
    };

    private StageRule RuleFor(StageCall call) => call.Stage == StageCall.Decision ? DecisionRule(call) : VerificationRule(call);

    private static async Task<StageProposal?> ReadPendingProposalAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string providerId, long applicationId)
    {
        var open = await connection.QueryFirstOrDefaultAsync<(int No, string Stage, bool Pass, long Verified, string Reasons, string By, long AtMs)?>("""
            SELECT proposal_no, stage, pass, verified_fp16_gflops, reasons, proposed_by, floor(extract(epoch FROM proposed_at) * 1000)::bigint
            FROM stage_proposals WHERE provider_id = @providerId AND application_id = @applicationId AND closed_as IS NULL
            """, new { providerId, applicationId }, transaction);
        return open is not { } p ? null : new StageProposal
        {
            ProposalNo = (uint)p.No,
            Stage = p.Stage,
            Pass = p.Pass,
            VerifiedFp16Gflops = p.Verified,
            Reasons = p.Reasons,
            ProposedBy = p.By,
            ProposedUnixMs = p.AtMs,
        };
    }

    /// <summary>A proposal as history shows it: its row, with the commissioned verifier's parts proposed, if any.</summary>
    private static Task<string?> ProposalJsonAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string providerId, long applicationId, int proposalNo) =>
        connection.ExecuteScalarAsync<string?>("""
            SELECT (to_jsonb(s) || coalesce((
                SELECT jsonb_build_object('verifier_parts', jsonb_agg(jsonb_build_object('device_model', p.device_model, 'devices', p.devices, 'fp16_gflops', p.fp16_gflops)
                                                                      ORDER BY p.device_model COLLATE "C"))
                FROM stage_proposal_parts p WHERE p.provider_id = s.provider_id AND p.application_id = s.application_id AND p.proposal_no = s.proposal_no
                HAVING count(*) > 0), '{}'::jsonb))::text
            FROM stage_proposals s WHERE s.provider_id = @providerId AND s.application_id = @applicationId AND s.proposal_no = @proposalNo
            """, new { providerId, applicationId, proposalNo }, transaction);

    private sealed record ProposalRow(int ProposalNo, string Stage, bool Pass, long VerifiedFp16Gflops, string Reasons, string ProposedBy);
}
