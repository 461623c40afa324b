using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Catalog;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Registry;

/// <summary>Consultation and public notice, and the objections recorded while the notice runs.</summary>
public sealed partial class ProviderRegistry
{
    /// <summary>Opens consultation and public notice for the batch's number of days (or rejects after consultation).</summary>
    public Task<Application> OpenPublicNoticeAsync(Actor actor, OperatorDecision decision, CancellationToken cancellationToken) =>
        DecideStageAsync(actor, decision.ApplicationId, "public_notice", ApplicationState.AwaitingPublicNotice, "public_notice", async (connection, transaction, row, now) =>
        {
            if (!decision.Pass)
            {
                return (ApplicationState.Rejected, "rejected", RequireReasons(decision.Reasons, "a rejection needs its reasons"));
            }

            int days = await connection.ExecuteScalarAsync<int>("SELECT public_notice_days FROM admission_batches WHERE batch_id = @b", new { b = row.BatchId }, transaction);
            DateTimeOffset ends = now.AddDays(days);
            await connection.ExecuteAsync("UPDATE applications SET notice_ends_at = @ends WHERE provider_id = @code AND application_id = @id", new { ends = ends.UtcDateTime, code = row.ProviderId, id = row.ApplicationId }, transaction);
            return (ApplicationState.InPublicNotice, "opened", Join($"public notice for {days} day(s), until {ends.ToOffset(ShanghaiTime.Offset):yyyy-MM-dd HH:mm} Asia/Shanghai", decision.Reasons));
        }, cancellationToken);

    public async Task<Application> RecordObjectionAsync(Actor actor, Objection objection, CancellationToken cancellationToken)
    {
        string objector = objection.Objector.Trim();
        string content = objection.Content.Trim();
        if (objector.Length is 0 or > 200 || content.Length is 0 or > ReasonsMax)
        {
            throw FilingRules.Invalid($"an objection needs the objector (1 to 200 characters) and its content (1 to {ReasonsMax})");
        }

        return await InTransactionAsync(async (connection, transaction) =>
        {
            ApplicationRow row = await LockApplicationAsync(connection, transaction, objection.ApplicationId);
            DateTimeOffset now = time.GetUtcNow();
            // An objection raised during the notice may reach the operator after the period ends;
            // it is recorded until the decision, which must then answer it.
            if (row.State != ApplicationState.InPublicNotice)
            {
                throw new RegistryRefusedException(RegistryRefusalReason.WrongStage, $"objections are recorded between public notice and the decision; application {row.ApplicationId} is {Names.Of(row.State)}");
            }

            int stageNo = await AddStageAsync(connection, transaction, row.ProviderId, row.ApplicationId, "objection", actor, now, "recorded", $"{objector}: {content}");
            await RecordAsync(connection, transaction, actor, now, row.ProviderId, "objection", $"{row.ApplicationId}/{stageNo}", "record", null,
                await RowJsonAsync(connection, transaction, "application_stages", "provider_id = @code AND application_id = @id AND stage_no = @stageNo", new { code = row.ProviderId, id = row.ApplicationId, stageNo }));
            return (await ReadApplicationAsync(connection, transaction, row.ProviderId, row.ApplicationId, details: true))!;
        }, cancellationToken);
    }
}
