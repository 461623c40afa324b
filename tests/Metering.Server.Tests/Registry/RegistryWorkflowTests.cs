using Grpc.Core;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Registry;

[Collection(PostgresCollection.Name)]
public sealed class RegistryWorkflowTests(PostgresFixture postgres)
{
    [Fact]
    public async Task A_notice_number_another_provider_was_admitted_under_is_refused_and_nothing_changes()
    {
        // Migration 0028 keeps the number unique programme-wide in admission_notice_numbers, since
        // applications' own keys hold per provider only.
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (first, _, admitted) = await scene.AdmitAsync();
        var (second, id) = await scene.AwaitingAdmissionNoticeAsync();
        long historyBefore = await scene.Server.ScalarAsync<long>("SELECT count(*) FROM registry_history");

        RpcException taken = await Assert.ThrowsAsync<RpcException>(() => scene.Client.IssueAdmissionNoticeAsync(
            new IssueAdmissionNoticeRequest { ApplicationId = id, NoticeNumber = admitted.NoticeNumber }, RegistryScene.Operator).ResponseAsync);

        Assert.Equal("NOTICE_NUMBER_TAKEN", IngestCall.Reason(taken));
        Assert.Equal(ApplicationState.AwaitingAdmissionNotice, (await scene.Client.GetApplicationAsync(new GetApplicationRequest { ApplicationId = id }, RegistryScene.Operator)).State);
        Assert.Equal(new[] { first }, await scene.Server.QueryAsync<string>("SELECT provider_id FROM admission_notice_numbers WHERE notice_number = @number", new { number = admitted.NoticeNumber }));
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM service_items WHERE provider_id = @second", new { second }));
        Assert.Equal(historyBefore, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM registry_history"));

        Application own = await scene.Client.IssueAdmissionNoticeAsync(new IssueAdmissionNoticeRequest { ApplicationId = id, NoticeNumber = $"{admitted.NoticeNumber}-2" }, RegistryScene.Operator);
        Assert.Equal(ApplicationState.Admitted, own.State);
    }

    [Fact]
    public async Task Application_goes_from_filing_to_admission_notice_and_the_provider_may_then_stream()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres, noticeDays: 5);
        var (code, key) = await scene.RegisterAsync();
        RegistryService.RegistryServiceClient registry = scene.Client;

        Application filed = await registry.FileApplicationAsync(RegistryScene.Filing(code), key);
        Assert.Equal(ApplicationState.AwaitingMaterialReview, filed.State);
        Assert.Equal(316_608_000L, filed.DeclaredFp16Gflops);
        Assert.Equal(2UL, filed.MeteringProofRecords);
        Assert.Equal(8, filed.Materials.Count);

        long id = filed.ApplicationId;
        Assert.Equal(ApplicationState.AwaitingVerification, (await registry.ReviewMaterialsAsync(new StageDecision { ApplicationId = id, Pass = true }, RegistryScene.Operator)).State);
        // Four-eyes: the typed figure is a proposal until a second operator approves it.
        Application proposed = await registry.RecordVerificationAsync(new VerificationDecision { ApplicationId = id, Pass = true, VerifiedFp16Gflops = 310_000_000 }, RegistryScene.Operator);
        Assert.Equal((ApplicationState.AwaitingVerification, 0L), (proposed.State, proposed.VerifiedFp16Gflops));
        Assert.Equal(("verification", 310_000_000L, "operator-one"), (proposed.PendingProposal.Stage, proposed.PendingProposal.VerifiedFp16Gflops, proposed.PendingProposal.ProposedBy));
        Application verified = await registry.ApproveProposalAsync(new ApproveProposalRequest { ApplicationId = id, ProposalNo = proposed.PendingProposal.ProposalNo }, RegistryScene.SecondOperator);
        Assert.Equal((ApplicationState.AwaitingPublicNotice, 310_000_000L), (verified.State, verified.VerifiedFp16Gflops));
        Assert.Null(verified.PendingProposal);
        Application notice = await registry.OpenPublicNoticeAsync(new StageDecision { ApplicationId = id, Pass = true }, RegistryScene.Operator);
        Assert.Equal(ApplicationState.InPublicNotice, notice.State);
        Assert.Equal(scene.Clock.Now.AddDays(5).ToUnixTimeMilliseconds(), notice.NoticeEndsUnixMs);

        await registry.RecordObjectionAsync(new RecordObjectionRequest { ApplicationId = id, Objector = "A competitor", Content = "Capacity is shared with another programme." }, RegistryScene.Operator);
        RpcException early = await Assert.ThrowsAsync<RpcException>(() => registry.DecideAdmissionAsync(new StageDecision { ApplicationId = id, Pass = true }, RegistryScene.Operator).ResponseAsync);
        Assert.Equal("NOTICE_PERIOD_RUNNING", IngestCall.Reason(early));

        scene.Clock.Advance(TimeSpan.FromDays(5));
        RpcException unanswered = await Assert.ThrowsAsync<RpcException>(() => registry.DecideAdmissionAsync(new StageDecision { ApplicationId = id, Pass = true }, RegistryScene.Operator).ResponseAsync);
        Assert.Equal("REASON_REQUIRED", IngestCall.Reason(unanswered));
        DateTimeOffset decidedAt = scene.Clock.Now;
        proposed = await registry.DecideAdmissionAsync(new StageDecision { ApplicationId = id, Pass = true, Reasons = "Verification found dedicated capacity." }, RegistryScene.Operator);
        Assert.Equal(ApplicationState.InPublicNotice, proposed.State);
        Application decided = await registry.ApproveProposalAsync(new ApproveProposalRequest { ApplicationId = id, ProposalNo = proposed.PendingProposal.ProposalNo }, RegistryScene.SecondOperator);
        Assert.Equal(ApplicationState.AwaitingAdmissionNotice, decided.State);

        scene.Clock.Advance(TimeSpan.FromDays(1));
        Application admitted = await registry.IssueAdmissionNoticeAsync(new IssueAdmissionNoticeRequest { ApplicationId = id, NoticeNumber = "SZ-2026-0001" }, RegistryScene.Operator);
        Assert.Equal((ApplicationState.Admitted, "SZ-2026-0001"), (admitted.State, admitted.NoticeNumber));
        Assert.Equal(
            ["filing", "material_review", "verification", "public_notice", "objection", "decision", "admission_notice"],
            admitted.Stages.Select(s => s.Stage_));
        Assert.Equal(
            ["operator-one", "operator-one, approved by operator-two", "operator-one", "operator-one", "operator-one, approved by operator-two", "operator-one"],
            admitted.Stages.Skip(1).Select(s => s.Actor));

        Organisation organisation = await registry.GetOrganisationAsync(new GetOrganisationRequest { CreditCode = code }, key);
        ServiceItem item = Assert.Single(organisation.ServiceItems);
        Assert.Equal(ServiceItemStatus.Active, item.Status);
        Assert.Equal(decidedAt.ToUnixTimeMilliseconds(), item.ValidFromUnixMs);
        Assert.Equal(RegistryScene.ValidityEnds.ToUnixTimeMilliseconds(), item.ValidUntilUnixMs);
        Assert.Equal(1U, item.FeeScheduleVersion);

        // Usage inside the admission is taken; the same stream refused it before admission.
        var record = TestRecords.Valid(1);
        record.StartUnixMs = decidedAt.AddHours(1).ToUnixTimeMilliseconds();
        record.EndUnixMs = decidedAt.AddHours(2).ToUnixTimeMilliseconds();
        await using IngestCall call = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a", RegistryScene.KeyOf(key));
        BatchAck ack = await call.SendAsync([record]);
        Assert.Equal(1UL, ack.CommittedSequence);
    }

    [Fact]
    public async Task Two_operators_approving_the_same_decision_at_once_leave_exactly_one_decision()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key) = await scene.RegisterAsync();
        long id = (await scene.Client.FileApplicationAsync(RegistryScene.Filing(code), key)).ApplicationId;
        await scene.Client.ReviewMaterialsAsync(new StageDecision { ApplicationId = id, Pass = true }, RegistryScene.Operator);
        Application proposed = await scene.Client.RecordVerificationAsync(new VerificationDecision { ApplicationId = id, Pass = true, VerifiedFp16Gflops = 316_608_000 }, RegistryScene.Operator);
        await scene.Client.ApproveProposalAsync(new ApproveProposalRequest { ApplicationId = id, ProposalNo = proposed.PendingProposal.ProposalNo }, RegistryScene.SecondOperator);
        await scene.Client.OpenPublicNoticeAsync(new StageDecision { ApplicationId = id, Pass = true }, RegistryScene.Operator);
        proposed = await scene.Client.DecideAdmissionAsync(new StageDecision { ApplicationId = id, Pass = true }, RegistryScene.Operator);

        // The approval arrives eight times at once, each over its own connection.
        var decisions = Enumerable.Range(0, 8).Select(i => Task.Run(async () =>
        {
            using var channel = scene.Server.NewChannel();
            var client = new RegistryService.RegistryServiceClient(channel);
            try
            {
                return (Application?)await client.ApproveProposalAsync(new ApproveProposalRequest { ApplicationId = id, ProposalNo = proposed.PendingProposal.ProposalNo }, RegistryScene.SecondOperator);
            }
            catch (RpcException e)
            {
                Assert.Equal(StatusCode.Aborted, e.StatusCode);
                Assert.Equal("ALREADY_DECIDED", IngestCall.Reason(e));
                Assert.Contains("already decided by operator-one, approved by operator-two", e.Status.Detail, StringComparison.Ordinal);
                return null;
            }
        })).ToArray();
        Application?[] outcomes = await Task.WhenAll(decisions);

        Application winner = Assert.Single(outcomes.OfType<Application>());
        Assert.Equal(1L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM application_stages WHERE application_id = @id AND stage = 'decision'", new { id }));
        string state = await scene.Server.ScalarAsync<string>("SELECT state FROM applications WHERE application_id = @id", new { id });
        Assert.Equal((ApplicationState.AwaitingAdmissionNotice, "awaiting_admission_notice"), (winner.State, state));
    }

    [Fact]
    public async Task Every_change_is_in_the_history_with_its_actor_and_the_history_cannot_be_rewritten()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, _, admitted) = await scene.AdmitAsync();
        await scene.Client.ChangeServiceItemStatusAsync(new ChangeServiceItemStatusRequest { CreditCode = code, ServiceItem = Admissions.ServiceItem, Action = ServiceItemAction.Suspend, Reasons = "Metering logs late." }, RegistryScene.Operator);

        GetHistoryResponse history = await scene.Client.GetHistoryAsync(new GetHistoryRequest { CreditCode = code, Limit = 50 }, TestServer.Bearer(TestServer.AuditorKey));

        string[] actions = history.Entries.Select(e => $"{e.Entity}:{e.Action}").Reverse().ToArray();
        Assert.Equal(
            ["organisation:register", "licence:add", "credential:issue", "application:file", "application:material_review", "proposal:propose", "application:verification",
             "application:public_notice", "proposal:propose", "application:decision", "fee_schedule:file", "application:admission_notice", "service_item:admit", "service_item:suspend"],
            actions);
        HistoryEntry review = history.Entries.Single(e => e.Action == "material_review");
        Assert.Equal(("seed-operator", "operator"), (review.Actor, review.Role));
        Assert.Contains("awaiting_material_review", review.BeforeJson, StringComparison.Ordinal);
        Assert.Contains("awaiting_verification", review.AfterJson, StringComparison.Ordinal);
        HistoryEntry suspend = history.Entries.First();
        Assert.Equal("operator-one", suspend.Actor);
        Assert.Contains("Metering logs late.", suspend.AfterJson, StringComparison.Ordinal);
        Assert.Contains("\"open_suspension\": null", suspend.BeforeJson, StringComparison.Ordinal);
        Assert.Contains("\"open_suspension\": {", suspend.AfterJson, StringComparison.Ordinal);
        Assert.Equal(admitted.ApplicationId.ToString(System.Globalization.CultureInfo.InvariantCulture), history.Entries.Single(e => e.Entity == "application" && e.Action == "file").EntityKey);

        await Assert.ThrowsAsync<Npgsql.PostgresException>(() => scene.Server.ScalarAsync<int>("UPDATE registry_history SET actor = 'someone else' RETURNING 1"));
        await Assert.ThrowsAsync<Npgsql.PostgresException>(() => scene.Server.ScalarAsync<int>("DELETE FROM registry_history RETURNING 1"));
    }

    [Fact]
    public async Task A_provider_adding_a_service_reapplies_for_that_item_only()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key, _) = await scene.AdmitAsync();

        RpcException again = await Assert.ThrowsAsync<RpcException>(() => scene.Client.FileApplicationAsync(RegistryScene.Filing(code), key).ResponseAsync);
        Assert.Equal((StatusCode.AlreadyExists, "SERVICE_ITEM_TAKEN"), (again.StatusCode, IngestCall.Reason(again)));

        Application second = await scene.Client.FileApplicationAsync(RegistryScene.Filing(code, "inference-hosting"), key);
        Assert.Equal(ApplicationState.AwaitingMaterialReview, second.State);
        Organisation organisation = await scene.Client.GetOrganisationAsync(new GetOrganisationRequest { CreditCode = code }, key);
        Assert.Equal(Admissions.ServiceItem, Assert.Single(organisation.ServiceItems).ServiceItem_);
    }

    [Fact]
    public async Task False_materials_revoke_the_admission_and_put_the_organisation_on_the_anomaly_list()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key, _) = await scene.AdmitAsync();
        Application pending = await scene.Client.FileApplicationAsync(RegistryScene.Filing(code, "inference-hosting"), key);

        Organisation after = await scene.Client.RecordFalseMaterialsAsync(new RecordFalseMaterialsRequest { CreditCode = code, Reasons = "The audit report's QR code is forged." }, RegistryScene.Operator);

        Assert.Equal(ServiceItemStatus.Revoked, Assert.Single(after.ServiceItems).Status);
        IntegrityListing listing = Assert.Single(after.Listings);
        Assert.Equal("integrity_anomaly", listing.List);
        Application rejected = await scene.Client.GetApplicationAsync(new GetApplicationRequest { ApplicationId = pending.ApplicationId }, key);
        Assert.Equal(ApplicationState.Rejected, rejected.State);
        Assert.Equal("false_materials", rejected.Stages.Last().Stage_);
    }
}
