using System.Globalization;
using Dapper;
using Grpc.Core;
using Metering.Engine.Settlement;
using Metering.Engine.Signing;
using Metering.Engine.Transparency;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;
using Npgsql;
using EngineTreeHead = Metering.Engine.Transparency.SignedTreeHead;

namespace Metering.Server.Tests.Transparency;

/// <summary>
/// The transparency log through settlement, the real server and the `metering` CLI as a process:
/// leaves appended with the day, heads signed by the server, an outsider's saved head checked
/// later, and the insider who rewrites the log under the triggers caught by that saved head.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class TransparencyLogTests(PostgresFixture postgres)
{
    private static readonly DateOnly Day = VoucherScene.Day;
    private static readonly DateOnly NextDay = Day.AddDays(1);

    /// <summary>A real server on the scene's clock, with usage of both providers on two days and a public key file as `key signing show` prints it.</summary>
    private sealed class LogScene : IAsyncDisposable
    {
        public required TestServer Server { get; init; }

        public required VoucherScene Scene { get; init; }

        public required string Folder { get; init; }

        public string PublicKeyPath => Path.Combine(Folder, "server.pub.pem");

        public TransparencyService.TransparencyServiceClient Log => new(Server.Channel);

        public static async Task<LogScene> StartAsync(PostgresFixture postgres)
        {
            var clock = new ManualClock(VoucherScene.Now);
            TestServer server = await TestServer.StartAsync(postgres, time: clock);
            VoucherScene scene = VoucherScene.Over(server.ConnectionString, clock);
            await scene.IngestAsync("cluster-a", VoucherScene.Jobs(TestRecords.Holder, Day, 3));
            await scene.IngestAsync("rack-1", VoucherScene.Jobs(TestRecords.Holder, Day, 2, firstSlot: 20, prefix: "rack"), provider: TestRecords.OtherProvider);
            await scene.IngestAsync("cluster-a", VoucherScene.Jobs(TestRecords.Holder, NextDay, 4));
            await scene.IngestAsync("rack-1", VoucherScene.Jobs(TestRecords.Holder, NextDay, 1, firstSlot: 20, prefix: "rack"), provider: TestRecords.OtherProvider);
            string folder = Directory.CreateTempSubdirectory("tlog-").FullName;
            await File.WriteAllTextAsync(Path.Combine(folder, "server.pub.pem"), $"key id: {TestServer.SigningKey.KeyId}\n{TestServer.SigningKey.PublicKey.Pem}\n");
            return new LogScene { Server = server, Scene = scene, Folder = folder };
        }

        /// <summary>Settles a day through the server, as the nightly batch does.</summary>
        public async Task<Protocol.V1.Settlement> SettleAsync(DateOnly day) =>
            await new SettlementService.SettlementServiceClient(Server.Channel).SettleDayAsync(
                new SettleDayRequest { Day = day.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture) }, TestServer.Bearer(TestServer.SettlementKey));

        public Task<(int ExitCode, string Output)> CliAsync(string key, params string[] arguments) =>
            CliProcess.RunAsync([.. arguments, "--server", Server.Address.ToString(), "--ca", TestCertificates.CaPemPath, "--api-key", key]);

        /// <summary>`metering audit log-head --out`, as an outsider saves a head; returns the file.</summary>
        public async Task<string> SaveHeadAsync(string name)
        {
            string path = Path.Combine(Folder, name);
            var (exit, output) = await CliAsync(TestServer.AuditorKey, "audit", "log-head", "--out", path, "--public-key", PublicKeyPath);
            Assert.True(exit == 0, output);
            return path;
        }

        public Task<(int ExitCode, string Output)> CheckLogAsync(string savedHead) =>
            CliAsync(TestServer.AuditorKey, "audit", "check-log", "--head", savedHead, "--public-key", PublicKeyPath);

        /// <summary>As the database superuser, past the append-only triggers.</summary>
        public async Task AsInsiderAsync(string sql)
        {
            await using var connection = new NpgsqlConnection(Server.ConnectionString);
            await connection.ExecuteAsync($"SET session_replication_role = replica; {sql}; RESET session_replication_role;");
        }

        public async ValueTask DisposeAsync()
        {
            await Scene.DisposeAsync();
            await Server.DisposeAsync();
            Directory.Delete(Folder, recursive: true);
        }
    }

    [Fact]
    public async Task Settling_a_day_appends_each_provider_statements_root_as_a_leaf_in_its_transaction_and_a_rerun_appends_nothing()
    {
        await using LogScene log = await LogScene.StartAsync(postgres);
        DailySettlement settlement = log.Scene.Settlement();

        SettlementOutcome first = await settlement.SettleAsync(Day, VoucherScene.Batch, null, CancellationToken.None);
        SettlementOutcome again = await settlement.SettleAsync(Day, VoucherScene.Batch, null, CancellationToken.None);
        List<LogLeaf> afterFirst = await new TransparencyLog(log.Scene.DataSource, TestServer.SigningKey, log.Scene.Clock, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance)
            .ReadLeavesAsync(CancellationToken.None);

        Assert.True(again.AlreadyClosed);
        // One leaf per provider statement, in ordinal order of the providers, repeating the
        // statement's merkle_root row and the run's settlement hash.
        Assert.Equal([TestRecords.Provider, TestRecords.OtherProvider], afterFirst.Select(l => l.ProviderId));
        foreach (LogLeaf leaf in afterFirst)
        {
            StatementRow root = first.Statements.Single(s => s.PartyKind == StatementFormats.ProviderKind && s.Party == leaf.ProviderId).Parse()
                .Rows.Single(r => r.Record == StatementFormats.MerkleRootRecord);
            Assert.Equal((Day, root.Records!.Value, root.Note, first.SettlementHex),
                (leaf.Day, leaf.LeafCount, Convert.ToHexStringLower(leaf.DailyRoot), Convert.ToHexStringLower(leaf.SettlementSha256)));
        }

        Assert.Equal([3L, 2L], afterFirst.Select(l => l.LeafCount));
        Assert.Equal(await log.Scene.ScalarAsync<long>("SELECT run_id FROM settlement_runs WHERE day = @day", new { day = Day }),
            await log.Scene.ScalarAsync<long>("SELECT DISTINCT run_id FROM transparency_log_leaves"));

        // A run that does not commit leaves no leaf behind: here one stopped while it waits to commit.
        using (var stop = new CancellationTokenSource())
        {
            DailySettlement paused = log.Scene.Settlement(new SettlementOptions { PauseBeforeCommit = TimeSpan.FromSeconds(30) });
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => paused.SettleAsync(NextDay, VoucherScene.Batch, step =>
            {
                if (step.Stage == "log")
                {
                    Assert.Contains("appended to the transparency log as leaves 2 to 3", step.Message, StringComparison.Ordinal);
                }

                if (step.Stage == "drill")
                {
                    stop.Cancel();
                }
            }, stop.Token));
        }

        Assert.Equal(2L, await log.Scene.ScalarAsync<long>("SELECT count(*) FROM transparency_log_leaves"));
        SettlementOutcome next = await settlement.SettleAsync(NextDay, VoucherScene.Batch, null, CancellationToken.None);
        Assert.Equal([0L, 1L, 2L, 3L], await log.Scene.QueryAsync<long>("SELECT leaf_index FROM transparency_log_leaves ORDER BY leaf_index"));
        Assert.Equal([4L, 1L], await log.Scene.QueryAsync<long>("SELECT leaf_count FROM transparency_log_leaves WHERE day = @day ORDER BY leaf_index", new { day = NextDay }));
        Assert.Equal(next.SettlementHex, Convert.ToHexStringLower(await log.Scene.ScalarAsync<byte[]>("SELECT settlement_sha256 FROM transparency_log_leaves WHERE leaf_index = 3")));
        // Settlement signs nothing: heads are the server's.
        Assert.Equal(0L, await log.Scene.ScalarAsync<long>("SELECT count(*) FROM transparency_tree_heads"));
    }

    [Fact]
    public async Task The_log_tables_refuse_update_delete_and_truncate_and_keep_their_rows()
    {
        await using LogScene log = await LogScene.StartAsync(postgres);
        await log.SettleAsync(Day);
        string before = await log.Scene.ScalarAsync<string>("SELECT (SELECT string_agg(encode(daily_root, 'hex'), ',' ORDER BY leaf_index) FROM transparency_log_leaves) || '|' || (SELECT string_agg(encode(root, 'hex'), ',' ORDER BY tree_size) FROM transparency_tree_heads)");

        string[] attempts =
        [
            "UPDATE transparency_log_leaves SET daily_root = sha256(daily_root)",
            "DELETE FROM transparency_log_leaves WHERE leaf_index = 1",
            "TRUNCATE transparency_log_leaves",
            "TRUNCATE settlement_runs CASCADE",
            "UPDATE transparency_tree_heads SET root = sha256(root)",
            "DELETE FROM transparency_tree_heads",
            "TRUNCATE transparency_tree_heads",
        ];
        foreach (string attempt in attempts)
        {
            var refused = await Assert.ThrowsAsync<PostgresException>(() => log.Scene.ScalarAsync<int>(attempt + "; SELECT 1"));
            Assert.Equal(PostgresErrorCodes.InsufficientPrivilege, refused.SqlState);
        }

        Assert.Equal(before, await log.Scene.ScalarAsync<string>("SELECT (SELECT string_agg(encode(daily_root, 'hex'), ',' ORDER BY leaf_index) FROM transparency_log_leaves) || '|' || (SELECT string_agg(encode(root, 'hex'), ',' ORDER BY tree_size) FROM transparency_tree_heads)"));
        Assert.Equal(2L, await log.Scene.ScalarAsync<long>("SELECT count(*) FROM transparency_log_leaves"));
    }

    [Fact]
    public async Task A_head_saved_after_the_first_day_is_extended_after_the_second_and_check_log_consistency_and_log_proof_pass()
    {
        await using LogScene log = await LogScene.StartAsync(postgres);
        await log.SettleAsync(Day);
        string saved = await log.SaveHeadAsync("head-day1.json");
        await log.SettleAsync(NextDay);

        var (checkExit, checkOutput) = await log.CheckLogAsync(saved);
        var (consistencyExit, consistencyOutput) = await log.CliAsync(TestServer.ProviderKey, "audit", "consistency", "--from", "2", "--to", "4", "--public-key", log.PublicKeyPath);
        var (proofExit, proofOutput) = await log.CliAsync(TestServer.ProviderKey, "audit", "log-proof", "--provider", TestRecords.Provider, "--day", "2026-11-21", "--public-key", log.PublicKeyPath);

        EngineTreeHead savedHead = EngineTreeHead.FromJson(await File.ReadAllTextAsync(saved));
        Assert.Equal(2, savedHead.TreeSize);
        Assert.True(checkExit == 0, checkOutput);
        Assert.Contains("OK: the log of size 4 extends the saved head of size 2", checkOutput, StringComparison.Ordinal);
        Assert.True(consistencyExit == 0, consistencyOutput);
        Assert.Contains("verifies: yes", consistencyOutput, StringComparison.Ordinal);
        Assert.True(proofExit == 0, proofOutput);
        Assert.Contains($"leaf 2 of 4: {TestRecords.Provider} 2026-11-21, 4 records", proofOutput, StringComparison.Ordinal);
        // Each settle through the server signed the size it made, with the server's key.
        var heads = await log.Scene.QueryAsync<(long Size, string KeyId)>("SELECT tree_size, key_id FROM transparency_tree_heads ORDER BY tree_size");
        Assert.Equal([(2L, TestServer.SigningKey.KeyId), (4L, TestServer.SigningKey.KeyId)], heads);
    }

    [Fact]
    public async Task An_insider_who_rewrites_a_settled_days_leaf_and_has_new_heads_signed_is_caught_by_a_head_saved_before()
    {
        await using LogScene log = await LogScene.StartAsync(postgres);
        await log.SettleAsync(Day);
        string saved = await log.SaveHeadAsync("head-before.json");

        // The insider rewrote a usage row of the day and recomputed its Merkle root, statement and
        // settlement hash; the log's leaf follows, and the heads signed over the old leaf go.
        await log.AsInsiderAsync($"""
            UPDATE usage_records SET device_count = 1 WHERE provider_id = '{TestRecords.Provider}' AND stream_id = 'cluster-a' AND sequence = 2;
            UPDATE transparency_log_leaves SET daily_root = sha256(daily_root), settlement_sha256 = sha256(settlement_sha256) WHERE leaf_index = 0;
            DELETE FROM transparency_tree_heads
            """);
        // The server signs the rewritten log: a genuine head, of the same size, with another root.
        var (headExit, headOutput) = await log.CliAsync(TestServer.AuditorKey, "audit", "log-head", "--public-key", log.PublicKeyPath);
        var (sameSizeExit, sameSizeOutput) = await log.CheckLogAsync(saved);
        await log.SettleAsync(NextDay);
        var (grownExit, grownOutput) = await log.CheckLogAsync(saved);

        Assert.True(headExit == 0, headOutput);
        Assert.Contains("verifies with the published key", headOutput, StringComparison.Ordinal);
        Assert.Equal(3, sameSizeExit);
        Assert.Contains("FAILED: the log of size 2 changed: the saved head's root is", sameSizeOutput, StringComparison.Ordinal);
        Assert.Equal(3, grownExit);
        Assert.Contains("FAILED: the current log (size 4, root", grownOutput, StringComparison.Ordinal);
        Assert.Contains("does not extend the saved head (size 2", grownOutput, StringComparison.Ordinal);
        Assert.Contains("at least one of the first 2 leaves was rewritten", grownOutput, StringComparison.Ordinal);
        // Both current heads were properly signed: what failed is the history, not a signature.
        Assert.DoesNotContain("not signed", sameSizeOutput + grownOutput, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_forged_saved_head_a_head_signed_by_another_key_and_a_log_that_shrank_are_each_named()
    {
        await using LogScene log = await LogScene.StartAsync(postgres);
        await log.SettleAsync(Day);
        await log.SettleAsync(NextDay);
        string saved = await log.SaveHeadAsync("head-4.json");
        EngineTreeHead head = EngineTreeHead.FromJson(await File.ReadAllTextAsync(saved));

        // A saved head edited afterwards, and one signed by a key that is not the server's.
        string edited = Path.Combine(log.Folder, "edited.json");
        await File.WriteAllTextAsync(edited, (head with { TimestampUnixMs = head.TimestampUnixMs + 1 }).ToJson());
        using ServerSigningKey other = ServerSigningKey.CreateNew();
        string foreign = Path.Combine(log.Folder, "foreign.json");
        await File.WriteAllTextAsync(foreign, (EngineTreeHead.Sign(other, head.TreeSize, head.Root, head.TimestampUnixMs) with { KeyId = head.KeyId }).ToJson());
        var (editedExit, editedOutput) = await log.CheckLogAsync(edited);
        var (foreignExit, foreignOutput) = await log.CheckLogAsync(foreign);
        var (honestExit, honestOutput) = await log.CheckLogAsync(saved);

        // The insider drops the second day's leaves and the heads over them.
        await log.AsInsiderAsync("DELETE FROM transparency_log_leaves WHERE leaf_index >= 2; DELETE FROM transparency_tree_heads");
        var (shrunkExit, shrunkOutput) = await log.CheckLogAsync(saved);

        Assert.Equal((3, 3), (editedExit, foreignExit));
        Assert.Contains("FAILED: the saved tree head (size 4) is not signed by the published key: its signature does not verify", editedOutput, StringComparison.Ordinal);
        Assert.Contains("FAILED: the saved tree head (size 4) is not signed by the published key: its signature does not verify", foreignOutput, StringComparison.Ordinal);
        Assert.True(honestExit == 0, honestOutput);
        Assert.Equal(3, shrunkExit);
        Assert.Contains("FAILED: the log shrank: the saved head has 4 leaves, the current head 2", shrunkOutput, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Bad_log_requests_get_a_specific_status_and_reason_and_sign_nothing()
    {
        await using LogScene log = await LogScene.StartAsync(postgres);
        await log.SettleAsync(Day);
        await log.SettleAsync(NextDay);
        Metadata auditor = TestServer.Bearer(TestServer.AuditorKey);
        Metadata provider = TestServer.Bearer(TestServer.ProviderKey);
        TransparencyService.TransparencyServiceClient client = log.Log;
        async Task<(StatusCode, string?)> Refusal<T>(Func<AsyncUnaryCall<T>> call)
        {
            var e = await Assert.ThrowsAsync<RpcException>(() => call().ResponseAsync);
            return (e.StatusCode, IngestCall.Reason(e));
        }

        long headsBefore = await log.Scene.ScalarAsync<long>("SELECT count(*) FROM transparency_tree_heads");

        Assert.Equal((StatusCode.InvalidArgument, "LOG_ARGUMENT_INVALID"), await Refusal(() => client.GetConsistencyProofAsync(new GetConsistencyProofRequest { FromSize = 0, ToSize = 2 }, auditor)));
        Assert.Equal((StatusCode.InvalidArgument, "LOG_ARGUMENT_INVALID"), await Refusal(() => client.GetConsistencyProofAsync(new GetConsistencyProofRequest { FromSize = 3, ToSize = 2 }, auditor)));
        Assert.Equal((StatusCode.OutOfRange, "LOG_BEYOND_LOG"), await Refusal(() => client.GetConsistencyProofAsync(new GetConsistencyProofRequest { FromSize = 2, ToSize = 5 }, auditor)));
        Assert.Equal((StatusCode.NotFound, "LOG_HEAD_NOT_FOUND"), await Refusal(() => client.GetTreeHeadAsync(new GetTreeHeadRequest { TreeSize = 3 }, auditor)));
        Assert.Equal((StatusCode.NotFound, "LOG_LEAF_NOT_FOUND"), await Refusal(() => client.GetLogInclusionProofAsync(
            new GetLogInclusionProofRequest { CreditCode = TestRecords.Provider, Day = "2026-11-25", TreeSize = 4 }, auditor)));
        Assert.Equal((StatusCode.InvalidArgument, "LOG_ARGUMENT_INVALID"), await Refusal(() => client.GetLogInclusionProofAsync(
            new GetLogInclusionProofRequest { CreditCode = TestRecords.Provider, Day = "20261120", TreeSize = 4 }, auditor)));
        Assert.Equal((StatusCode.InvalidArgument, "LOG_ARGUMENT_INVALID"), await Refusal(() => client.GetLogInclusionProofAsync(
            new GetLogInclusionProofRequest { CreditCode = TestRecords.Provider, Day = "2026-11-20", LeafIndex = 0, TreeSize = 4 }, auditor)));
        Assert.Equal((StatusCode.OutOfRange, "LOG_BEYOND_LOG"), await Refusal(() => client.GetLogInclusionProofAsync(
            new GetLogInclusionProofRequest { CreditCode = TestRecords.Provider, Day = "2026-11-21", TreeSize = 2 }, auditor)));
        Assert.Equal((StatusCode.OutOfRange, "LOG_BEYOND_LOG"), await Refusal(() => client.GetLogInclusionProofAsync(
            new GetLogInclusionProofRequest { LeafIndex = 1, TreeSize = 9 }, auditor)));
        // A provider reads the heads and its own leaves, not another provider's leaf, by name or by index.
        Assert.Equal((StatusCode.PermissionDenied, "OTHER_PROVIDER"), await Refusal(() => client.GetLogInclusionProofAsync(
            new GetLogInclusionProofRequest { CreditCode = TestRecords.OtherProvider, Day = "2026-11-20" }, provider)));
        Assert.Equal((StatusCode.PermissionDenied, "OTHER_PROVIDER"), await Refusal(() => client.GetLogInclusionProofAsync(
            new GetLogInclusionProofRequest { LeafIndex = 1 }, provider)));
        Assert.Equal(0UL, (await client.GetLogInclusionProofAsync(new GetLogInclusionProofRequest { LeafIndex = 0 }, provider)).LeafIndex);
        Assert.Equal(4UL, (await client.GetTreeHeadAsync(new GetTreeHeadRequest(), provider)).TreeSize);
        Assert.Equal(headsBefore, await log.Scene.ScalarAsync<long>("SELECT count(*) FROM transparency_tree_heads"));

        // The CLI says the same, and exits 4.
        var (exit, output) = await log.CliAsync(TestServer.AuditorKey, "audit", "consistency", "--from", "3", "--to", "2", "--public-key", log.PublicKeyPath);
        Assert.Equal(4, exit);
        Assert.Contains("InvalidArgument LOG_ARGUMENT_INVALID", output, StringComparison.Ordinal);
    }
}
