using Grpc.Core;
using Metering.Engine.Access;
using Metering.Engine.Ingest;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Metering.Server.Access;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;
using Microsoft.Extensions.DependencyInjection;

namespace Metering.Server.Tests.Access;

/// <summary>
/// Plays the cheater against each per-caller limit (proto/metering/v1/limits.md): every extra
/// stream, open, bogus key or oversized request is refused with its reason, and nothing of it is
/// written.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class CallLimitTests(PostgresFixture postgres)
{
    [Fact]
    public async Task A_stream_beyond_the_callers_concurrent_streams_is_refused_and_writes_nothing()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, callLimits: new CallLimits { StreamsPerKeyMax = 2 });
        long before = await server.ScalarAsync<long>("SELECT count(*) FROM ingest_streams");
        await using IngestCall first = await IngestCall.OpenAsync(server.Client(), "cluster-a");
        await using IngestCall second = await IngestCall.OpenAsync(server.Client(), "cluster-b");

        RpcException error = await IngestCall.OpenRefusedAsync(server.Client(), "cluster-c");

        Assert.Equal(StatusCode.ResourceExhausted, error.StatusCode);
        Assert.Equal("STREAMS_PER_KEY_EXCEEDED", IngestCall.Reason(error));
        Assert.Equal("2", IngestCall.Metadata(error, "limit"));
        Assert.Equal(before + 2, await server.ScalarAsync<long>("SELECT count(*) FROM ingest_streams"));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM ingest_streams WHERE stream_id = 'cluster-c'"));

        // Closing one frees its place.
        await first.CompleteAsync();
        await WaitUntilAsync(async () => await TryOpenAsync(server, "cluster-c"));
    }

    [Fact]
    public async Task A_new_stream_id_beyond_the_days_limit_is_refused_but_a_known_one_reopens()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, callLimits: new CallLimits { StreamIdsPerDayMax = 2 });
        foreach (string id in new[] { "cluster-a", "cluster-b", "cluster-a" })
        {
            await using IngestCall call = await IngestCall.OpenAsync(server.Client(), id);
            await call.CompleteAsync();
        }

        RpcException error = await IngestCall.OpenRefusedAsync(server.Client(), "cluster-c");

        Assert.Equal(StatusCode.ResourceExhausted, error.StatusCode);
        Assert.Equal("STREAM_IDS_PER_DAY_EXCEEDED", IngestCall.Reason(error));
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM ingest_streams WHERE stream_id = 'cluster-c'"));
    }

    [Fact]
    public async Task Opens_beyond_the_minutes_bucket_are_refused()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, callLimits: new CallLimits { StreamOpensPerMinuteMax = 3 });
        for (int i = 0; i < 3; i++)
        {
            await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a");
            await call.CompleteAsync();
        }

        RpcException error = await IngestCall.OpenRefusedAsync(server.Client(), "cluster-a");

        Assert.Equal(StatusCode.ResourceExhausted, error.StatusCode);
        Assert.Equal("STREAM_OPENS_PER_MINUTE_EXCEEDED", IngestCall.Reason(error));
    }

    [Fact]
    public async Task Bogus_keys_from_one_peer_are_refused_after_the_limit_without_a_database_look_up_each()
    {
        const int allowed = 5;
        await using TestServer server = await TestServer.StartAsync(postgres, callLimits: new CallLimits { UnknownKeysPerPeerPerMinuteMax = allowed });
        CredentialStore store = server.Services.GetRequiredService<CredentialStore>();
        var registry = server.RegistryClient();

        // A valid key seen before the attack keeps working through it. Its first look-up took
        // one of the peer's tokens, as any key not seen valid yet does.
        await registry.ListAdmissionBatchesAsync(new ListAdmissionBatchesRequest(), TestServer.Bearer(TestServer.OperatorKey));
        long lookupsBefore = store.Lookups;
        const int bogusLookedUp = allowed - 1;

        var reasons = new List<string>();
        for (int i = 0; i < 40; i++)
        {
            RpcException error = await Assert.ThrowsAsync<RpcException>(() =>
                registry.ListAdmissionBatchesAsync(new ListAdmissionBatchesRequest(), TestServer.Bearer(CredentialStore.NewKey())).ResponseAsync);
            reasons.Add(error.StatusCode == StatusCode.Unauthenticated ? "UNAUTHENTICATED" : IngestCall.Reason(error) ?? error.StatusCode.ToString());
        }

        Assert.Equal(Enumerable.Repeat("UNAUTHENTICATED", bogusLookedUp), reasons.Take(bogusLookedUp));
        Assert.All(reasons.Skip(bogusLookedUp), reason => Assert.Equal("UNKNOWN_KEYS_PER_PEER_EXCEEDED", reason));
        Assert.Equal(bogusLookedUp, store.Lookups - lookupsBefore);

        await Task.Delay(new CallLimits().AuthenticationCacheMs + 100);
        await registry.ListAdmissionBatchesAsync(new ListAdmissionBatchesRequest(), TestServer.Bearer(TestServer.OperatorKey));
    }

    [Fact]
    public async Task Repeated_calls_with_one_key_are_answered_from_the_cache()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, callLimits: new CallLimits { AuthenticationCacheMs = 60_000 });
        CredentialStore store = server.Services.GetRequiredService<CredentialStore>();
        var registry = server.RegistryClient();
        await registry.ListAdmissionBatchesAsync(new ListAdmissionBatchesRequest(), TestServer.Bearer(TestServer.OperatorKey));
        long lookupsBefore = store.Lookups;

        for (int i = 0; i < 20; i++)
        {
            await registry.ListAdmissionBatchesAsync(new ListAdmissionBatchesRequest(), TestServer.Bearer(TestServer.OperatorKey));
        }

        Assert.Equal(lookupsBefore, store.Lookups);
    }

    [Fact]
    public async Task An_oversized_audit_request_is_refused_before_it_is_logged()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        var audit = new AuditService.AuditServiceClient(server.Channel);
        long logged = await server.ScalarAsync<long>("SELECT count(*) FROM audit_query_log");

        RpcException error = await Assert.ThrowsAsync<RpcException>(() => audit.VerifyChainAsync(
            new VerifyChainRequest { CreditCode = TestRecords.Provider, StreamId = new string('s', 1024 * 1024) }, TestServer.Bearer(TestServer.AuditorKey)).ResponseAsync);
        RpcException badStream = await Assert.ThrowsAsync<RpcException>(() => audit.VerifyChainAsync(
            new VerifyChainRequest { CreditCode = TestRecords.Provider, StreamId = "not a stream id" }, TestServer.Bearer(TestServer.AuditorKey)).ResponseAsync);

        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Equal("AUDIT_ARGUMENT_INVALID", IngestCall.Reason(error));
        Assert.Equal("AUDIT_ARGUMENT_INVALID", IngestCall.Reason(badStream));
        Assert.Equal(logged, await server.ScalarAsync<long>("SELECT count(*) FROM audit_query_log"));

        // A valid request is logged as before.
        await audit.VerifyChainAsync(new VerifyChainRequest { CreditCode = TestRecords.Provider }, TestServer.Bearer(TestServer.AuditorKey));
        Assert.Equal(logged + 1, await server.ScalarAsync<long>("SELECT count(*) FROM audit_query_log"));
    }

    [Fact]
    public async Task An_audit_call_beyond_the_callers_calls_in_flight_is_refused_before_it_is_logged()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, callLimits: new CallLimits { AuditCallsInFlightMax = 2 });
        var audit = new AuditService.AuditServiceClient(server.Channel);
        long logged = await server.ScalarAsync<long>("SELECT count(*) FROM audit_query_log");

        // Two calls of auditor-one are running: they hold the server's own limiter, as a slow
        // verification would while it reads.
        CallLimiter limiter = server.Services.GetRequiredService<CallLimiter>();
        using (limiter.AdmitAuditCall("auditor-one"))
        using (limiter.AdmitAuditCall("auditor-one"))
        {
            RpcException error = await Assert.ThrowsAsync<RpcException>(() => audit.VerifyChainAsync(
                new VerifyChainRequest { CreditCode = TestRecords.Provider }, TestServer.Bearer(TestServer.AuditorKey)).ResponseAsync);
            Assert.Equal(StatusCode.ResourceExhausted, error.StatusCode);
            Assert.Equal("AUDIT_CALLS_IN_FLIGHT_EXCEEDED", IngestCall.Reason(error));
            Assert.Equal(logged, await server.ScalarAsync<long>("SELECT count(*) FROM audit_query_log"));

            // Another caller has limits of its own.
            await audit.VerifyChainAsync(new VerifyChainRequest { CreditCode = TestRecords.Provider }, TestServer.Bearer(TestServer.OperatorKey));
        }

        await audit.VerifyChainAsync(new VerifyChainRequest { CreditCode = TestRecords.Provider }, TestServer.Bearer(TestServer.AuditorKey));
        Assert.Equal(logged + 2, await server.ScalarAsync<long>("SELECT count(*) FROM audit_query_log"));
    }

    [Fact]
    public async Task A_huge_differing_replay_stores_only_its_hash_and_first_bytes()
    {
        // The longest job id and site the limits allow: an encoding over 2 KiB long.
        await using TestServer server = await TestServer.StartAsync(postgres, limits: new IngestLimits { JobIdBytesMax = 1024, SiteBytesMax = 1024 });
        await using (IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a"))
        {
            await call.SendAsync(TestRecords.Range(1, 3));
        }

        var forged = TestRecords.Range(2, 2);
        forged[0].JobId = new string('j', 1024);
        forged[0].Site = new string('s', 1024);
        await using IngestCall replay = await IngestCall.OpenAsync(server.Client(), "cluster-a");
        RpcException error = await replay.SendRefusedAsync(forged);

        Assert.Equal("TAMPER_CONFLICT", IngestCall.Reason(error));
        var conflict = (await server.QueryAsync<(byte[] Offered, byte[] Canonical, int Length)>(
            "SELECT offered_hash, offered_canonical, offered_canonical_bytes FROM tamper_conflicts")).Single();
        Assert.Equal(32, conflict.Offered.Length);
        Assert.Equal(UsageStore.TamperCanonicalBytesMax, conflict.Canonical.Length);
        Assert.True(conflict.Length > 2_048, $"the offered encoding was {conflict.Length} bytes");
    }

    [Fact]
    public async Task A_revoked_key_loses_its_open_stream_within_the_recheck_interval()
    {
        var interval = TimeSpan.FromSeconds(1);
        await using TestServer server = await TestServer.StartAsync(postgres, recheck: new CredentialRecheckPolicy(interval));
        await using var dataSource = Database.CreateDataSource(server.ConnectionString);
        var credentials = new CredentialStore(dataSource, TimeProvider.System);
        var (credential, key) = await credentials.IssueAsync(Admissions.Operator, Role.Provider, TestRecords.Provider, "leaked", CancellationToken.None);
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "cluster-a", key);
        await call.SendAsync(TestRecords.Range(1, 3));

        await credentials.RevokeAsync(Admissions.Operator, credential.CredentialId, CancellationToken.None);
        await Task.Delay(interval + TimeSpan.FromMilliseconds(200));

        RpcException error = await call.SendRefusedAsync(TestRecords.Range(4, 6));
        Assert.Equal(StatusCode.Unauthenticated, error.StatusCode);
        Assert.Equal(3L, await server.ScalarAsync<long>("SELECT committed_sequence FROM ingest_streams WHERE stream_id = 'cluster-a'"));
    }

    [Fact]
    public void Limits_out_of_range_are_refused_at_start_up()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new CallLimits { StreamsPerKeyMax = 0 }.Validate());
        Assert.Throws<ArgumentOutOfRangeException>(() => new CallLimits { AuditCallsInFlightMax = 0 }.Validate());
        Assert.Throws<ArgumentOutOfRangeException>(() => new CredentialRecheckPolicy(TimeSpan.FromHours(1)).Validate());
    }

    private static async Task<bool> TryOpenAsync(TestServer server, string streamId)
    {
        try
        {
            await using IngestCall call = await IngestCall.OpenAsync(server.Client(), streamId);
            return true;
        }
        catch (Exception e) when (e is RpcException or Xunit.Sdk.XunitException)
        {
            return false;
        }
    }

    private static async Task WaitUntilAsync(Func<Task<bool>> condition)
    {
        for (int i = 0; i < 50; i++)
        {
            if (await condition())
            {
                return;
            }

            await Task.Delay(100);
        }

        Assert.Fail("the condition did not hold within 5 s");
    }
}
