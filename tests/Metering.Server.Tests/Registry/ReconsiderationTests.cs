using System.Globalization;
using System.Text.Json;
using Dapper;
using Grpc.Core;
using Metering.Engine.Access;
using Metering.Engine.Sandbox;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Server.Tests.Sandbox;
using Metering.Fixtures;
using Npgsql;

namespace Metering.Server.Tests.Registry;

/// <summary>
/// Reconsideration (复核) of a refusal through the real server and database: the applicant asks
/// within its batch's days, counted on the server's clock, an operator decides with reasons, and
/// every cheat (late, twice, someone else's application, the provider deciding, one operator
/// admitting alone) is refused and changes nothing.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class ReconsiderationTests(PostgresFixture postgres)
{
    private const string Grounds = "The tax certificate was filed under the wrong kind; the document itself is in the file.";

    [Fact]
    public async Task An_upheld_reconsideration_sends_the_application_back_to_the_stage_it_was_refused_at_and_the_history_says_who_why_and_when()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key, id) = await RejectedAtReviewAsync(scene);
        DateTimeOffset refusedAt = scene.Clock.GetUtcNow();
        scene.Clock.Advance(TimeSpan.FromDays(2));

        Reconsideration requested = await scene.Client.RequestReconsiderationAsync(new RequestReconsiderationRequest { ApplicationId = id, Grounds = Grounds }, key);

        Assert.Equal(ReconsiderationStatus.ReconsiderationPending, requested.Status);
        Assert.Equal(("material_review", code, ApplicationState.UnderReconsideration), (requested.RefusedStage, requested.RequestedBy, requested.ApplicationState));
        Assert.Equal(refusedAt.AddDays(15).ToUnixTimeMilliseconds(), requested.WindowEndsUnixMs);
        // Under reconsideration the item counts as in progress: no second application beside it.
        RpcException second = await Assert.ThrowsAsync<RpcException>(() => scene.Client.FileApplicationAsync(RegistryScene.Filing(code), key).ResponseAsync);
        Assert.Equal("SERVICE_ITEM_TAKEN", IngestCall.Reason(second));

        scene.Clock.Advance(TimeSpan.FromDays(1));
        Reconsideration upheld = await scene.Client.DecideReconsiderationAsync(new DecideReconsiderationRequest
        {
            ApplicationId = id,
            Verdict = ReconsiderationVerdict.ReconsiderationUphold,
            Reasons = "The certificate is there; review it again.",
        }, RegistryScene.Operator);

        Assert.Equal((ReconsiderationStatus.ReconsiderationUpheld, ApplicationState.AwaitingMaterialReview), (upheld.Status, upheld.ApplicationState));
        Assert.Equal(("operator-one", "The certificate is there; review it again."), (upheld.DecidedBy, upheld.Reasons));
        Application application = await scene.Client.GetApplicationAsync(new GetApplicationRequest { ApplicationId = id }, key);
        Assert.Equal(
            new[] { ("filing", "recorded"), ("material_review", "rejected"), ("reconsideration", "requested"), ("reconsideration", "upheld") },
            application.Stages.Select(s => (s.Stage_, s.Outcome)));
        Assert.Contains(Grounds, application.Stages[2].Reasons, StringComparison.Ordinal);

        GetHistoryResponse history = await scene.Client.GetHistoryAsync(new GetHistoryRequest { CreditCode = code }, RegistryScene.Operator);
        HistoryEntry request = history.Entries.Single(e => e.Entity == "reconsideration" && e.Action == "request");
        HistoryEntry decision = history.Entries.Single(e => e.Entity == "reconsideration" && e.Action == "uphold");
        Assert.Equal((code, "provider", ""), (request.Actor, request.Role, request.BeforeJson));
        Assert.Equal(Grounds, Json(request.AfterJson, "grounds"));
        Assert.Equal(("operator-one", "operator"), (decision.Actor, decision.Role));
        Assert.Equal((JsonValueKind.Null, "upheld", "awaiting_material_review"),
            (JsonDocument.Parse(decision.BeforeJson).RootElement.GetProperty("outcome").ValueKind, Json(decision.AfterJson, "outcome"), Json(decision.AfterJson, "state_after")));
        HistoryEntry moved = history.Entries.Single(e => e.Entity == "application" && e.Action == "reconsideration_uphold");
        Assert.Equal(("under_reconsideration", "awaiting_material_review"), (Json(moved.BeforeJson, "state"), Json(moved.AfterJson, "state")));
        Assert.Equal(scene.Clock.GetUtcNow().ToUnixTimeMilliseconds(), decision.AtUnixMs);

        // Back at review, the application goes on as any other.
        Application reviewed = await scene.Client.ReviewMaterialsAsync(new StageDecision { ApplicationId = id, Pass = true }, RegistryScene.Operator);
        Assert.Equal(ApplicationState.AwaitingVerification, reviewed.State);
    }

    [Fact]
    public async Task A_dismissed_reconsideration_leaves_the_refusal_standing_and_a_second_request_is_refused()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (_, key, id) = await RejectedAtReviewAsync(scene);
        await scene.Client.RequestReconsiderationAsync(new RequestReconsiderationRequest { ApplicationId = id, Grounds = Grounds }, key);

        Reconsideration dismissed = await scene.Client.DecideReconsiderationAsync(new DecideReconsiderationRequest
        {
            ApplicationId = id,
            Verdict = ReconsiderationVerdict.ReconsiderationDismiss,
            Reasons = "The certificate filed is for 2023.",
        }, RegistryScene.Operator);

        Assert.Equal((ReconsiderationStatus.ReconsiderationDismissed, ApplicationState.Rejected), (dismissed.Status, dismissed.ApplicationState));
        long changes = await ChangesAsync(scene);
        RpcException twice = await Assert.ThrowsAsync<RpcException>(() => scene.Client.RequestReconsiderationAsync(
            new RequestReconsiderationRequest { ApplicationId = id, Grounds = "Please look again." }, key).ResponseAsync);
        Assert.Equal((StatusCode.AlreadyExists, "RECONSIDERATION_ALREADY_REQUESTED"), (twice.StatusCode, IngestCall.Reason(twice)));

        // A second operator arriving at the decided request is told who decided it.
        RpcException again = await Assert.ThrowsAsync<RpcException>(() => scene.Client.DecideReconsiderationAsync(new DecideReconsiderationRequest
        {
            ApplicationId = id,
            Verdict = ReconsiderationVerdict.ReconsiderationUphold,
            Reasons = "I would have upheld it.",
        }, RegistryScene.SecondOperator).ResponseAsync);
        Assert.Equal((StatusCode.Aborted, "ALREADY_DECIDED", "operator-one"), (again.StatusCode, IngestCall.Reason(again), IngestCall.Metadata(again, "actor")));
        Assert.Equal(("rejected", changes), (await StateAsync(scene, id), await ChangesAsync(scene)));
    }

    [Fact]
    public async Task A_request_one_minute_after_the_window_is_refused_and_one_a_minute_before_it_is_taken()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        AdmissionBatch batch = (await scene.Client.ListAdmissionBatchesAsync(new ListAdmissionBatchesRequest(), RegistryScene.Operator)).Batches.Single(b => b.BatchId == RegistryScene.Batch);
        Assert.Equal(15U, batch.ReconsiderationDays);
        batch.ReconsiderationDays = 3;
        Assert.Equal(3U, (await scene.Client.PutAdmissionBatchAsync(batch, RegistryScene.Operator)).ReconsiderationDays);
        var (_, earlyKey, early) = await RejectedAtReviewAsync(scene);
        var (_, lateKey, late) = await RejectedAtReviewAsync(scene);
        DateTimeOffset windowEnds = scene.Clock.GetUtcNow().AddDays(3);

        scene.Clock.Advance(TimeSpan.FromDays(3) - TimeSpan.FromMinutes(1));
        Reconsideration taken = await scene.Client.RequestReconsiderationAsync(new RequestReconsiderationRequest { ApplicationId = early, Grounds = Grounds }, earlyKey);
        scene.Clock.Advance(TimeSpan.FromMinutes(2));
        long changes = await ChangesAsync(scene);
        RpcException refused = await Assert.ThrowsAsync<RpcException>(() => scene.Client.RequestReconsiderationAsync(
            new RequestReconsiderationRequest { ApplicationId = late, Grounds = Grounds }, lateKey).ResponseAsync);

        Assert.Equal(ApplicationState.UnderReconsideration, taken.ApplicationState);
        Assert.Equal((StatusCode.FailedPrecondition, "RECONSIDERATION_WINDOW_CLOSED"), (refused.StatusCode, IngestCall.Reason(refused)));
        Assert.Equal(windowEnds.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture), IngestCall.Metadata(refused, "window_ends_unix_ms"));
        Assert.Equal(("rejected", changes), (await StateAsync(scene, late), await ChangesAsync(scene)));
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM reconsiderations WHERE application_id = @late", new { late }));

        batch.ReconsiderationDays = 61;
        RpcException tooLong = await Assert.ThrowsAsync<RpcException>(() => scene.Client.PutAdmissionBatchAsync(batch, RegistryScene.Operator).ResponseAsync);
        Assert.Equal((StatusCode.InvalidArgument, "FIELD_INVALID"), (tooLong.StatusCode, IngestCall.Reason(tooLong)));
        batch.ReconsiderationDays = 0;
        Assert.Equal(15U, (await scene.Client.PutAdmissionBatchAsync(batch, RegistryScene.Operator)).ReconsiderationDays);
    }

    [Fact]
    public async Task Upholding_a_refusal_at_the_decision_admits_only_when_a_second_operator_approves()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (_, key, id) = await RejectedAtDecisionAsync(scene);
        await scene.Client.RequestReconsiderationAsync(new RequestReconsiderationRequest { ApplicationId = id, Grounds = "The objection was about another company." }, key);

        Reconsideration proposed = await scene.Client.DecideReconsiderationAsync(new DecideReconsiderationRequest
        {
            ApplicationId = id,
            Verdict = ReconsiderationVerdict.ReconsiderationUphold,
            Reasons = "The objector confused the two companies.",
        }, RegistryScene.Operator);

        Assert.Equal((ReconsiderationStatus.ReconsiderationPending, ApplicationState.UnderReconsideration), (proposed.Status, proposed.ApplicationState));
        Assert.NotEqual(0U, proposed.PendingProposalNo);
        Application pending = await scene.Client.GetApplicationAsync(new GetApplicationRequest { ApplicationId = id }, RegistryScene.Operator);
        Assert.Equal(("reconsideration", true, proposed.PendingProposalNo), (pending.PendingProposal.Stage, pending.PendingProposal.Pass, pending.PendingProposal.ProposalNo));

        // The operator who proposed the uphold cannot approve it, nor wave it through by deciding again.
        RpcException alone = await Assert.ThrowsAsync<RpcException>(() => scene.Client.ApproveProposalAsync(
            new ApproveProposalRequest { ApplicationId = id, ProposalNo = proposed.PendingProposalNo }, RegistryScene.Operator).ResponseAsync);
        Assert.Equal((StatusCode.PermissionDenied, "SAME_OPERATOR"), (alone.StatusCode, IngestCall.Reason(alone)));
        Reconsideration again = await scene.Client.DecideReconsiderationAsync(new DecideReconsiderationRequest
        {
            ApplicationId = id,
            Verdict = ReconsiderationVerdict.ReconsiderationUphold,
            Reasons = "Still upheld.",
        }, RegistryScene.Operator);
        Assert.Equal(ApplicationState.UnderReconsideration, again.ApplicationState);
        Assert.Equal("under_reconsideration", await StateAsync(scene, id));
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM reconsiderations WHERE application_id = @id AND outcome IS NOT NULL", new { id }));

        Application approved = await scene.Client.ApproveProposalAsync(
            new ApproveProposalRequest { ApplicationId = id, ProposalNo = again.PendingProposalNo }, RegistryScene.SecondOperator);

        Assert.Equal(ApplicationState.AwaitingAdmissionNotice, approved.State);
        Stage upheld = approved.Stages.Last();
        Assert.Equal(("reconsideration", "upheld", "operator-one, approved by operator-two"), (upheld.Stage_, upheld.Outcome, upheld.Actor));
        Assert.Contains("Still upheld.", upheld.Reasons, StringComparison.Ordinal);
        Application admitted = await scene.Client.IssueAdmissionNoticeAsync(new IssueAdmissionNoticeRequest { ApplicationId = id, NoticeNumber = $"复核-{id}" }, RegistryScene.Operator);
        Assert.Equal(ApplicationState.Admitted, admitted.State);
    }

    [Fact]
    public async Task Neither_the_provider_nor_an_auditor_can_decide_a_reconsideration()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (_, key, id) = await RejectedAtReviewAsync(scene);
        await scene.Client.RequestReconsiderationAsync(new RequestReconsiderationRequest { ApplicationId = id, Grounds = Grounds }, key);
        long changes = await ChangesAsync(scene);

        foreach (Metadata notOperator in new[] { key, TestServer.Bearer(TestServer.AuditorKey) })
        {
            RpcException refused = await Assert.ThrowsAsync<RpcException>(() => scene.Client.DecideReconsiderationAsync(new DecideReconsiderationRequest
            {
                ApplicationId = id,
                Verdict = ReconsiderationVerdict.ReconsiderationUphold,
                Reasons = "I agree with myself.",
            }, notOperator).ResponseAsync);
            Assert.Equal((StatusCode.PermissionDenied, "ROLE_NOT_ALLOWED"), (refused.StatusCode, IngestCall.Reason(refused)));
        }

        // Nor may an operator ask in the applicant's name.
        RpcException operatorAsks = await Assert.ThrowsAsync<RpcException>(() => scene.Client.RequestReconsiderationAsync(
            new RequestReconsiderationRequest { ApplicationId = id, Grounds = Grounds }, RegistryScene.Operator).ResponseAsync);
        Assert.Equal("ROLE_NOT_ALLOWED", IngestCall.Reason(operatorAsks));
        Assert.Equal(("under_reconsideration", changes), (await StateAsync(scene, id), await ChangesAsync(scene)));
    }

    [Fact]
    public async Task Another_provider_cannot_ask_for_reconsideration_and_learns_no_more_than_of_an_id_that_does_not_exist()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (_, _, id) = await RejectedAtReviewAsync(scene);
        var (_, otherKey) = await scene.RegisterAsync();
        long changes = await ChangesAsync(scene);
        long missing = id + 1_000_000;

        RpcException other = await Assert.ThrowsAsync<RpcException>(() => scene.Client.RequestReconsiderationAsync(
            new RequestReconsiderationRequest { ApplicationId = id, Grounds = Grounds }, otherKey).ResponseAsync);
        RpcException unknown = await Assert.ThrowsAsync<RpcException>(() => scene.Client.RequestReconsiderationAsync(
            new RequestReconsiderationRequest { ApplicationId = missing, Grounds = Grounds }, otherKey).ResponseAsync);

        Assert.Equal((StatusCode.NotFound, "APPLICATION_UNKNOWN"), (other.StatusCode, IngestCall.Reason(other)));
        Assert.Equal(unknown.Status.Detail.Replace(missing.ToString(CultureInfo.InvariantCulture), "ID", StringComparison.Ordinal),
            other.Status.Detail.Replace(id.ToString(CultureInfo.InvariantCulture), "ID", StringComparison.Ordinal));
        Assert.Equal(("rejected", changes), (await StateAsync(scene, id), await ChangesAsync(scene)));
    }

    [Fact]
    public async Task Reconsideration_of_an_application_not_refused_or_refused_for_false_materials_is_refused_and_so_is_a_decision_with_none_pending()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key) = await scene.RegisterAsync();
        long inProgress = (await scene.Client.FileApplicationAsync(RegistryScene.Filing(code), key)).ApplicationId;
        var (_, rejectedKey, rejected) = await RejectedAtReviewAsync(scene);
        long changes = await ChangesAsync(scene);

        RpcException notRejected = await Assert.ThrowsAsync<RpcException>(() => scene.Client.RequestReconsiderationAsync(
            new RequestReconsiderationRequest { ApplicationId = inProgress, Grounds = Grounds }, key).ResponseAsync);
        RpcException noGrounds = await Assert.ThrowsAsync<RpcException>(() => scene.Client.RequestReconsiderationAsync(
            new RequestReconsiderationRequest { ApplicationId = rejected, Grounds = "  " }, rejectedKey).ResponseAsync);
        RpcException nonePending = await Assert.ThrowsAsync<RpcException>(() => scene.Client.DecideReconsiderationAsync(new DecideReconsiderationRequest
        {
            ApplicationId = rejected,
            Verdict = ReconsiderationVerdict.ReconsiderationUphold,
            Reasons = "Nobody asked.",
        }, RegistryScene.Operator).ResponseAsync);
        RpcException noVerdict = await Assert.ThrowsAsync<RpcException>(() => scene.Client.DecideReconsiderationAsync(
            new DecideReconsiderationRequest { ApplicationId = rejected, Reasons = "Which way?" }, RegistryScene.Operator).ResponseAsync);

        Assert.Equal((StatusCode.FailedPrecondition, "APPLICATION_NOT_REJECTED"), (notRejected.StatusCode, IngestCall.Reason(notRejected)));
        Assert.Equal((StatusCode.InvalidArgument, "REASON_REQUIRED"), (noGrounds.StatusCode, IngestCall.Reason(noGrounds)));
        Assert.Equal((StatusCode.FailedPrecondition, "NO_PENDING_RECONSIDERATION"), (nonePending.StatusCode, IngestCall.Reason(nonePending)));
        Assert.Equal((StatusCode.InvalidArgument, "FIELD_INVALID"), (noVerdict.StatusCode, IngestCall.Reason(noVerdict)));
        Assert.Equal(changes, await ChangesAsync(scene));

        await scene.Client.RecordFalseMaterialsAsync(new RecordFalseMaterialsRequest { CreditCode = code, Reasons = "The capacity proof was forged." }, RegistryScene.Operator);
        RpcException falseMaterials = await Assert.ThrowsAsync<RpcException>(() => scene.Client.RequestReconsiderationAsync(
            new RequestReconsiderationRequest { ApplicationId = inProgress, Grounds = Grounds }, key).ResponseAsync);
        Assert.Equal((StatusCode.FailedPrecondition, "NOT_RECONSIDERABLE"), (falseMaterials.StatusCode, IngestCall.Reason(falseMaterials)));
        Assert.Equal("rejected", await StateAsync(scene, inProgress));
    }

    [Fact]
    public async Task False_materials_found_during_a_reconsideration_close_it_as_dismissed_and_nothing_is_left_to_decide()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key, id) = await RejectedAtReviewAsync(scene);
        await scene.Client.RequestReconsiderationAsync(new RequestReconsiderationRequest { ApplicationId = id, Grounds = Grounds }, key);

        await scene.Client.RecordFalseMaterialsAsync(new RecordFalseMaterialsRequest { CreditCode = code, Reasons = "The tax certificate was forged." }, RegistryScene.Operator);

        var (outcome, reasons) = (await scene.Server.QueryAsync<(string, string)>("SELECT outcome, reasons FROM reconsiderations WHERE application_id = @id", new { id })).Single();
        Assert.Equal(("dismissed", "false materials: The tax certificate was forged."), (outcome, reasons));
        Assert.Equal("rejected", await StateAsync(scene, id));
        RpcException nothing = await Assert.ThrowsAsync<RpcException>(() => scene.Client.DecideReconsiderationAsync(new DecideReconsiderationRequest
        {
            ApplicationId = id,
            Verdict = ReconsiderationVerdict.ReconsiderationUphold,
            Reasons = "Too late to uphold.",
        }, RegistryScene.SecondOperator).ResponseAsync);
        Assert.Equal("NO_PENDING_RECONSIDERATION", IngestCall.Reason(nothing));
    }

    [Fact]
    public async Task In_a_sandbox_an_operator_moves_the_clock_past_the_window_and_the_request_is_then_refused()
    {
        string database = await postgres.CreateDatabaseAsync();
        await using (NpgsqlDataSource owner = Database.CreateDataSource(database))
        await using (NpgsqlConnection connection = await owner.OpenConnectionAsync())
        {
            // The test database holds seeded organisations, which the sandbox mark refuses; the
            // owner marks it with that trigger off, as SandboxClockTests does.
            await connection.ExecuteAsync("""
                ALTER TABLE sandbox_clock DISABLE TRIGGER sandbox_clock_mark_empty_only;
                INSERT INTO sandbox_clock DEFAULT VALUES ON CONFLICT DO NOTHING;
                ALTER TABLE sandbox_clock ENABLE TRIGGER sandbox_clock_mark_empty_only;
                """);
        }

        var clock = new SimulatedClock(0);
        await using TestServer server = await TestServer.StartAsync(postgres, time: clock, database: database);
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(server.ConnectionString);
        RegistryService.RegistryServiceClient client = server.RegistryClient();
        Metadata operatorKey = TestServer.Bearer(TestServer.OperatorKey);
        DateTimeOffset now = clock.GetUtcNow();
        await client.PutAdmissionBatchAsync(new AdmissionBatch
        {
            BatchId = "sandbox",
            WindowOpensUnixMs = now.AddDays(-1).ToUnixTimeMilliseconds(),
            WindowClosesUnixMs = now.AddDays(1).ToUnixTimeMilliseconds(),
            ValidityEndsUnixMs = now.AddDays(365).ToUnixTimeMilliseconds(),
            AuditReportYear = 2025,
            ReconsiderationDays = 2,
        }.WithGuideRules(), operatorKey);
        string code = RegistryScene.NewCode();
        await client.RegisterOrganisationAsync(new RegisterOrganisationRequest
        {
            Organisation = new Organisation { CreditCode = code, Name = "沙盒测试智算有限公司", LegalForm = LegalForm.Enterprise, District = "南山区", EstablishedOn = "2015-06-01" },
        }, operatorKey);
        await client.AddLicenceAsync(new AddLicenceRequest
        {
            Licence = new Licence { CreditCode = code, LicenceNumber = $"B1-{code[^6..]}", Issuer = "MIIT", ValidFrom = "2021-01-01", ValidUntil = "2035-12-31" },
        }, operatorKey);
        await Admissions.WriteProofAsync(dataSource, clock, code);
        Metadata key = TestServer.Bearer((await new CredentialStore(dataSource, clock).IssueAsync(Admissions.Operator, Role.Provider, code, "test", CancellationToken.None)).Key);
        FileApplicationRequest filing = Admissions.Filing(code);
        filing.BatchId = "sandbox";
        filing.AuditReportYear = 2025;
        long id = (await client.FileApplicationAsync(filing, key)).ApplicationId;
        await client.ReviewMaterialsAsync(new StageDecision { ApplicationId = id, Pass = false, Reasons = "No tax certificate on file." }, operatorKey);

        await new SandboxService.SandboxServiceClient(server.Channel).AdvanceClockAsync(
            new AdvanceClockRequest { ByMs = (long)(TimeSpan.FromDays(2) + TimeSpan.FromMinutes(1)).TotalMilliseconds }, operatorKey);
        RpcException late = await Assert.ThrowsAsync<RpcException>(() => client.RequestReconsiderationAsync(
            new RequestReconsiderationRequest { ApplicationId = id, Grounds = Grounds }, key).ResponseAsync);

        Assert.Equal("RECONSIDERATION_WINDOW_CLOSED", IngestCall.Reason(late));
        Assert.Equal("rejected", await server.ScalarAsync<string>("SELECT state FROM applications WHERE application_id = @id", new { id }));
    }

    [Fact]
    public async Task The_runtime_role_cannot_rewrite_a_request_or_a_decided_reconsideration()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (_, key, id) = await RejectedAtReviewAsync(scene);
        await scene.Client.RequestReconsiderationAsync(new RequestReconsiderationRequest { ApplicationId = id, Grounds = Grounds }, key);

        var grounds = await Assert.ThrowsAsync<PostgresException>(() => scene.Server.ExecuteAsync("UPDATE reconsiderations SET grounds = 'better grounds' WHERE application_id = @id", new { id }));
        await scene.Client.DecideReconsiderationAsync(new DecideReconsiderationRequest
        {
            ApplicationId = id,
            Verdict = ReconsiderationVerdict.ReconsiderationDismiss,
            Reasons = "No new facts.",
        }, RegistryScene.Operator);
        var outcome = await Assert.ThrowsAsync<PostgresException>(() => scene.Server.ExecuteAsync("UPDATE reconsiderations SET outcome = 'upheld' WHERE application_id = @id", new { id }));
        var delete = await Assert.ThrowsAsync<PostgresException>(() => scene.Server.ExecuteAsync("DELETE FROM reconsiderations WHERE application_id = @id", new { id }));

        Assert.All(new[] { grounds, outcome, delete }, e => Assert.Equal(PostgresErrorCodes.InsufficientPrivilege, e.SqlState));
        Assert.Equal(("dismissed", Grounds), (await scene.Server.ScalarAsync<string>("SELECT outcome FROM reconsiderations WHERE application_id = @id", new { id }),
            await scene.Server.ScalarAsync<string>("SELECT grounds FROM reconsiderations WHERE application_id = @id", new { id })));
    }

    private static async Task<(string Code, Metadata Key, long Id)> RejectedAtReviewAsync(RegistryScene scene)
    {
        var (code, key) = await scene.RegisterAsync();
        long id = (await scene.Client.FileApplicationAsync(RegistryScene.Filing(code), key)).ApplicationId;
        await scene.Client.ReviewMaterialsAsync(new StageDecision { ApplicationId = id, Pass = false, Reasons = "No tax certificate on file." }, RegistryScene.Operator);
        return (code, key, id);
    }

    private static async Task<(string Code, Metadata Key, long Id)> RejectedAtDecisionAsync(RegistryScene scene)
    {
        var (code, key) = await scene.RegisterAsync();
        long id = (await scene.Client.FileApplicationAsync(RegistryScene.Filing(code), key)).ApplicationId;
        await scene.Client.ReviewMaterialsAsync(new StageDecision { ApplicationId = id, Pass = true }, RegistryScene.Operator);
        Application verified = await scene.Client.RecordVerificationAsync(new VerificationDecision { ApplicationId = id, Pass = true, VerifiedFp16Gflops = 316_608_000 }, RegistryScene.Operator);
        await scene.Client.ApproveProposalAsync(new ApproveProposalRequest { ApplicationId = id, ProposalNo = verified.PendingProposal.ProposalNo }, RegistryScene.SecondOperator);
        await scene.Client.OpenPublicNoticeAsync(new StageDecision { ApplicationId = id, Pass = true }, RegistryScene.Operator);
        await scene.Client.RecordObjectionAsync(new RecordObjectionRequest { ApplicationId = id, Objector = "某竞争企业", Content = "dc2 is double-counted" }, RegistryScene.Operator);
        scene.Clock.Advance(TimeSpan.FromMinutes(1));
        Application refused = await scene.Client.DecideAdmissionAsync(new StageDecision { ApplicationId = id, Pass = false, Reasons = "The objection stands." }, RegistryScene.Operator);
        Application rejected = await scene.Client.ApproveProposalAsync(new ApproveProposalRequest { ApplicationId = id, ProposalNo = refused.PendingProposal.ProposalNo }, RegistryScene.SecondOperator);
        Assert.Equal(ApplicationState.Rejected, rejected.State);
        return (code, key, id);
    }

    private static Task<string> StateAsync(RegistryScene scene, long id) =>
        scene.Server.ScalarAsync<string>("SELECT state FROM applications WHERE application_id = @id", new { id });

    /// <summary>How many changes the registry has recorded: a refused call adds none.</summary>
    private static Task<long> ChangesAsync(RegistryScene scene) =>
        scene.Server.ScalarAsync<long>("SELECT count(*) FROM registry_history");

    private static string? Json(string json, string property) => JsonDocument.Parse(json).RootElement.GetProperty(property).GetString();
}
