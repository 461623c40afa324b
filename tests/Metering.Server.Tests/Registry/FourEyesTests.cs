using Grpc.Core;
using Metering.Engine.Access;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Registry;

/// <summary>
/// Four-eyes on the admission decision and on a typed verification figure: one operator
/// proposes, a second, different one approves, and an operator acting alone gets nowhere.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class FourEyesTests(PostgresFixture postgres)
{
    [Fact]
    public async Task An_operator_cannot_approve_their_own_admission_decision_even_with_a_second_key()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        long id = await InPublicNoticeAsync(scene);
        scene.Clock.Advance(TimeSpan.FromDays(5));
        Application proposed = await scene.Client.DecideAdmissionAsync(new StageDecision { ApplicationId = id, Pass = true }, RegistryScene.Operator);
        // The same person with another key is still the same operator.
        string secondKeyOfTheSamePerson = (await new CredentialStore(scene.DataSource, scene.Clock).IssueAsync(Admissions.Operator, Role.Operator, "operator-one", "laptop", CancellationToken.None)).Key;

        foreach (Metadata alone in new[] { RegistryScene.Operator, TestServer.Bearer(secondKeyOfTheSamePerson) })
        {
            RpcException refused = await Assert.ThrowsAsync<RpcException>(() => scene.Client.ApproveProposalAsync(
                new ApproveProposalRequest { ApplicationId = id, ProposalNo = proposed.PendingProposal.ProposalNo }, alone).ResponseAsync);
            Assert.Equal((StatusCode.PermissionDenied, "SAME_OPERATOR"), (refused.StatusCode, IngestCall.Reason(refused)));
        }

        Assert.Equal("in_public_notice", await StateAsync(scene, id));
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM application_stages WHERE application_id = @id AND stage = 'decision'", new { id }));
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM service_items WHERE application_id = @id", new { id }));
    }

    [Fact]
    public async Task A_typed_verification_figure_takes_effect_only_with_a_second_operator()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        long id = await ReviewedAsync(scene);

        Application proposed = await scene.Client.RecordVerificationAsync(
            new VerificationDecision { ApplicationId = id, Pass = true, VerifiedFp16Gflops = 400_000_000, Reasons = "verifier's report" }, RegistryScene.Operator);

        Assert.Equal(ApplicationState.AwaitingVerification, proposed.State);
        Assert.Equal("awaiting_verification", await StateAsync(scene, id));
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT coalesce(verified_fp16_gflops, 0) FROM applications WHERE application_id = @id", new { id }));
        RpcException alone = await Assert.ThrowsAsync<RpcException>(() => scene.Client.ApproveProposalAsync(
            new ApproveProposalRequest { ApplicationId = id, ProposalNo = proposed.PendingProposal.ProposalNo }, RegistryScene.Operator).ResponseAsync);
        Assert.Equal("SAME_OPERATOR", IngestCall.Reason(alone));

        Application approved = await scene.Client.ApproveProposalAsync(
            new ApproveProposalRequest { ApplicationId = id, ProposalNo = proposed.PendingProposal.ProposalNo }, RegistryScene.SecondOperator);

        Assert.Equal((ApplicationState.AwaitingPublicNotice, 400_000_000L), (approved.State, approved.VerifiedFp16Gflops));
        Stage verification = approved.Stages.Single(s => s.Stage_ == "verification");
        Assert.Equal("operator-one, approved by operator-two", verification.Actor);
        Assert.Contains("verifier's report", verification.Reasons, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_figure_below_the_bar_is_refused_when_proposed_and_leaves_no_proposal()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        long id = await ReviewedAsync(scene);

        RpcException refused = await Assert.ThrowsAsync<RpcException>(() => scene.Client.RecordVerificationAsync(
            new VerificationDecision { ApplicationId = id, Pass = true, VerifiedFp16Gflops = 299_999_999 }, RegistryScene.Operator).ResponseAsync);

        Assert.Equal("CAPACITY_BELOW_MINIMUM", IngestCall.Reason(refused));
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM stage_proposals WHERE application_id = @id", new { id }));
    }

    [Fact]
    public async Task Approving_a_superseded_proposal_is_refused_and_the_newer_one_stands()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        long id = await ReviewedAsync(scene);
        Application first = await scene.Client.RecordVerificationAsync(new VerificationDecision { ApplicationId = id, Pass = true, VerifiedFp16Gflops = 900_000_000 }, RegistryScene.Operator);
        Application second = await scene.Client.RecordVerificationAsync(new VerificationDecision { ApplicationId = id, Pass = true, VerifiedFp16Gflops = 316_000_000 }, RegistryScene.SecondOperator);

        RpcException changed = await Assert.ThrowsAsync<RpcException>(() => scene.Client.ApproveProposalAsync(
            new ApproveProposalRequest { ApplicationId = id, ProposalNo = first.PendingProposal.ProposalNo }, RegistryScene.SecondOperator).ResponseAsync);

        Assert.Equal((StatusCode.FailedPrecondition, "PROPOSAL_CHANGED"), (changed.StatusCode, IngestCall.Reason(changed)));
        Assert.Equal((2U, 316_000_000L, "operator-two"), (second.PendingProposal.ProposalNo, second.PendingProposal.VerifiedFp16Gflops, second.PendingProposal.ProposedBy));
        Application approved = await scene.Client.ApproveProposalAsync(new ApproveProposalRequest { ApplicationId = id, ProposalNo = 2 }, RegistryScene.Operator);
        Assert.Equal(316_000_000L, approved.VerifiedFp16Gflops);
    }

    [Fact]
    public async Task Approval_rechecks_eligibility_as_of_the_approval()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        long id = await InPublicNoticeAsync(scene);
        scene.Clock.Advance(TimeSpan.FromDays(5));
        Application proposed = await scene.Client.DecideAdmissionAsync(new StageDecision { ApplicationId = id, Pass = true }, RegistryScene.Operator);
        string code = proposed.CreditCode;
        await scene.Client.AddIntegrityListingAsync(new AddIntegrityListingRequest
        {
            Listing = new IntegrityListing { CreditCode = code, List = "research_integrity", ListedFrom = "2026-11-01", Reason = "Listed after the proposal." },
        }, RegistryScene.Operator);

        RpcException refused = await Assert.ThrowsAsync<RpcException>(() => scene.Client.ApproveProposalAsync(
            new ApproveProposalRequest { ApplicationId = id, ProposalNo = proposed.PendingProposal.ProposalNo }, RegistryScene.SecondOperator).ResponseAsync);

        Assert.Equal("ON_INTEGRITY_LIST", IngestCall.Reason(refused));
        Assert.Equal("in_public_notice", await StateAsync(scene, id));
        Assert.Equal(1L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM stage_proposals WHERE application_id = @id AND closed_as IS NULL", new { id }));
    }

    [Fact]
    public async Task Approving_without_a_pending_proposal_is_refused()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        long id = await ReviewedAsync(scene);

        RpcException refused = await Assert.ThrowsAsync<RpcException>(() => scene.Client.ApproveProposalAsync(
            new ApproveProposalRequest { ApplicationId = id, ProposalNo = 1 }, RegistryScene.SecondOperator).ResponseAsync);

        Assert.Equal((StatusCode.FailedPrecondition, "NO_PENDING_PROPOSAL"), (refused.StatusCode, IngestCall.Reason(refused)));
    }

    [Fact]
    public async Task A_batch_for_a_single_operator_bureau_decides_on_one_word()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        AdmissionBatch batch = (await scene.Client.ListAdmissionBatchesAsync(new ListAdmissionBatchesRequest(), RegistryScene.Operator)).Batches.Single(b => b.BatchId == RegistryScene.Batch);
        batch.SingleOperatorDecisions = true;
        await scene.Client.PutAdmissionBatchAsync(batch, RegistryScene.Operator);
        long id = await ReviewedAsync(scene);

        Application verified = await scene.Client.RecordVerificationAsync(new VerificationDecision { ApplicationId = id, Pass = true, VerifiedFp16Gflops = 316_000_000 }, RegistryScene.Operator);
        await scene.Client.OpenPublicNoticeAsync(new StageDecision { ApplicationId = id, Pass = true }, RegistryScene.Operator);
        scene.Clock.Advance(TimeSpan.FromDays(5));
        Application decided = await scene.Client.DecideAdmissionAsync(new StageDecision { ApplicationId = id, Pass = true }, RegistryScene.Operator);

        Assert.Equal(ApplicationState.AwaitingPublicNotice, verified.State);
        Assert.Equal(ApplicationState.AwaitingAdmissionNotice, decided.State);
        Assert.True((await scene.Client.ListAdmissionBatchesAsync(new ListAdmissionBatchesRequest(), RegistryScene.Operator)).Batches.Single(b => b.BatchId == RegistryScene.Batch).SingleOperatorDecisions);
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM stage_proposals WHERE application_id = @id", new { id }));
    }

    private static async Task<long> ReviewedAsync(RegistryScene scene)
    {
        var (code, key) = await scene.RegisterAsync();
        long id = (await scene.Client.FileApplicationAsync(RegistryScene.Filing(code), key)).ApplicationId;
        await scene.Client.ReviewMaterialsAsync(new StageDecision { ApplicationId = id, Pass = true }, RegistryScene.Operator);
        return id;
    }

    private static async Task<long> InPublicNoticeAsync(RegistryScene scene)
    {
        long id = await ReviewedAsync(scene);
        Application proposed = await scene.Client.RecordVerificationAsync(new VerificationDecision { ApplicationId = id, Pass = true, VerifiedFp16Gflops = 316_608_000 }, RegistryScene.Operator);
        await scene.Client.ApproveProposalAsync(new ApproveProposalRequest { ApplicationId = id, ProposalNo = proposed.PendingProposal.ProposalNo }, RegistryScene.SecondOperator);
        await scene.Client.OpenPublicNoticeAsync(new StageDecision { ApplicationId = id, Pass = true }, RegistryScene.Operator);
        return id;
    }

    private static Task<string> StateAsync(RegistryScene scene, long id) =>
        scene.Server.ScalarAsync<string>("SELECT state FROM applications WHERE application_id = @id", new { id });
}
