using Grpc.Core;
using Metering.Engine.Access;
using Metering.Engine.Catalog;
using Metering.Engine.Ingest;
using Metering.Engine.Registry;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Metering.Server.Access;
using Metering.Server.Tests.Infrastructure;
using Metering.Tests.Shared;
using ApplicationState = Metering.Protocol.V1.ApplicationState;
using ServiceItemStatus = Metering.Protocol.V1.ServiceItemStatus;
using FeeSchedule = Metering.Protocol.V1.FeeSchedule;
using IntegrityListing = Metering.Protocol.V1.IntegrityListing;
using Organisation = Metering.Protocol.V1.Organisation;
using Application = Metering.Protocol.V1.Application;
using FeeLine = Metering.Protocol.V1.FeeLine;
using FeeUnit = Metering.Protocol.V1.FeeUnit;

namespace Metering.Server.Tests.Registry;

/// <summary>Rules that hold after filing: re-application, eligibility at the decision, fees, objections, proofs, revoked keys.</summary>
[Collection(PostgresCollection.Name)]
public sealed class RegistryRulesTests(PostgresFixture postgres)
{
    [Fact]
    public async Task An_item_whose_admission_expired_may_be_applied_for_again_in_a_later_batch()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key, _) = await scene.AdmitAsync();
        scene.Clock.Now = RegistryScene.ValidityEnds.AddDays(1);
        await scene.Client.PutAdmissionBatchAsync(new AdmissionBatch
        {
            BatchId = "dec-2026",
            WindowOpensUnixMs = RegistryScene.ValidityEnds.ToUnixTimeMilliseconds(),
            WindowClosesUnixMs = RegistryScene.ValidityEnds.AddDays(10).ToUnixTimeMilliseconds(),
            ValidityEndsUnixMs = RegistryScene.ValidityEnds.AddDays(400).ToUnixTimeMilliseconds(),
            AuditReportYear = 2025,
        }.WithGuideRules(), RegistryScene.Operator);
        FileApplicationRequest again = RegistryScene.Filing(code);
        again.BatchId = "dec-2026";

        Application refiled = await scene.Client.FileApplicationAsync(again, key);
        Application admitted = Metering.Server.Registry.RegistryMapping.ToWire(await Admissions.DecideAllAsync(scene.Engine, refiled.ApplicationId, code));

        Assert.Equal(ApplicationState.Admitted, admitted.State);
        Organisation organisation = await scene.Client.GetOrganisationAsync(new GetOrganisationRequest { CreditCode = code }, key);
        Assert.Equal([ServiceItemStatus.Expired, ServiceItemStatus.Active], organisation.ServiceItems.Select(i => i.Status));
        // The second admission files the item's fee schedule as version 2.
        Assert.All(organisation.ServiceItems, item => Assert.Equal(2U, item.FeeScheduleVersion));
    }

    [Fact]
    public async Task Admission_is_refused_when_the_organisation_was_listed_during_public_notice()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key) = await scene.RegisterAsync();
        long id = (await scene.Client.FileApplicationAsync(RegistryScene.Filing(code), key)).ApplicationId;
        await scene.Client.ReviewMaterialsAsync(new StageDecision { ApplicationId = id, Pass = true }, RegistryScene.Operator);
        Application proposed = await scene.Client.RecordVerificationAsync(new VerificationDecision { ApplicationId = id, Pass = true, VerifiedFp16Gflops = 316_608_000 }, RegistryScene.Operator);
        await scene.Client.ApproveProposalAsync(new ApproveProposalRequest { ApplicationId = id, ProposalNo = proposed.PendingProposal.ProposalNo }, RegistryScene.SecondOperator);
        await scene.Client.OpenPublicNoticeAsync(new StageDecision { ApplicationId = id, Pass = true }, RegistryScene.Operator);
        await scene.Client.AddIntegrityListingAsync(new AddIntegrityListingRequest
        {
            Listing = new IntegrityListing { CreditCode = code, List = "research_integrity", ListedFrom = "2026-11-01", Reason = "Fabricated data in a funded project." },
        }, RegistryScene.Operator);

        RpcException error = await Assert.ThrowsAsync<RpcException>(() => scene.Client.DecideAdmissionAsync(new StageDecision { ApplicationId = id, Pass = true }, RegistryScene.Operator).ResponseAsync);

        Assert.Equal("ON_INTEGRITY_LIST", IngestCall.Reason(error));
        Assert.Equal("in_public_notice", await scene.Server.ScalarAsync<string>("SELECT state FROM applications WHERE application_id = @id", new { id }));
    }

    [Fact]
    public async Task A_listing_that_has_ended_no_longer_stops_a_filing()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key) = await scene.RegisterAsync();
        await scene.Client.AddIntegrityListingAsync(new AddIntegrityListingRequest
        {
            Listing = new IntegrityListing { CreditCode = code, List = "overdue_acceptance", ListedFrom = "2025-01-01", ListedUntil = "2026-11-01", Reason = "Project acceptance overdue." },
        }, RegistryScene.Operator);

        Assert.Equal(ApplicationState.AwaitingMaterialReview, (await scene.Client.FileApplicationAsync(RegistryScene.Filing(code), key)).State);
    }

    [Fact]
    public async Task A_voucher_holder_cannot_apply_either()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key) = await scene.RegisterAsync();
        await scene.Server.ScalarAsync<int>("INSERT INTO voucher_holders (holder_code, name, status) VALUES (@code, 'x', 'holder') RETURNING 1", new { code });

        RpcException error = await Assert.ThrowsAsync<RpcException>(() => scene.Client.FileApplicationAsync(RegistryScene.Filing(code), key).ResponseAsync);
        Assert.Equal("VOUCHER_HOLDER_CONFLICT", IngestCall.Reason(error));
        Assert.Contains("voucher holder", error.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_new_fee_schedule_takes_effect_no_earlier_than_tomorrow_in_Shanghai()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key, _) = await scene.AdmitAsync();
        scene.Clock.Now = new DateTimeOffset(2026, 11, 5, 23, 30, 0, TimeSpan.FromHours(8));
        FileFeeScheduleRequest Schedule(DateTimeOffset? from) => new()
        {
            CreditCode = code,
            ServiceItem = Admissions.ServiceItem,
            EffectiveFromUnixMs = from?.ToUnixTimeMilliseconds() ?? 0,
            Lines = { new FeeLine { DeviceModel = "H100-SXM", Unit = FeeUnit.PerCardHour, PriceFen = 2_100 } },
        };

        RpcException past = await Assert.ThrowsAsync<RpcException>(() => scene.Client.FileFeeScheduleAsync(Schedule(scene.Clock.Now.AddHours(-1)), key).ResponseAsync);
        Assert.Equal("FEE_SCHEDULE_INVALID", IngestCall.Reason(past));
        RpcException today = await Assert.ThrowsAsync<RpcException>(() => scene.Client.FileFeeScheduleAsync(Schedule(scene.Clock.Now.AddMinutes(10)), key).ResponseAsync);
        Assert.Equal("FEE_SCHEDULE_INVALID", IngestCall.Reason(today));

        FeeSchedule next = await scene.Client.FileFeeScheduleAsync(Schedule(null), key);
        Assert.Equal((2U, new DateTimeOffset(2026, 11, 6, 0, 0, 0, TimeSpan.FromHours(8)).ToUnixTimeMilliseconds()), (next.Version, next.EffectiveFromUnixMs));
    }

    [Fact]
    public async Task A_proof_stream_takes_at_most_its_limit_and_nothing_from_a_listed_organisation()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key) = await scene.RegisterAsync(proof: false);
        var store = new UsageStore(scene.DataSource);
        var gate = new AdmissionGate(scene.DataSource);
        StreamHead head = await store.OpenStreamAsync(code, "proof:big", CancellationToken.None);
        var session = new IngestSession(store, new RecordValidator(new IngestLimits(), DeviceCatalog.LoadEmbedded()), scene.Clock, gate, await gate.LoadAsync(code, CancellationToken.None), "proof:big", head);
        long start = scene.Clock.Now.AddDays(-20).ToUnixTimeMilliseconds();
        for (ulong first = 1; first <= IngestSession.ProofRecordsMax; first += 1_000)
        {
            var batch = Enumerable.Range(0, 1_000).Select(i =>
            {
                UsageRecord record = TestRecords.Valid(first + (ulong)i);
                record.StartUnixMs = start + (long)(first + (ulong)i) * 60_000;
                record.EndUnixMs = record.StartUnixMs + 60_000;
                return record;
            }).ToList();
            await session.AppendAsync(batch, CancellationToken.None);
        }

        await using (IngestCall call = await IngestCall.OpenAsync(scene.Server.Client(), "proof:big", RegistryScene.KeyOf(key)))
        {
            UsageRecord over = TestRecords.Valid(IngestSession.ProofRecordsMax + 1);
            over.StartUnixMs = start;
            over.EndUnixMs = start + 60_000;
            RpcException full = await call.SendRefusedAsync([over]);
            Assert.True(IngestCall.Reason(full) == "PROOF_NOT_ALLOWED", full.Status.Detail);
        }

        await scene.Client.AddIntegrityListingAsync(new AddIntegrityListingRequest
        {
            Listing = new IntegrityListing { CreditCode = code, List = "serious_dishonesty", ListedFrom = "2026-01-01", Reason = "Listed." },
        }, RegistryScene.Operator);
        // A listed organisation is refused at the open, before a stream row is written.
        RpcException refused = await IngestCall.OpenRefusedAsync(scene.Server.Client(), "proof:other", RegistryScene.KeyOf(key));
        Assert.Equal("PROOF_NOT_ALLOWED", IngestCall.Reason(refused));
        Assert.Contains("serious_dishonesty", refused.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM ingest_streams WHERE stream_id = 'proof:other'"));
    }

    [Fact]
    public async Task A_key_revoked_while_its_stream_is_open_loses_the_stream()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, recheck: new CredentialRecheckPolicy(TimeSpan.Zero));
        await using var dataSource = Database.CreateDataSource(server.ConnectionString);
        var credentials = new CredentialStore(dataSource, TimeProvider.System);
        var (credential, key) = await credentials.IssueAsync(Admissions.Operator, Role.Provider, TestRecords.Provider, "leaked", CancellationToken.None);
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a", key);
        await call.SendAsync(TestRecords.Range(1, 3));

        await credentials.RevokeAsync(Admissions.Operator, credential.CredentialId, CancellationToken.None);

        RpcException error = await call.SendRefusedAsync(TestRecords.Range(4, 6));
        Assert.Equal(StatusCode.Unauthenticated, error.StatusCode);
        Assert.Contains("revoked", error.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(3L, await server.ScalarAsync<long>("SELECT committed_sequence FROM ingest_streams WHERE stream_id = 'cluster-a'"));
    }
}
