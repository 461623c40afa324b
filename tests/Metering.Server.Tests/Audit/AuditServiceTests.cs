using System.Buffers.Binary;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Dapper;
using Grpc.Core;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;
using Npgsql;
using Parquet;
using Parquet.Schema;

namespace Metering.Server.Tests.Audit;

/// <summary>The AuditService over gRPC: exact totals, exports, the query log, and proofs checked independently.</summary>
[Collection(PostgresCollection.Name)]
public sealed class AuditServiceTests(PostgresFixture postgres)
{
    private static readonly Metadata Auditor = TestServer.Bearer(TestServer.AuditorKey);

    /// <summary>One record: 8 H100-SXM for 5 minutes is 8 × 300,000 ms × 989,400 GFLOPS / 3,600 = 659,600,000 nPFh.</summary>
    private const long H100RecordNpfh = 659_600_000;

    private static UsageSelection Period(string? provider = TestRecords.Provider) => new()
    {
        CreditCode = provider ?? "",
        FromUnixMs = TestRecords.BaseStartMs,
        UntilUnixMs = TestRecords.BaseStartMs + 86_400_000,
    };

    /// <summary>Ten H100 records (two holders) and one A100 record at 3/7 for 30 minutes.</summary>
    private static async Task SeedAsync(AuditScene scene)
    {
        List<UsageRecord> records = TestRecords.Range(1, 10);
        foreach (UsageRecord record in records.Where(r => r.Sequence > 6))
        {
            record.HolderCode = "91440300MA5G2XK3P1";
        }

        UsageRecord slice = TestRecords.Valid(11);
        slice.DeviceModel = "A100-SXM";
        slice.DeviceCount = 1;
        slice.ShareNumerator = 3;
        slice.ShareDenominator = 7;
        slice.EndUnixMs = slice.StartUnixMs + 1_800_000;
        slice.DeviceUuids.Clear();
        slice.ClearEnergyMwh();
        records.Add(slice);
        await scene.StreamAsync("cluster-a", records);
        await scene.StreamAsync("cluster-b", TestRecords.Range(1, 3));
    }

    [Fact]
    public async Task Usage_totals_are_exact_integers_grouped_as_asked()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await SeedAsync(scene);
        var audit = new AuditService.AuditServiceClient(scene.Server.Channel);

        QueryUsageResponse byModel = await audit.QueryUsageAsync(new QueryUsageRequest { Selection = Period(), GroupBy = UsageGroupBy.GroupByDeviceModel }, Auditor);

        // A100-SXM: 1 × 3/7 × 1,800,000 ms × 312,000 GFLOPS / 3,600 = 66,857,142.86 → 66,857,142 nPFh;
        // device time 3 × 1,800,000 / 7 = 771,428.57 → 771,428 device-ms, both rounded down.
        Assert.Equal(14UL, byModel.Total.Records);
        Assert.Equal((ulong)(13 * H100RecordNpfh + 66_857_142), byModel.Total.UsageNpfh);
        Assert.Equal((ulong)(13 * 2_400_000 + 771_428), byModel.Total.DeviceMs);
        Assert.Equal("8.641657142", byModel.Total.PflopsHours);
        Assert.Equal("8.880", byModel.Total.DeviceHours);
        Assert.Equal([("H100-SXM", 13UL), ("A100-SXM", 1UL)], byModel.Groups.Select(g => (g.Key, g.Records)));

        QueryUsageResponse byHolder = await audit.QueryUsageAsync(new QueryUsageRequest { Selection = Period(), GroupBy = UsageGroupBy.GroupByHolder }, Auditor);
        Assert.Equal(byModel.Total, byHolder.Total);
        Assert.Equal(byHolder.Total.UsageNpfh, (ulong)byHolder.Groups.Sum(g => (long)g.UsageNpfh));

        UsageSelection oneJob = Period();
        oneJob.JobId = "job-000003";
        QueryUsageResponse job = await audit.QueryUsageAsync(new QueryUsageRequest { Selection = oneJob }, Auditor);
        Assert.Equal((2UL, (ulong)(2 * H100RecordNpfh)), (job.Total.Records, job.Total.UsageNpfh));

        UsageSelection holderAndModel = Period(null);
        holderAndModel.HolderCode = "91440300MA5G2XK3P1";
        holderAndModel.DeviceModel = "H100-SXM";
        QueryUsageResponse narrowed = await audit.QueryUsageAsync(new QueryUsageRequest { Selection = holderAndModel, GroupBy = UsageGroupBy.GroupByDay }, Auditor);
        Assert.Equal(4UL, narrowed.Total.Records);
        Assert.Equal("2026-11-20", narrowed.Groups.Single().Key);
    }

    [Fact]
    public async Task Exports_in_csv_and_parquet_hold_every_selected_record_with_its_stored_values()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await SeedAsync(scene);
        var audit = new AuditService.AuditServiceClient(scene.Server.Channel);

        byte[] csv = await ExportAsync(audit, ExportFormat.Csv);
        string[] lines = Encoding.UTF8.GetString(csv).TrimEnd('\n').Split('\n');
        Assert.StartsWith("provider_id,stream_id,sequence,", lines[0], StringComparison.Ordinal);
        Assert.Equal(15, lines.Length);
        string[] first = lines[1].Split(',');
        Assert.Equal([TestRecords.Provider, "cluster-a", "1", "job-000001"], first[..4]);
        Assert.Equal(H100RecordNpfh.ToString(CultureInfo.InvariantCulture), first[17]);
        Assert.Equal("GPU-0001;GPU-0002", first[14]);

        byte[] parquet = await ExportAsync(audit, ExportFormat.Parquet);
        using var stream = new MemoryStream(parquet);
        await using ParquetReader reader = await ParquetReader.CreateAsync(stream);
        DataField[] fields = reader.Schema.GetDataFields();
        var usage = new List<long>();
        var streams = new List<string>();
        for (int g = 0; g < reader.RowGroupCount; g++)
        {
            using ParquetRowGroupReader group = reader.OpenRowGroupReader(g);
            var values = new long[group.RowCount];
            await group.ReadAsync<long>(fields.Single(f => f.Name == "usage_npfh"), values);
            usage.AddRange(values);
            var names = new string?[group.RowCount];
            await group.ReadAsync(fields.Single(f => f.Name == "stream_id"), names.AsMemory());
            streams.AddRange(names.Select(n => n ?? ""));
        }

        Assert.Equal(14, usage.Count);
        Assert.Equal(13 * H100RecordNpfh + 66_857_142, usage.Sum());
        Assert.Equal(11, streams.Count(s => s == "cluster-a"));
    }

    [Fact]
    public async Task A_parquet_export_stores_its_times_as_utc_timestamps_says_so_and_keeps_repeated_strings_in_a_dictionary()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await SeedAsync(scene);
        var audit = new AuditService.AuditServiceClient(scene.Server.Channel);

        byte[] parquet = await ExportAsync(audit, ExportFormat.Parquet);

        using var stream = new MemoryStream(parquet);
        await using ParquetReader reader = await ParquetReader.CreateAsync(stream);
        Assert.Equal(Metering.Engine.Audit.UsageExport.ZoneValue, reader.CustomMetadata[Metering.Engine.Audit.UsageExport.ZoneKey]);
        DataField[] fields = reader.Schema.GetDataFields();
        foreach (string name in (string[])["start_at", "end_at", "committed_at"])
        {
            var field = Assert.IsType<DateTimeDataField>(fields.Single(f => f.Name == name));
            Assert.Equal((DateTimeFormat.Timestamp, true, DateTimeTimeUnit.Millis), (field.DateTimeFormat, field.IsAdjustedToUTC, field.Unit));
        }

        using ParquetRowGroupReader group = reader.OpenRowGroupReader(0);
        var startMs = new long[group.RowCount];
        await group.ReadAsync<long>(fields.Single(f => f.Name == "start_unix_ms"), startMs);
        var startAt = new DateTime[group.RowCount];
        await group.ReadAsync<DateTime>(fields.Single(f => f.Name == "start_at"), startAt);
        var committedAt = new DateTime[group.RowCount];
        await group.ReadAsync<DateTime>(fields.Single(f => f.Name == "committed_at"), committedAt);
        Assert.Equal(startMs, startAt.Select(t => new DateTimeOffset(DateTime.SpecifyKind(t, DateTimeKind.Utc)).ToUnixTimeMilliseconds()));
        Assert.Contains(TestRecords.Valid(1).StartUnixMs, startMs);
        Assert.All(committedAt, t => Assert.InRange(t, DateTime.UtcNow.AddMinutes(-10), DateTime.UtcNow.AddMinutes(1)));

        // Repeated strings (14 records of one provider) are written once, in a dictionary page;
        // the chain hashes, all different, are not.
        Parquet.Meta.ColumnChunk Column(string name) => reader.Metadata!.RowGroups[0].Columns.Single(c => c.MetaData!.PathInSchema.SequenceEqual([name]));
        Assert.Contains(Column("provider_id").MetaData!.Encodings, e => e is Parquet.Meta.Encoding.RLE_DICTIONARY or Parquet.Meta.Encoding.PLAIN_DICTIONARY);
        Assert.Contains(Column("device_model").MetaData!.Encodings, e => e is Parquet.Meta.Encoding.RLE_DICTIONARY or Parquet.Meta.Encoding.PLAIN_DICTIONARY);
        Assert.Equal(Parquet.Meta.Type.INT64, Column("start_at").MetaData!.Type);
    }

    [Fact]
    public async Task Every_audit_query_is_logged_with_who_asked_what_and_when_and_the_log_cannot_be_rewritten()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await SeedAsync(scene);
        var audit = new AuditService.AuditServiceClient(scene.Server.Channel);
        DateTimeOffset before = DateTimeOffset.UtcNow.AddSeconds(-1);

        await audit.QueryUsageAsync(new QueryUsageRequest { Selection = Period(), GroupBy = UsageGroupBy.GroupByHolder }, Auditor);
        await audit.VerifyChainAsync(new VerifyChainRequest { CreditCode = TestRecords.Provider }, TestServer.Bearer(TestServer.OperatorKey));
        await audit.GetMerkleRootAsync(new GetMerkleRootRequest { CreditCode = TestRecords.Provider, Day = "2026-11-20" }, TestServer.Bearer());
        await Assert.ThrowsAsync<RpcException>(() => audit.QueryUsageAsync(new QueryUsageRequest { Selection = new UsageSelection { FromUnixMs = 5, UntilUnixMs = 1 } }, Auditor).ResponseAsync);

        ListAuditQueriesResponse log = await audit.ListAuditQueriesAsync(new ListAuditQueriesRequest { Limit = 10 }, Auditor);

        // Newest first: the listing itself, the refused query, then the three before it.
        Assert.Equal(["ListAuditQueries", "QueryUsage", "GetMerkleRoot", "VerifyChain", "QueryUsage"], log.Queries.Select(q => q.Query));
        Assert.Equal(["auditor-one", "auditor-one", TestRecords.Provider, "operator-one", "auditor-one"], log.Queries.Select(q => q.Actor));
        Assert.Equal(["auditor", "auditor", "provider", "operator", "auditor"], log.Queries.Select(q => q.Role));
        Assert.All(log.Queries, q => Assert.Equal("grpc", q.Via));
        Assert.All(log.Queries, q => Assert.InRange(q.AskedAtUnixMs, before.ToUnixTimeMilliseconds(), DateTimeOffset.UtcNow.ToUnixTimeMilliseconds()));
        Assert.Contains("GROUP_BY_HOLDER", log.Queries[4].ParametersJson, StringComparison.Ordinal);
        Assert.Equal(TestRecords.Provider, log.Queries[4].CreditCode);

        await using NpgsqlConnection connection = await scene.DataSource.OpenConnectionAsync();
        await Assert.ThrowsAsync<PostgresException>(() => connection.ExecuteAsync("UPDATE audit_query_log SET actor = 'someone else'"));
        await Assert.ThrowsAsync<PostgresException>(() => connection.ExecuteAsync("DELETE FROM audit_query_log"));
    }

    [Fact]
    public async Task An_inclusion_proof_checks_out_with_plain_sha256_against_the_daily_root()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        await SeedAsync(scene);
        var audit = new AuditService.AuditServiceClient(scene.Server.Channel);

        MerkleRoot root = await audit.GetMerkleRootAsync(new GetMerkleRootRequest { CreditCode = TestRecords.Provider, Day = "2026-11-20" }, Auditor);
        InclusionProof proof = await audit.GetInclusionProofAsync(new GetInclusionProofRequest { CreditCode = TestRecords.Provider, StreamId = "cluster-a", Sequence = 7 }, TestServer.Bearer());

        // The documented rule, recomputed here without the engine: chain hash, leaf, steps.
        byte[] chain = SHA256.HashData([.. proof.PreviousHash.ToByteArray(), .. proof.Canonical.ToByteArray()]);
        await using NpgsqlConnection connection = await scene.DataSource.OpenConnectionAsync();
        byte[] stored = await connection.ExecuteScalarAsync<byte[]>(
            "SELECT chain_hash FROM usage_records WHERE provider_id = @p AND stream_id = 'cluster-a' AND sequence = 7", new { p = TestRecords.Provider }) ?? [];
        Assert.Equal(stored, chain);
        byte[] running = SHA256.HashData([0x00, .. chain]);
        foreach (ProofStep step in proof.Steps)
        {
            byte[] sibling = step.Sibling.ToByteArray();
            running = step.Side == ProofSide.Left ? SHA256.HashData([0x01, .. sibling, .. running]) : SHA256.HashData([0x01, .. running, .. sibling]);
        }

        Assert.Equal(root.Root.ToByteArray(), running);
        Assert.Equal(proof.Root, root.Root);

        // The canonical bytes name the record proved: format, provider, stream, sequence.
        byte[] canonical = proof.Canonical.ToByteArray();
        Assert.Equal(1, canonical[0]);
        Assert.Equal(TestRecords.Provider, Encoding.UTF8.GetString(canonical, 3, 18));
        Assert.Equal("cluster-a", Encoding.UTF8.GetString(canonical, 23, 9));
        Assert.Equal(7UL, BinaryPrimitives.ReadUInt64BigEndian(canonical.AsSpan(32)));

        // The root itself, rebuilt from the stored chain hashes in the documented order (the
        // template's proof stream is left out: it is never settled, and lies in 2024 anyway).
        var hashes = (await connection.QueryAsync<byte[]>("""
            SELECT chain_hash FROM usage_records WHERE provider_id = @p AND start_at >= '2026-11-19 16:00:00+00' AND start_at < '2026-11-20 16:00:00+00'
              AND stream_id NOT LIKE 'proof:%' ORDER BY stream_id COLLATE "C", sequence
            """, new { p = TestRecords.Provider })).ToList();
        Assert.Equal((uint)hashes.Count, root.LeafCount);
        Assert.Equal(14u, root.LeafCount);
        Assert.Equal(IndependentRoot(hashes.Select(h => SHA256.HashData([0x00, .. h])).ToList()), root.Root.ToByteArray());
        Assert.Equal(6u, proof.LeafIndex);
    }

    [Fact]
    public async Task Bad_requests_are_refused_with_their_reason_and_change_nothing()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        var audit = new AuditService.AuditServiceClient(scene.Server.Channel);

        RpcException period = await Assert.ThrowsAsync<RpcException>(() => audit.QueryUsageAsync(new QueryUsageRequest { Selection = new UsageSelection { FromUnixMs = 10, UntilUnixMs = 5 } }, Auditor).ResponseAsync);
        RpcException day = await Assert.ThrowsAsync<RpcException>(() => audit.GetMerkleRootAsync(new GetMerkleRootRequest { CreditCode = TestRecords.Provider, Day = "20-11-2026" }, Auditor).ResponseAsync);
        RpcException missing = await Assert.ThrowsAsync<RpcException>(() => audit.GetInclusionProofAsync(new GetInclusionProofRequest { CreditCode = TestRecords.Provider, StreamId = "nowhere", Sequence = 1 }, Auditor).ResponseAsync);
        RpcException proofStream = await Assert.ThrowsAsync<RpcException>(() => audit.GetInclusionProofAsync(new GetInclusionProofRequest { CreditCode = TestRecords.Provider, StreamId = Admissions.ProofStream, Sequence = 1 }, Auditor).ResponseAsync);

        Assert.Equal((StatusCode.InvalidArgument, "AUDIT_ARGUMENT_INVALID"), (period.StatusCode, IngestCall.Reason(period)));
        Assert.Equal((StatusCode.InvalidArgument, "AUDIT_ARGUMENT_INVALID"), (day.StatusCode, IngestCall.Reason(day)));
        Assert.Equal((StatusCode.NotFound, "AUDIT_NOT_FOUND"), (missing.StatusCode, IngestCall.Reason(missing)));
        Assert.Equal((StatusCode.NotFound, "AUDIT_NOT_FOUND"), (proofStream.StatusCode, IngestCall.Reason(proofStream)));
        Assert.Equal(0L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id NOT LIKE 'proof:%'"));
    }

    [Fact]
    public async Task A_malformed_credit_code_is_refused_before_the_log_and_an_unknown_one_is_not_found()
    {
        await using AuditScene scene = await AuditScene.StartAsync(postgres);
        var audit = new AuditService.AuditServiceClient(scene.Server.Channel);
        // The test provider's code with its check character changed: 18 characters, but nobody's.
        string malformed = TestRecords.Provider[..17] + (TestRecords.Provider[17] == '6' ? '7' : '6');
        string unknown = Metering.Engine.Identity.CreditCode.Complete("91440300MA5K00001");

        RpcException verify = await Assert.ThrowsAsync<RpcException>(() => audit.VerifyChainAsync(new VerifyChainRequest { CreditCode = malformed }, Auditor).ResponseAsync);
        RpcException anomalies = await Assert.ThrowsAsync<RpcException>(() => audit.DetectAnomaliesAsync(
            new DetectAnomaliesRequest { CreditCode = "not-a-code", FromUnixMs = TestRecords.BaseStartMs, UntilUnixMs = TestRecords.BaseStartMs + 86_400_000 }, Auditor).ResponseAsync);
        UsageSelection badHolder = Period();
        badHolder.HolderCode = "9144030071526726XZ";
        RpcException usage = await Assert.ThrowsAsync<RpcException>(() => audit.QueryUsageAsync(new QueryUsageRequest { Selection = badHolder }, Auditor).ResponseAsync);
        long logged = await scene.Server.ScalarAsync<long>("SELECT count(*) FROM audit_query_log");
        RpcException nobody = await Assert.ThrowsAsync<RpcException>(() => audit.VerifyChainAsync(new VerifyChainRequest { CreditCode = unknown }, Auditor).ResponseAsync);
        RpcException nobodysUsage = await Assert.ThrowsAsync<RpcException>(() => audit.QueryUsageAsync(new QueryUsageRequest { Selection = Period(unknown) }, Auditor).ResponseAsync);

        foreach (RpcException refused in new[] { verify, anomalies, usage })
        {
            Assert.Equal((StatusCode.InvalidArgument, "AUDIT_ARGUMENT_INVALID"), (refused.StatusCode, IngestCall.Reason(refused)));
            Assert.Contains("is not a unified social credit code", refused.Status.Detail, StringComparison.Ordinal);
        }

        // Malformed requests are refused before the log; a well-formed code is logged, then found to name nobody.
        Assert.Equal(0L, logged);
        Assert.Equal((StatusCode.NotFound, "AUDIT_NOT_FOUND"), (nobody.StatusCode, IngestCall.Reason(nobody)));
        Assert.Equal((StatusCode.NotFound, "AUDIT_NOT_FOUND"), (nobodysUsage.StatusCode, IngestCall.Reason(nobodysUsage)));
        Assert.Contains($"no provider {unknown} is registered", nobody.Status.Detail, StringComparison.Ordinal);

        // A known provider's stream that was never opened is not an intact chain either.
        RpcException neverOpened = await Assert.ThrowsAsync<RpcException>(() => audit.VerifyChainAsync(
            new VerifyChainRequest { CreditCode = TestRecords.Provider, StreamId = "never-opened" }, Auditor).ResponseAsync);
        Assert.Equal((StatusCode.NotFound, "AUDIT_NOT_FOUND"), (neverOpened.StatusCode, IngestCall.Reason(neverOpened)));
        Assert.Contains("has no stream never-opened", neverOpened.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(2L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM audit_query_log WHERE provider_id = @unknown", new { unknown }));
    }

    private static async Task<byte[]> ExportAsync(AuditService.AuditServiceClient audit, ExportFormat format)
    {
        using var call = audit.ExportUsage(new ExportUsageRequest { Selection = Period(), Format = format }, Auditor);
        using var file = new MemoryStream();
        ulong records = 0;
        await foreach (ExportChunk chunk in call.ResponseStream.ReadAllAsync())
        {
            chunk.Data.WriteTo(file);
            records = Math.Max(records, chunk.Records);
        }

        Assert.Equal(14UL, records);
        return file.ToArray();
    }

    /// <summary>The tree as merkle-proofs.md words it: pair from the left, carry an odd last node up unchanged.</summary>
    private static byte[] IndependentRoot(List<byte[]> level)
    {
        while (level.Count > 1)
        {
            var next = new List<byte[]>();
            for (int i = 0; i < level.Count; i += 2)
            {
                next.Add(i + 1 < level.Count ? SHA256.HashData([0x01, .. level[i], .. level[i + 1]]) : level[i]);
            }

            level = next;
        }

        return level.Single();
    }
}
