using System.Security.Cryptography;
using System.Text;
using Dapper;
using Metering.Engine.Audit;
using Metering.Engine.Settlement;
using Metering.Engine.Fixtures;
using Metering.Fixtures;
using Npgsql;

namespace Metering.Engine.IntegrationTests.Settlement;

/// <summary>
/// The daily Merkle root each provider statement publishes: that it is the root of exactly the
/// records the run settled, that an auditor recomputes it and checks proofs against it from the
/// stored rows, that records committed after the run stay out of it, and that a rewrite shows.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class SettlementMerkleTests(PostgresFixture postgres)
{
    private static readonly DateOnly Day = VoucherScene.Day;
    private static readonly DateOnly NextDay = Day.AddDays(1);

    /// <summary>SHA-256 of no bytes: the root of a day without records (merkle-proofs.md).</summary>
    private const string EmptyRootHex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    private static readonly string OtherHolder = Metering.Engine.Identity.CreditCode.Complete("91440300MA5K00001");

    /// <summary>
    /// The first provider: ten records in cluster-a and three of another holder in cluster-b on
    /// the day, two in a proof stream (never leaves); the second provider: four in rack-1. No
    /// contracts: the roots do not depend on prices.
    /// </summary>
    private static async Task<VoucherScene> SeedAsync(PostgresFixture postgres)
    {
        VoucherScene scene = await VoucherScene.StartAsync(postgres);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(TestRecords.Holder, Day, 10));
        await scene.IngestAsync("cluster-b", VoucherScene.Jobs(OtherHolder, Day, 3, firstSlot: 50, prefix: "other"));
        await scene.IngestAsync("proof:nightly", VoucherScene.Jobs(TestRecords.Holder, Day, 2, firstSlot: 100, prefix: "proof"));
        await scene.IngestAsync("rack-1", VoucherScene.Jobs(TestRecords.Holder, Day, 4, firstSlot: 20, prefix: "rack"), provider: TestRecords.OtherProvider);
        return scene;
    }

    private static PartyStatement Statement(SettlementOutcome outcome, string kind, string party) =>
        outcome.Statements.Single(s => s.PartyKind == kind && s.Party == party).Parse();

    private static StatementRow PublishedRoot(SettlementOutcome outcome, string provider) =>
        Statement(outcome, StatementFormats.ProviderKind, provider).Rows.Single(r => r.Record == StatementFormats.MerkleRootRecord);

    private static Task<DailyRoot> RootAsync(VoucherScene scene, string provider, DateOnly day, MerkleCutOff cutOff) =>
        new DailyMerkle(scene.DataSource).RootAsync(provider, day, cutOff, CancellationToken.None);

    [Fact]
    public async Task Each_provider_statement_publishes_the_root_an_auditor_recomputes_as_settled_from_the_stored_rows()
    {
        await using VoucherScene scene = await SeedAsync(postgres);

        SettlementOutcome outcome = await scene.SettleAsync(Day);

        foreach (var (provider, leaves) in new[] { (TestRecords.Provider, 13), (TestRecords.OtherProvider, 4) })
        {
            StatementRow published = PublishedRoot(outcome, provider);
            DailyRoot settled = await RootAsync(scene, provider, Day, MerkleCutOff.AsSettled);
            Assert.Equal((Day, provider, (long)leaves), (published.UsageDay!.Value, published.Provider, published.Records!.Value));
            Assert.Equal((leaves, Convert.ToHexStringLower(settled.Root)), (settled.LeafCount, published.Note));
            // The documented tree over the documented leaf order, rebuilt without the engine.
            Assert.Equal(await IndependentRootAsync(scene, provider, Day), published.Note);
        }

        // The row is evidence, not usage: the total counts the day's thirteen records once, and
        // only provider statements carry a root.
        PartyStatement statement = Statement(outcome, StatementFormats.ProviderKind, TestRecords.Provider);
        Assert.Equal(13L, statement.Rows.Single(r => r.Record == "total").Records!.Value);
        Assert.Equal(["usage", "usage", StatementFormats.MerkleRootRecord, "total"], statement.Rows.Select(r => r.Record));
        Assert.DoesNotContain(outcome.Statements.Where(s => s.PartyKind != StatementFormats.ProviderKind), s => s.Parse().Rows.Any(r => r.Record == StatementFormats.MerkleRootRecord));
        string hex = PublishedRoot(outcome, TestRecords.Provider).Note;
        StoredStatement stored = outcome.Statements.Single(s => s.PartyKind == StatementFormats.ProviderKind && s.Party == TestRecords.Provider);
        Assert.Contains($",merkle_root,2026-11-20,{TestRecords.Provider},,,,,13,,,,,,,,,,,{hex}\n", Encoding.UTF8.GetString(stored.CanonicalCsv), StringComparison.Ordinal);
        using var json = System.Text.Json.JsonDocument.Parse(StatementFormats.Json(stored.Parse(), stored.Sha256));
        System.Text.Json.JsonElement row = json.RootElement.GetProperty("rows").EnumerateArray().Single(r => r.GetProperty("record").GetString() == StatementFormats.MerkleRootRecord);
        Assert.Equal((13, hex), (row.GetProperty("leafCount").GetInt32(), row.GetProperty("root").GetString()));
        Assert.Contains(hex, StatementRendering.Text(stored.Parse(), new StatementContext(stored.Sha256, outcome.SettlementHex, outcome.FinishedAt, PartyNames.None)), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Rows_stored_out_of_sequence_order_give_the_root_of_the_documented_leaf_order()
    {
        await using VoucherScene scene = await SeedAsync(postgres);
        // A stream long enough to be read in several chunks, some hashed on the thread pool.
        await scene.WriteUngatedAsync("cluster-long", Enumerable.Range(0, 6_000).Select(i => VoucherScene.Usage(TestRecords.Holder, Day, i % 280, $"long-{i:D4}")).ToList());
        // Maintenance may reorder a table: here every stream's rows end up stored last to first.
        await using (NpgsqlConnection connection = await scene.DataSource.OpenConnectionAsync())
        {
            await connection.ExecuteAsync("""
                CREATE INDEX reversed ON usage_records_2026_11 (sequence DESC);
                CLUSTER usage_records_2026_11 USING reversed;
                DROP INDEX reversed;
                ANALYZE usage_records_2026_11;
                """);
        }

        List<long> stored = await scene.QueryAsync<long>("SELECT sequence FROM usage_records_2026_11 WHERE stream_id = 'cluster-a' LIMIT 2");
        Assert.Equal([10L, 9L], stored);
        SettlementOutcome outcome = await scene.SettleAsync(Day);

        StatementRow published = PublishedRoot(outcome, TestRecords.Provider);
        Assert.Equal(6_013L, published.Records!.Value);
        Assert.Equal(await IndependentRootAsync(scene, TestRecords.Provider, Day), published.Note);
        Assert.Equal(await IndependentRootAsync(scene, TestRecords.OtherProvider, Day), PublishedRoot(outcome, TestRecords.OtherProvider).Note);
        InclusionProof late = await new DailyMerkle(scene.DataSource).ProveAsync(TestRecords.Provider, "cluster-long", 5_000, MerkleCutOff.AsSettled, CancellationToken.None);
        Assert.Equal((13 + 4_999, published.Note), (late.LeafIndex, Fold(late)));
    }

    [Fact]
    public async Task An_inclusion_proof_from_the_audit_path_folds_up_to_the_root_the_statement_published()
    {
        await using VoucherScene scene = await SeedAsync(postgres);
        SettlementOutcome outcome = await scene.SettleAsync(Day);
        string published = PublishedRoot(outcome, TestRecords.Provider).Note;
        var merkle = new DailyMerkle(scene.DataSource);

        InclusionProof inA = await merkle.ProveAsync(TestRecords.Provider, "cluster-a", 7, MerkleCutOff.AsSettled, CancellationToken.None);
        InclusionProof inB = await merkle.ProveAsync(TestRecords.Provider, "cluster-b", 3, MerkleCutOff.AsSettled, CancellationToken.None);

        Assert.Equal((6, 13), (inA.LeafIndex, inA.LeafCount));
        Assert.Equal((12, 13), (inB.LeafIndex, inB.LeafCount));
        Assert.Equal(published, Fold(inA));
        Assert.Equal(published, Fold(inB));
        await Assert.ThrowsAsync<RecordNotFoundException>(() => merkle.ProveAsync(TestRecords.Provider, "proof:nightly", 1, MerkleCutOff.AsSettled, CancellationToken.None));
    }

    [Fact]
    public async Task A_record_committed_after_the_run_is_in_no_published_root_even_when_its_ingest_began_before_the_run()
    {
        await using VoucherScene scene = await SeedAsync(postgres);
        // A batch whose ingest transaction begins before the run and commits once the run has
        // its snapshot: its committed_at is earlier than that of a batch the run does see.
        var entered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Task slow = scene.WriteUngatedAsync("cluster-slow", [VoucherScene.Usage(TestRecords.Holder, Day, 150, "slow-1")], beforeCommit: async (_, _) =>
        {
            entered.SetResult();
            await release.Task;
        });
        await entered.Task.WaitAsync(TimeSpan.FromSeconds(30));
        await scene.IngestAsync("cluster-b", [VoucherScene.Usage(TestRecords.Holder, Day, 151, "quick-1")]);

        using var slowCommitted = new ManualResetEventSlim();
        _ = slow.ContinueWith(_ => slowCommitted.Set(), TaskScheduler.Default);

        SettlementOutcome outcome = await scene.SettleAsync(Day, step =>
        {
            if (step.Stage == "marks")
            {
                // The slow batch commits now: after the run took its snapshot, before it reads the day.
                release.SetResult();
                Assert.True(slowCommitted.Wait(TimeSpan.FromSeconds(30)), "the slow batch committed");
            }
        });
        await slow;
        await scene.IngestAsync("cluster-a", [VoucherScene.Usage(TestRecords.Holder, Day, 152, "late-1")]);

        var committed = (await scene.QueryAsync<DateTime>("SELECT committed_at FROM usage_records WHERE job_id IN ('slow-1', 'quick-1') ORDER BY job_id DESC")).ToArray();
        Assert.True(committed[0] < committed[1], "the slow batch began first");
        StatementRow published = PublishedRoot(outcome, TestRecords.Provider);
        DailyRoot settled = await RootAsync(scene, TestRecords.Provider, Day, MerkleCutOff.AsSettled);
        DailyRoot everything = await RootAsync(scene, TestRecords.Provider, Day, MerkleCutOff.None);
        DailyRoot asOfQuick = await RootAsync(scene, TestRecords.Provider, Day, MerkleCutOff.AsOf(new DateTimeOffset(committed[1], TimeSpan.Zero)));
        Assert.Equal((14L, 14), (published.Records!.Value, settled.LeafCount));
        Assert.Equal(published.Note, Convert.ToHexStringLower(settled.Root));
        Assert.Equal(16, everything.LeafCount);
        Assert.NotEqual(published.Note, Convert.ToHexStringLower(everything.Root));
        // No instant reproduces the run: as of the last batch it saw, the slow batch is in too.
        Assert.Equal(15, asOfQuick.LeafCount);
        var merkle = new DailyMerkle(scene.DataSource);
        await Assert.ThrowsAsync<RecordNotFoundException>(() => merkle.ProveAsync(TestRecords.Provider, "cluster-slow", 1, MerkleCutOff.AsSettled, CancellationToken.None));
        await Assert.ThrowsAsync<RecordNotFoundException>(() => merkle.ProveAsync(TestRecords.Provider, "cluster-a", 11, MerkleCutOff.AsSettled, CancellationToken.None));
        Assert.Equal(Convert.ToHexStringLower(everything.Root), Fold(await merkle.ProveAsync(TestRecords.Provider, "cluster-slow", 1, MerkleCutOff.None, CancellationToken.None)));

        // Both are settled once, as adjustments of the next run, whose root covers its own day only.
        SettlementOutcome next = await scene.SettleAsync(NextDay);
        Assert.Equal(2, next.AdjustmentRecords);
        Assert.Equal((0L, EmptyRootHex), (PublishedRoot(next, TestRecords.Provider).Records!.Value, PublishedRoot(next, TestRecords.Provider).Note));
    }

    [Fact]
    public async Task A_day_read_in_many_block_ranges_gives_the_documented_root_with_streams_across_ranges_sparse_sequences_and_a_sequence_stored_twice()
    {
        await using VoucherScene scene = await SeedAsync(postgres);
        // A stream that runs through the whole table, so that every range boundary cuts it, with
        // every third record of the next day, so that the day's sequences have gaps.
        await scene.WriteUngatedAsync("cluster-long", Enumerable.Range(0, 6_000)
            .Select(i => VoucherScene.Usage(TestRecords.Holder, i % 3 == 0 ? NextDay : Day, i % 280, $"long-{i:D4}")).ToList());
        // A sequence stored twice, as only a rewrite past the append-only triggers can: the copy
        // lands in the table's last block, in another range than the record it copies, with
        // another chain hash, which orders the two leaves.
        await using (NpgsqlConnection connection = await scene.DataSource.OpenConnectionAsync())
        {
            const string Columns = "provider_id, stream_id, sequence, job_id, holder_code, device_model, device_count, share_numerator, share_denominator, start_at, end_at, site, device_uuids, energy_mwh, catalog_version, usage_npfh, chain_hash, committed_at";
            await connection.ExecuteAsync($"""
                SET session_replication_role = replica;
                INSERT INTO usage_records ({Columns})
                SELECT {Columns.Replace("start_at, end_at", "start_at + interval '1 second', end_at + interval '1 second'", StringComparison.Ordinal).Replace("chain_hash,", "sha256(chain_hash),", StringComparison.Ordinal)}
                FROM usage_records WHERE stream_id = 'cluster-long' AND job_id = 'long-3001';
                RESET session_replication_role;
                ANALYZE usage_records_2026_11;
                """);
        }

        Assert.Equal([2L], await scene.QueryAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = 'cluster-long' AND sequence = (SELECT sequence FROM usage_records WHERE job_id = 'long-3001' LIMIT 1)"));
        var progress = new List<SettlementProgress>();
        SettlementOutcome outcome = await scene.Settlement(new SettlementOptions { DaySegments = 2, DayRangesPerSegment = 8 }).SettleAsync(Day, VoucherScene.Batch, progress.Add, CancellationToken.None);

        // Two connections read sixteen ranges, eight each, in turn.
        Assert.Contains("read in 2 block-range segments, 16 ranges of ", progress.Single(p => p.Stage == "aggregate").Message, StringComparison.Ordinal);
        StatementRow published = PublishedRoot(outcome, TestRecords.Provider);
        Assert.Equal(13L + 4_000 + 1, published.Records!.Value);
        Assert.Equal(await IndependentRootAsync(scene, TestRecords.Provider, Day), published.Note);
        Assert.Equal(await IndependentRootAsync(scene, TestRecords.OtherProvider, Day), PublishedRoot(outcome, TestRecords.OtherProvider).Note);
        Assert.Equal(Convert.ToHexStringLower((await RootAsync(scene, TestRecords.Provider, Day, MerkleCutOff.AsSettled)).Root), published.Note);
    }

    [Fact]
    public async Task A_record_rewritten_by_sql_after_settlement_makes_the_recomputed_root_or_its_proof_disagree_with_the_statement()
    {
        await using VoucherScene scene = await SeedAsync(postgres);
        SettlementOutcome outcome = await scene.SettleAsync(Day);
        string published = PublishedRoot(outcome, TestRecords.Provider).Note;
        var merkle = new DailyMerkle(scene.DataSource);

        // Past the append-only triggers, as only a superuser can: first a field of record 4,
        // which moves the row in the table but leaves its stored chain hash alone.
        await RewriteAsync(scene, "device_count = 1");
        DailyRoot afterField = await RootAsync(scene, TestRecords.Provider, Day, MerkleCutOff.AsSettled);
        InclusionProof proof = await merkle.ProveAsync(TestRecords.Provider, "cluster-a", 4, MerkleCutOff.AsSettled, CancellationToken.None);
        // The leaves are the stored chain hashes, in sequence order wherever the row now lies, so
        // the root still matches; the record's own bytes no longer hash to its chain hash.
        Assert.Equal(published, Convert.ToHexStringLower(afterField.Root));
        Assert.NotEqual(proof.ChainHash, SHA256.HashData([.. proof.PreviousHash, .. proof.Canonical]));

        // Then its chain hash, made to look consistent: the recomputed root changes.
        await RewriteAsync(scene, "chain_hash = sha256(chain_hash)");
        DailyRoot afterHash = await RootAsync(scene, TestRecords.Provider, Day, MerkleCutOff.AsSettled);
        Assert.Equal(13, afterHash.LeafCount);
        Assert.NotEqual(published, Convert.ToHexStringLower(afterHash.Root));
        // The statement that published the root is untouched and still verifies.
        SettlementOutcome reread = (await scene.Settlement().GetAsync(Day, CancellationToken.None))!;
        Assert.Equal(published, PublishedRoot(reread, TestRecords.Provider).Note);
        // The untouched provider's root still matches its statement.
        Assert.Equal(PublishedRoot(outcome, TestRecords.OtherProvider).Note,
            Convert.ToHexStringLower((await RootAsync(scene, TestRecords.OtherProvider, Day, MerkleCutOff.AsSettled)).Root));
    }

    private static async Task RewriteAsync(VoucherScene scene, string assignment)
    {
        await using NpgsqlConnection connection = await scene.DataSource.OpenConnectionAsync();
        await connection.ExecuteAsync($"""
            SET session_replication_role = replica;
            UPDATE usage_records SET {assignment} WHERE provider_id = @p AND stream_id = 'cluster-a' AND sequence = 4;
            RESET session_replication_role;
            """, new { p = TestRecords.Provider });
    }

    [Fact]
    public async Task Rerunning_a_closed_day_after_late_records_returns_the_same_bytes_and_the_same_root()
    {
        await using VoucherScene scene = await SeedAsync(postgres);
        SettlementOutcome first = await scene.SettleAsync(Day);
        await scene.IngestAsync("cluster-a", [VoucherScene.Usage(TestRecords.Holder, Day, 200, "late-1")]);

        SettlementOutcome again = await scene.SettleAsync(Day);

        Assert.True(again.AlreadyClosed);
        Assert.Equal(first.Statements.Select(s => s.CanonicalCsv), again.Statements.Select(s => s.CanonicalCsv));
        Assert.Equal(first.SettlementHex, again.SettlementHex);
        string published = PublishedRoot(again, TestRecords.Provider).Note;
        Assert.Equal(published, Convert.ToHexStringLower((await RootAsync(scene, TestRecords.Provider, Day, MerkleCutOff.AsSettled)).Root));
        Assert.NotEqual(published, Convert.ToHexStringLower((await RootAsync(scene, TestRecords.Provider, Day, MerkleCutOff.None)).Root));
    }

    [Fact]
    public async Task A_provider_statement_without_records_of_its_day_publishes_the_empty_root_and_a_provider_without_a_statement_none()
    {
        await using VoucherScene scene = await SeedAsync(postgres);
        await scene.SettleAsync(Day);
        await scene.IngestAsync("cluster-a", [VoucherScene.Usage(TestRecords.Holder, Day, 200, "late-1")]);

        SettlementOutcome next = await scene.SettleAsync(NextDay);

        // The first provider is on the next day's statements only through its late record.
        PartyStatement statement = Statement(next, StatementFormats.ProviderKind, TestRecords.Provider);
        Assert.Equal(["adjustment", StatementFormats.MerkleRootRecord, "total"], statement.Rows.Select(r => r.Record));
        StatementRow published = PublishedRoot(next, TestRecords.Provider);
        Assert.Equal((NextDay, 0L, EmptyRootHex), (published.UsageDay!.Value, published.Records!.Value, published.Note));
        DailyRoot settled = await RootAsync(scene, TestRecords.Provider, NextDay, MerkleCutOff.AsSettled);
        Assert.Equal((0, EmptyRootHex), (settled.LeafCount, Convert.ToHexStringLower(settled.Root)));
        // The second provider has nothing on the next day and no statement; its root as settled is the empty root all the same.
        Assert.DoesNotContain(next.Statements, s => s.Party == TestRecords.OtherProvider);
        DailyRoot absent = await RootAsync(scene, TestRecords.OtherProvider, NextDay, MerkleCutOff.AsSettled);
        Assert.Equal((0, EmptyRootHex), (absent.LeafCount, Convert.ToHexStringLower(absent.Root)));
        // A day not yet settled has no root as settled.
        await Assert.ThrowsAsync<DayNotSettledException>(() => RootAsync(scene, TestRecords.Provider, NextDay.AddDays(1), MerkleCutOff.AsSettled));
    }

    /// <summary>A proof checked as merkle-proofs.md tells an auditor to: chain hash, leaf, steps, with plain SHA-256; the root in hex.</summary>
    private static string Fold(InclusionProof proof)
    {
        byte[] chain = SHA256.HashData([.. proof.PreviousHash, .. proof.Canonical]);
        Assert.Equal(proof.ChainHash, chain);
        byte[] running = SHA256.HashData([0x00, .. chain]);
        foreach (ProofStep step in proof.Steps)
        {
            running = step.Side == ProofSide.Left ? SHA256.HashData([0x01, .. step.Sibling, .. running]) : SHA256.HashData([0x01, .. running, .. step.Sibling]);
        }

        return Convert.ToHexStringLower(running);
    }

    /// <summary>
    /// The root as settled, rebuilt with SQL and plain SHA-256: the records at or below the
    /// marks of the day's run, ordered by PostgreSQL in the documented order, folded as the
    /// specification words it.
    /// </summary>
    private static async Task<string> IndependentRootAsync(VoucherScene scene, string provider, DateOnly day)
    {
        List<byte[]> level = (await scene.QueryAsync<byte[]>("""
            SELECT u.chain_hash FROM usage_records u
            JOIN settlement_stream_marks m ON m.provider_id = u.provider_id AND m.stream_id = u.stream_id
             AND m.run_id = (SELECT run_id FROM settlement_runs WHERE day = @day)
            WHERE u.provider_id = @provider AND u.sequence <= m.committed_sequence AND u.stream_id NOT LIKE 'proof:%'
              AND u.start_at >= @from AND u.start_at < @until
            ORDER BY u.stream_id COLLATE "C", u.sequence, sha256('\x00'::bytea || u.chain_hash)
            """, new
        {
            provider,
            day = day.ToDateTime(TimeOnly.MinValue),
            from = ShanghaiStart(day),
            until = ShanghaiStart(day.AddDays(1)),
        })).Select(h => SHA256.HashData([0x00, .. h])).ToList();
        if (level.Count == 0)
        {
            return EmptyRootHex;
        }

        while (level.Count > 1)
        {
            var next = new List<byte[]>();
            for (int i = 0; i < level.Count; i += 2)
            {
                next.Add(i + 1 < level.Count ? SHA256.HashData([0x01, .. level[i], .. level[i + 1]]) : level[i]);
            }

            level = next;
        }

        return Convert.ToHexStringLower(level[0]);
    }

    private static DateTime ShanghaiStart(DateOnly day) => new DateTimeOffset(day.ToDateTime(TimeOnly.MinValue), TimeSpan.FromHours(8)).UtcDateTime;
}
