using System.Globalization;
using Grpc.Core;
using Metering.Engine.Capacity;
using Metering.Engine.Ingest;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Capacity;

/// <summary>
/// A mixed fleet through the real server: probeable nodes validated by the real probe on ILGPU's
/// CPU accelerator (the CPU fixture model stands for NVIDIA nodes) and Ascend 910B nodes, which
/// the probe cannot reach, confirmed by the commissioned verifier. The verification stage's total
/// is the sum of the two parts, each shown with its source, and ingest bounds each model by its
/// own figure. Played as the provider (and the operator) who would count a model twice, or give
/// the verifier a figure the devices cannot have.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class VerifierPartsTests(PostgresFixture postgres)
{
    private const string Ascend = "ASCEND-910B";
    private const long AscendPeakGflops = 320_000;
    private const uint AscendConfirmed = 960;

    [Fact]
    public async Task The_stage_takes_the_sum_of_the_probe_and_the_verifier_and_ingest_bounds_each_model_by_its_own_figure()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        long validationId;
        long probeGflops;
        using (TestNode node = (await scene.NodesAsync(1))[0])
        {
            await scene.DeclareAsync([node]);
            FleetValidation validation = (await scene.AttestAsync(node)).Validation;
            Assert.Equal(FleetValidationState.ValidationComplete, validation.State);
            (validationId, probeGflops) = (validation.ValidationId, validation.VerifiedFp16Gflops);
        }

        Assert.InRange(probeGflops, 1, Admissions.GuideCapacityMinimumGflops - 1);
        long id = await ApplicationAwaitingVerificationAsync(scene);

        // The verifier's part alone stays below the bar; only the sum reaches it.
        long verifierGflops = Admissions.GuideCapacityMinimumGflops - probeGflops;
        Application proposed = await scene.Registry.Client.RecordVerificationAsync(new VerificationDecision
        {
            ApplicationId = id,
            Pass = true,
            VerifierParts = { new VerifierPart { DeviceModel = Ascend, Devices = AscendConfirmed, DenseFp16Gflops = verifierGflops } },
        }, RegistryScene.Operator);
        Assert.Equal(ApplicationState.AwaitingVerification, proposed.State);
        VerifierPart pending = Assert.Single(proposed.PendingProposal.VerifierParts);
        Assert.Equal((Ascend, AscendConfirmed, verifierGflops), (pending.DeviceModel, pending.Devices, pending.DenseFp16Gflops));

        Application verified = await scene.Registry.Client.ApproveProposalAsync(
            new ApproveProposalRequest { ApplicationId = id, ProposalNo = proposed.PendingProposal.ProposalNo }, RegistryScene.SecondOperator);
        Assert.Equal(ApplicationState.AwaitingPublicNotice, verified.State);
        Assert.Equal(Admissions.GuideCapacityMinimumGflops, verified.VerifiedFp16Gflops);
        Assert.Collection(verified.VerificationParts,
            probe => Assert.Equal((VerificationSource.Probe, validationId, "", 0UL, probeGflops), (probe.Source, probe.ValidationId, probe.DeviceModel, probe.Devices, probe.Fp16Gflops)),
            verifier => Assert.Equal((VerificationSource.CommissionedVerifier, 0L, Ascend, (ulong)AscendConfirmed, verifierGflops),
                (verifier.Source, verifier.ValidationId, verifier.DeviceModel, verifier.Devices, verifier.Fp16Gflops)));
        string reasons = verified.Stages.Last(s => s.Stage_ == "verification").Reasons;
        Assert.Contains($"from fleet validation {validationId} (", reasons, StringComparison.Ordinal);
        Assert.Contains($"from the commissioned verifier's figure for {Ascend} ({AscendConfirmed} devices confirmed)", reasons, StringComparison.Ordinal);

        // The registry history records the parts with the stage.
        GetHistoryResponse history = await scene.Registry.Client.GetHistoryAsync(new GetHistoryRequest { CreditCode = scene.Code, Limit = 20 }, RegistryScene.Operator);
        HistoryEntry stage = history.Entries.First(e => e.Entity == "application" && e.Action == "verification");
        Assert.Contains("\"verification_parts\"", stage.AfterJson, StringComparison.Ordinal);
        Assert.Contains($"\"device_model\": \"{Ascend}\"", stage.AfterJson, StringComparison.Ordinal);
        Assert.Contains($"\"validation_id\": {validationId}", stage.AfterJson, StringComparison.Ordinal);

        await AdmitAsync(scene, id);
        DateTimeOffset start = scene.Clock.Now.AddHours(1);
        scene.Clock.Now = start.AddHours(3);
        string provider = RegistryScene.KeyOf(scene.Key);

        // Both kinds ingest, each up to its own figure.
        await using IngestCall a = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a", provider);
        Assert.Equal(2UL, (await a.SendAsync([At(1, start, 1, TestCatalogs.CpuFixtureModel), At(2, start, AscendConfirmed, Ascend)])).CommittedSequence);

        // One Ascend over the verifier's 960 is refused, though the declaration says 1,000.
        await using IngestCall b = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-b", provider);
        RpcException ascend = await b.SendRefusedAsync([At(1, start.AddMinutes(10), 1, Ascend)]);
        Assert.Equal((StatusCode.FailedPrecondition, "CONCURRENCY_ABOVE_FLEET"), (ascend.StatusCode, IngestCall.Reason(ascend)));
        Assert.Contains($"961.00 {Ascend} devices at once over all its streams; its fleet holds {AscendConfirmed} ({FleetSnapshot.VerifierSource} for application {id})",
            ascend.Status.Detail, StringComparison.Ordinal);

        // One probeable device over the validated 1 is refused, naming the validation.
        await using IngestCall c = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-c", provider);
        RpcException probeable = await c.SendRefusedAsync([At(1, start.AddMinutes(10), 1, TestCatalogs.CpuFixtureModel)]);
        Assert.Equal("CONCURRENCY_ABOVE_FLEET", IngestCall.Reason(probeable));
        Assert.Contains($"2.00 {TestCatalogs.CpuFixtureModel} devices at once over all its streams; its fleet holds 1 (fleet validation {validationId})",
            probeable.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(2L, await scene.Server.ScalarAsync<long>(
            "SELECT count(*) FROM usage_records WHERE provider_id = @code AND stream_id NOT LIKE 'proof:%'", new { code = scene.Code }));
    }

    [Fact]
    public async Task A_verifier_part_for_a_model_the_validation_in_force_covers_is_refused_and_changes_nothing()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        using TestNode node = (await scene.NodesAsync(1))[0];
        await scene.DeclareAsync([node]);
        long validationId = (await scene.AttestAsync(node)).Validation.ValidationId;
        long id = await ApplicationAwaitingVerificationAsync(scene);

        // The cheater adds the verifier's figure for the probed model on top of the probe's own,
        // which would count the same devices twice and carry the sum over the bar.
        var (status, reason, error) = await CapacityScene.RefusalAsync(() => scene.Registry.Client.RecordVerificationAsync(new VerificationDecision
        {
            ApplicationId = id,
            Pass = true,
            VerifierParts =
            {
                new VerifierPart { DeviceModel = Ascend, Devices = AscendConfirmed, DenseFp16Gflops = AscendConfirmed * AscendPeakGflops },
                new VerifierPart { DeviceModel = TestCatalogs.CpuFixtureModel, Devices = 1, DenseFp16Gflops = 1 },
            },
        }, RegistryScene.Operator).ResponseAsync);

        Assert.Equal((StatusCode.FailedPrecondition, "VERIFIER_PART_COVERED_BY_PROBE"), (status, reason));
        Assert.Equal((TestCatalogs.CpuFixtureModel, validationId.ToString(CultureInfo.InvariantCulture)),
            (IngestCall.Metadata(error, "device_model"), IngestCall.Metadata(error, "validation_id")));
        await AssertUnchangedAsync(scene, id);
    }

    [Fact]
    public async Task A_verifier_part_proposed_before_a_validation_covering_its_model_completes_is_refused_at_approval()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        long id = await ApplicationAwaitingVerificationAsync(scene);
        // With no validation yet, the verifier's figure for the probeable model may be proposed.
        Application proposed = await scene.Registry.Client.RecordVerificationAsync(new VerificationDecision
        {
            ApplicationId = id,
            Pass = true,
            VerifierParts =
            {
                new VerifierPart { DeviceModel = Ascend, Devices = AscendConfirmed, DenseFp16Gflops = AscendConfirmed * AscendPeakGflops },
                new VerifierPart { DeviceModel = TestCatalogs.CpuFixtureModel, Devices = 1, DenseFp16Gflops = 1 },
            },
        }, RegistryScene.Operator);
        Assert.Equal(2, proposed.PendingProposal.VerifierParts.Count);

        // Then the probe validates that model: approving would count it twice, so the second
        // operator's approval is checked again, as of now, and refused.
        using TestNode node = (await scene.NodesAsync(1))[0];
        await scene.DeclareAsync([node]);
        long validationId = (await scene.AttestAsync(node)).Validation.ValidationId;
        var (status, reason, error) = await CapacityScene.RefusalAsync(() => scene.Registry.Client.ApproveProposalAsync(
            new ApproveProposalRequest { ApplicationId = id, ProposalNo = proposed.PendingProposal.ProposalNo }, RegistryScene.SecondOperator).ResponseAsync);

        Assert.Equal((StatusCode.FailedPrecondition, "VERIFIER_PART_COVERED_BY_PROBE"), (status, reason));
        Assert.Equal(validationId.ToString(CultureInfo.InvariantCulture), IngestCall.Metadata(error, "validation_id"));
        Application after = await scene.Registry.Client.GetApplicationAsync(new GetApplicationRequest { ApplicationId = id }, RegistryScene.Operator);
        Assert.Equal((ApplicationState.AwaitingVerification, proposed.PendingProposal.ProposalNo), (after.State, after.PendingProposal.ProposalNo));
        Assert.Empty(after.VerificationParts);
    }

    [Fact]
    public async Task Bad_verifier_parts_are_refused_each_with_its_reason_and_change_nothing()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        long id = await ApplicationAwaitingVerificationAsync(scene);
        VerifierPart Part(string model = Ascend, uint devices = 10, long gflops = 3_000_000) => new() { DeviceModel = model, Devices = devices, DenseFp16Gflops = gflops };
        var cases = new (string Case, VerificationDecision Decision, StatusCode Status, string Reason, string Part, string Field)[]
        {
            ("unknown model", new() { VerifierParts = { Part(model: "ASCEND-999Z") } }, StatusCode.InvalidArgument, "DEVICE_MODEL_UNKNOWN", "1", "device_model"),
            ("empty model", new() { VerifierParts = { Part(model: "") } }, StatusCode.InvalidArgument, "VERIFIER_PART_INVALID", "1", "device_model"),
            ("repeated model", new() { VerifierParts = { Part(), Part(model: "MI300X"), Part() } }, StatusCode.InvalidArgument, "VERIFIER_PART_INVALID", "3", "device_model"),
            ("no devices", new() { VerifierParts = { Part(devices: 0) } }, StatusCode.InvalidArgument, "VERIFIER_PART_INVALID", "1", "devices"),
            ("too many devices", new() { VerifierParts = { Part(devices: 1_000_001) } }, StatusCode.InvalidArgument, "VERIFIER_PART_INVALID", "1", "devices"),
            ("no figure", new() { VerifierParts = { Part(gflops: 0) } }, StatusCode.InvalidArgument, "VERIFIER_PART_INVALID", "1", "dense_fp16_gflops"),
            ("negative figure", new() { VerifierParts = { Part(gflops: -1) } }, StatusCode.InvalidArgument, "VERIFIER_PART_INVALID", "1", "dense_fp16_gflops"),
            ("above the catalog peak", new() { VerifierParts = { Part(devices: 10, gflops: 10 * AscendPeakGflops + 1) } }, StatusCode.InvalidArgument, "VERIFIER_PART_INVALID", "1", "dense_fp16_gflops"),
            ("beside a typed total", new() { VerifiedFp16Gflops = 316_000_000, VerifierParts = { Part() } }, StatusCode.InvalidArgument, "VERIFIER_PART_INVALID", "1", "verified_fp16_gflops"),
            ("too many parts", new() { VerifierParts = { Enumerable.Range(0, 65).Select(_ => Part()) } }, StatusCode.InvalidArgument, "VERIFIER_PART_INVALID", "65", "verifier_parts"),
        };

        foreach (var (name, decision, expectedStatus, expectedReason, part, field) in cases)
        {
            decision.ApplicationId = id;
            decision.Pass = true;
            var (status, reason, error) = await CapacityScene.RefusalAsync(() => scene.Registry.Client.RecordVerificationAsync(decision, RegistryScene.Operator).ResponseAsync);
            Assert.True((expectedStatus, expectedReason, part, field) == (status, reason, IngestCall.Metadata(error, "part"), IngestCall.Metadata(error, "field")),
                $"{name}: got {status} {reason} part {IngestCall.Metadata(error, "part")} field {IngestCall.Metadata(error, "field")}: {error.Status.Detail}");
        }

        // At exactly the catalog peak the part holds: a rejection is proposed with it, and nothing is recorded until it is approved.
        Application proposed = await scene.Registry.Client.RecordVerificationAsync(new VerificationDecision
        {
            ApplicationId = id,
            Pass = false,
            Reasons = "the verifier found 10 devices only",
            VerifierParts = { Part(devices: 10, gflops: 10 * AscendPeakGflops) },
        }, RegistryScene.Operator);
        Assert.Equal(10 * AscendPeakGflops, Assert.Single(proposed.PendingProposal.VerifierParts).DenseFp16Gflops);
        Assert.Empty(proposed.VerificationParts);
    }

    /// <summary>Registers nothing new: files the scene provider's application (4 probeable devices and 1,000 Ascend 910B declared) and passes its material review.</summary>
    private static async Task<long> ApplicationAwaitingVerificationAsync(CapacityScene scene)
    {
        FileApplicationRequest filing = RegistryScene.Filing(scene.Code);
        filing.Capacity.Clear();
        filing.Capacity.Add(new DeclaredDevices { Site = "sz-test-dc", DeviceModel = TestCatalogs.CpuFixtureModel, DeviceCount = 4 });
        filing.Capacity.Add(new DeclaredDevices { Site = "sz-ascend-dc", DeviceModel = Ascend, DeviceCount = 1_000 });
        Application filed = await scene.Registry.Client.FileApplicationAsync(filing, scene.Key);
        await scene.Registry.Client.ReviewMaterialsAsync(new StageDecision { ApplicationId = filed.ApplicationId, Pass = true }, RegistryScene.Operator);
        return filed.ApplicationId;
    }

    /// <summary>Public notice (0 days in this batch), the admission decision under four-eyes, and the admission notice.</summary>
    private static async Task AdmitAsync(CapacityScene scene, long id)
    {
        RegistryService.RegistryServiceClient client = scene.Registry.Client;
        await client.OpenPublicNoticeAsync(new StageDecision { ApplicationId = id, Pass = true }, RegistryScene.Operator);
        Application decided = await client.DecideAdmissionAsync(new StageDecision { ApplicationId = id, Pass = true }, RegistryScene.Operator);
        await client.ApproveProposalAsync(new ApproveProposalRequest { ApplicationId = id, ProposalNo = decided.PendingProposal.ProposalNo }, RegistryScene.SecondOperator);
        Application admitted = await client.IssueAdmissionNoticeAsync(new IssueAdmissionNoticeRequest { ApplicationId = id, NoticeNumber = $"SZ-VP-{id}" }, RegistryScene.Operator);
        Assert.Equal(ApplicationState.Admitted, admitted.State);
    }

    private static async Task AssertUnchangedAsync(CapacityScene scene, long id)
    {
        Application application = await scene.Registry.Client.GetApplicationAsync(new GetApplicationRequest { ApplicationId = id }, RegistryScene.Operator);
        Assert.Equal((ApplicationState.AwaitingVerification, 0L), (application.State, application.VerifiedFp16Gflops));
        Assert.Null(application.PendingProposal);
        Assert.Empty(application.VerificationParts);
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>(
            "SELECT (SELECT count(*) FROM verification_parts WHERE application_id = @id) + (SELECT count(*) FROM stage_proposal_parts WHERE application_id = @id)", new { id }));
    }

    private static UsageRecord At(ulong sequence, DateTimeOffset start, uint devices, string model) => new()
    {
        Sequence = sequence,
        JobId = $"job-{sequence}",
        HolderCode = TestRecords.Holder,
        DeviceModel = model,
        DeviceCount = devices,
        ShareNumerator = 1,
        ShareDenominator = 1,
        StartUnixMs = start.ToUnixTimeMilliseconds(),
        EndUnixMs = (start + TimeSpan.FromMinutes(30)).ToUnixTimeMilliseconds(),
        Site = "sz-nanshan-dc1",
    };
}
