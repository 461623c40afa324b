using Grpc.Core;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using static Metering.Server.Fixtures.RegistryScene;
using Metering.Fixtures;

namespace Metering.Server.Tests.Registry;

/// <summary>Ingest takes a record only inside an admission that is neither suspended nor ended at the record's time.</summary>
[Collection(PostgresCollection.Name)]
public sealed class AdmissionGateTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Usage_up_to_the_validity_end_is_taken_and_usage_past_it_is_refused_as_expired()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (_, key, _) = await scene.AdmitAsync();
        scene.Clock.Now = RegistryScene.ValidityEnds.AddHours(2);
        await using IngestCall call = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a", RegistryScene.KeyOf(key));

        BatchAck ack = await call.SendAsync([At(1, RegistryScene.ValidityEnds.AddMinutes(-10), minutes: 10)]);
        Assert.Equal(1UL, ack.CommittedSequence);

        RpcException error = await call.SendRefusedAsync([At(2, RegistryScene.ValidityEnds.AddMinutes(-5), minutes: 10)]);
        Assert.Equal((StatusCode.FailedPrecondition, "ADMISSION_EXPIRED"), (error.StatusCode, IngestCall.Reason(error)));
        Assert.Contains("end of its admission validity", error.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(1L, await scene.Server.ScalarAsync<long>("SELECT committed_sequence FROM ingest_streams WHERE stream_id = 'cluster-a'"));
    }

    [Fact]
    public async Task A_suspension_refuses_usage_from_its_start_until_reinstatement()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key, admitted) = await scene.AdmitAsync();
        DateTimeOffset suspendedAt = scene.Clock.Now.AddHours(5);
        scene.Clock.Now = suspendedAt;
        await scene.Client.ChangeServiceItemStatusAsync(Change(code, ServiceItemAction.Suspend, "Logs arrive days late."), RegistryScene.Operator);
        scene.Clock.Advance(TimeSpan.FromHours(3));
        await scene.Client.ChangeServiceItemStatusAsync(Change(code, ServiceItemAction.Reinstate, ""), RegistryScene.Operator);
        DateTimeOffset reinstatedAt = scene.Clock.Now;
        scene.Clock.Advance(TimeSpan.FromHours(2));

        await using IngestCall call = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a", RegistryScene.KeyOf(key));
        Assert.Equal(1UL, (await call.SendAsync([At(1, suspendedAt.AddHours(-1), minutes: 30)])).CommittedSequence);
        RpcException error = await call.SendRefusedAsync([At(2, suspendedAt.AddMinutes(-10), minutes: 30)]);
        Assert.Equal("PROVIDER_SUSPENDED", IngestCall.Reason(error));
        Assert.Contains("Logs arrive days late.", error.Status.Detail, StringComparison.Ordinal);

        await using IngestCall resumed = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a", RegistryScene.KeyOf(key));
        Assert.Equal(2UL, (await resumed.SendAsync([At(2, reinstatedAt, minutes: 30)])).CommittedSequence);
    }

    [Theory]
    [InlineData(ServiceItemAction.Withdraw, "ADMISSION_WITHDRAWN", "withdrew")]
    [InlineData(ServiceItemAction.Revoke, "ADMISSION_REVOKED", "revoked")]
    public async Task Usage_after_an_exit_is_refused_with_the_exit_named(ServiceItemAction exit, string reason, string detail)
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key, _) = await scene.AdmitAsync();
        scene.Clock.Advance(TimeSpan.FromHours(4));
        DateTimeOffset exitedAt = scene.Clock.Now;
        ServiceItem item = await scene.Client.ChangeServiceItemStatusAsync(Change(code, exit, "Breach of the service standards."), RegistryScene.Operator);
        Assert.Equal(exitedAt.ToUnixTimeMilliseconds(), item.ValidUntilUnixMs);
        scene.Clock.Advance(TimeSpan.FromHours(4));

        await using IngestCall call = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a", RegistryScene.KeyOf(key));
        Assert.Equal(1UL, (await call.SendAsync([At(1, exitedAt.AddHours(-1), minutes: 60)])).CommittedSequence);
        RpcException error = await call.SendRefusedAsync([At(2, exitedAt.AddMinutes(-1), minutes: 2)]);
        Assert.Equal(reason, IngestCall.Reason(error));
        Assert.Contains(detail, error.Status.Detail, StringComparison.Ordinal);

        // An exited item cannot be reinstated or exited again.
        RpcException again = await Assert.ThrowsAsync<RpcException>(() => scene.Client.ChangeServiceItemStatusAsync(Change(code, ServiceItemAction.Reinstate, ""), RegistryScene.Operator).ResponseAsync);
        Assert.Equal("STATUS_CHANGE_INVALID", IngestCall.Reason(again));
    }

    [Fact]
    public async Task A_registered_but_unadmitted_provider_may_write_only_its_proof_stream()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key) = await scene.RegisterAsync(proof: false);

        // Refused at the open, before its stream row is written.
        RpcException error = await IngestCall.OpenRefusedAsync(scene.Server.Client(), "cluster-a", RegistryScene.KeyOf(key));
        Assert.Equal(StatusCode.FailedPrecondition, error.StatusCode);
        Assert.Equal("PROVIDER_NOT_ADMITTED", IngestCall.Reason(error));
        Assert.Contains("holds no admitted service item", error.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM ingest_streams WHERE provider_id = @code", new { code }));

        await using IngestCall proof = await IngestCall.OpenAsync(scene.Server.Client(), "proof:platform-test", RegistryScene.KeyOf(key));
        Assert.Equal(1UL, (await proof.SendAsync([At(1, scene.Clock.Now.AddHours(-2), minutes: 5)])).CommittedSequence);
    }

    [Fact]
    public async Task Usage_from_before_the_admission_decision_is_refused()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (_, key, admitted) = await scene.AdmitAsync();
        DateTimeOffset admittedFrom = DateTimeOffset.FromUnixTimeMilliseconds(admitted.Stages.Single(s => s.Stage_ == "decision").AtUnixMs);

        await using IngestCall call = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a", RegistryScene.KeyOf(key));
        RpcException error = await call.SendRefusedAsync([At(1, admittedFrom.AddMinutes(-5), minutes: 10)]);
        Assert.Equal("PROVIDER_NOT_ADMITTED", IngestCall.Reason(error));
        Assert.Contains("before", error.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_suspension_made_while_a_stream_is_open_applies_to_its_next_batch()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key, _) = await scene.AdmitAsync();
        scene.Clock.Advance(TimeSpan.FromHours(6));
        await using IngestCall call = await IngestCall.OpenAsync(scene.Server.Client(), "cluster-a", RegistryScene.KeyOf(key));
        Assert.Equal(1UL, (await call.SendAsync([At(1, scene.Clock.Now.AddHours(-3), minutes: 30)])).CommittedSequence);

        // The stream read the registry when it opened; the suspension comes after that.
        DateTimeOffset suspendedAt = scene.Clock.Now.AddHours(-2);
        scene.Clock.Now = suspendedAt;
        await scene.Client.ChangeServiceItemStatusAsync(Change(code, ServiceItemAction.Suspend, "Audit in progress."), RegistryScene.Operator);
        scene.Clock.Advance(TimeSpan.FromHours(2));

        RpcException error = await call.SendRefusedAsync([At(2, suspendedAt.AddMinutes(30), minutes: 30)]);
        Assert.Equal("PROVIDER_SUSPENDED", IngestCall.Reason(error));
        Assert.Equal(1L, await scene.Server.ScalarAsync<long>("SELECT committed_sequence FROM ingest_streams WHERE stream_id = 'cluster-a'"));
    }

    [Fact]
    public async Task Raw_log_lines_outside_the_admission_become_line_errors()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (_, key, _) = await scene.AdmitAsync();
        scene.Clock.Now = RegistryScene.ValidityEnds.AddDays(1);
        static string Line(string job, DateTimeOffset start) =>
            $$"""{"job_id":"{{job}}","account":"lab-vision","device_model":"H100-SXM","device_count":8,"start":"{{start:yyyy-MM-ddTHH:mm:sszzz}}","end":"{{start.AddMinutes(10):yyyy-MM-ddTHH:mm:sszzz}}"}""" + "\n";
        byte[] log = System.Text.Encoding.UTF8.GetBytes(Line("inside", RegistryScene.ValidityEnds.AddHours(-3)) + Line("after", RegistryScene.ValidityEnds.AddHours(1)));

        using var upload = scene.Server.RawLogClient().UploadLog(key);
        await upload.RequestStream.WriteAsync(new LogChunk
        {
            Header = new UploadHeader { UploadId = "u1", StreamId = "json", Format = LogFormat.JsonLines, Mapping = RawLogSamples.Mapping(), TotalBytes = (ulong)log.Length },
        });
        await upload.RequestStream.WriteAsync(new LogChunk { Data = Google.Protobuf.ByteString.CopyFrom(log) });
        await upload.RequestStream.CompleteAsync();
        UploadReport report = await upload.ResponseAsync;

        Assert.Equal(1UL, report.Records);
        LineError refused = Assert.Single(report.Errors);
        Assert.Equal((2UL, "ADMISSION_EXPIRED"), (refused.Line, refused.Reason));
    }
}
