using Dapper;
using Grpc.Core;
using Metering.Engine.Fixtures;
using Metering.Engine.Storage;
using Metering.Fixtures;
using Metering.Protocol.V1;
using Metering.Probe.Attestation.Results;
using Metering.Server.Fixtures;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;

namespace Metering.Server.Tests.Storage;

/// <summary>
/// The schema laid out on Citus by `metering db migrate --distributed`, on a coordinator and two
/// workers that the fixture starts on loopback (skipped where the citus extension is not
/// installed): the layout itself, ingest, verification, Merkle roots and settlement through the
/// real server giving what one node gives, and the evidence guards still standing on the shards;
/// the registry's and the voucher book's workflows are in CitusLayoutTests.Workflows.cs.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed partial class CitusLayoutTests(PostgresFixture postgres, CitusCluster citus) : IClassFixture<CitusCluster>
{
    private const string Stream = "cluster-citus";

    /// <summary>The one-node fixture, for the parts of the class in other files (a primary constructor's parameters are seen only in this one).</summary>
    private PostgresFixture Postgres => postgres;

    /// <summary>The Citus cluster, for the parts of the class in other files.</summary>
    private CitusCluster Cluster => citus;

    [CitusFact]
    public async Task Migrate_distributed_shards_per_provider_tables_co_located_copies_registry_tables_and_changes_nothing_when_run_again()
    {
        var before = await LayoutAsync();
        await using (NpgsqlDataSource dataSource = Database.CreateDataSource(citus.ConnectionString))
        {
            await new Migrator(dataSource, NullLogger.Instance) { Distributed = true }.MigrateAsync();
        }

        var after = await LayoutAsync();
        Assert.Equal(before, after);
        foreach (string table in CitusLayout.Distributed)
        {
            Assert.Equal("h", after[table].Method);
            Assert.Equal(after["usage_records"].Colocation, after[table].Colocation);
        }

        Assert.All(CitusLayout.Reference, table => Assert.Equal(("n", "t"), (after[table].Method, after[table].Model)));
        Assert.DoesNotContain(after.Keys, table => CitusLayout.PlacementOf(table) == TablePlacement.Coordinator && after[table].Method != "n");
    }

    [CitusFact]
    public async Task Ingest_verification_and_merkle_root_through_the_server_match_one_node()
    {
        Outcome single = await RunDayAsync(await postgres.CreateDatabaseAsync(), TestServer.ProviderKey, TestServer.AuditorKey, TestServer.SettlementKey, settle: false);
        Outcome distributed = await RunDayAsync(citus.ConnectionString, citus.Keys.Provider, citus.Keys.Auditor, citus.Keys.Settlement, settle: false);

        Assert.Equal(60UL, distributed.Verified);
        Assert.True(distributed.Intact);
        Assert.Equal(single.ChainHead, distributed.ChainHead);
        Assert.Equal(single.LiveRoot, distributed.LiveRoot);
        Assert.Equal(single, distributed);

        // The records are read back through the coordinator from the provider's shard.
        await using var coordinator = new NpgsqlConnection(citus.ConnectionString);
        Assert.Equal(60L, await coordinator.ExecuteScalarAsync<long>("SELECT count(*) FROM usage_records WHERE provider_id = @p AND stream_id = @s", new { p = TestRecords.Provider, s = Stream }));
    }

    [CitusFact]
    public async Task Settlement_and_the_settled_root_on_the_distributed_layout_match_one_node_and_a_rerun_writes_nothing()
    {
        Outcome single = await RunDayAsync(await AtTheClustersCountersAsync(await postgres.CreateDatabaseAsync()), TestServer.ProviderKey, TestServer.AuditorKey,
            TestServer.SettlementKey, settle: true, TestServer.OperatorKey);
        Outcome distributed = await RunDayAsync(citus.ConnectionString, citus.Keys.Provider, citus.Keys.Auditor, citus.Keys.Settlement, settle: true, citus.Keys.Operator);

        // Priced under a contract, with a claim's hold posted: the ledger has entries to balance.
        Assert.Equal((60L, 72_000L, 1_200L), (distributed.Settled!.DayRecords, distributed.Settled.FeeFen, distributed.Settled.SubsidyFen));
        Assert.Equal(single.SettlementSha256, distributed.SettlementSha256);
        Assert.Equal(single.SettledRoot, distributed.SettledRoot);
        Assert.Equal(single.Settled, distributed.Settled);
        Assert.Equal(single, distributed);
    }

    [CitusFact]
    public async Task Audit_verify_anomalies_report_root_and_proof_through_the_server_match_one_node()
    {
        // The other provider, whose rows no other test of the cluster touches, so that its
        // provider-wide audits see the same streams on both layouts.
        AuditAnswers single = await AuditDayAsync(await postgres.CreateDatabaseAsync(), TestServer.OtherProviderKey, TestServer.AuditorKey);
        AuditAnswers distributed = await AuditDayAsync(citus.ConnectionString, citus.Keys.OtherProvider, citus.Keys.Auditor);

        // Its two streams of the day and the proof stream of its admission, each intact.
        Assert.Equal(3, distributed.Verified.Streams.Count);
        Assert.Contains(distributed.Verified.Streams, s => s.StreamId == "audit-b" && s.RecordsChecked == 12);
        Assert.All(distributed.Verified.Streams, s => Assert.True(s.Intact));
        Assert.Contains(distributed.Anomalies.Anomalies, a => a.Kind == AnomalyKind.AnomalySilentStream);
        Assert.Equal(distributed.Root.Root, distributed.Proof.Root);
        Assert.Equal(single.Verified, distributed.Verified);
        Assert.Equal(single.Anomalies, distributed.Anomalies);
        Assert.Equal(single.Root, distributed.Root);
        Assert.Equal(single.Proof, distributed.Proof);
        Assert.Equal((single.Report.Anomalies, single.Report.StreamsBroken), (distributed.Report.Anomalies, distributed.Report.StreamsBroken));
        Assert.True(distributed.Report.Anomalies > 0);
    }

    private sealed record AuditAnswers(VerifyChainResponse Verified, DetectAnomaliesResponse Anomalies, AuditReport Report, MerkleRoot Root, InclusionProof Proof);

    /// <summary>Two streams of the other provider on the day, the second after two idle hours, then every audit of the provider through the server.</summary>
    private async Task<AuditAnswers> AuditDayAsync(string database, string providerKey, string auditorKey)
    {
        await using TestServer server = await TestServer.StartAsync(postgres, time: new ManualClock(VoucherScene.Now), database: database);
        foreach (var (stream, firstSlot) in new[] { ("audit-a", 0), ("audit-b", 40) })
        {
            List<UsageRecord> records = VoucherScene.Jobs(TestRecords.Holder, VoucherScene.Day, 12, firstSlot, prefix: stream);
            for (int i = 0; i < records.Count; i++)
            {
                records[i].Sequence = (ulong)i + 1;
            }

            await using IngestCall call = await IngestCall.OpenAsync(server.Client(), stream, providerKey);
            await call.SendAsync([.. records]);
            await call.CompleteAsync();
        }

        var audit = new AuditService.AuditServiceClient(server.Channel);
        Metadata auditor = TestServer.Bearer(auditorKey);
        long from = new DateTimeOffset(2026, 11, 20, 0, 0, 0, TimeSpan.FromHours(8)).ToUnixTimeMilliseconds();
        return new AuditAnswers(
            await audit.VerifyChainAsync(new VerifyChainRequest { CreditCode = TestRecords.OtherProvider }, auditor),
            await audit.DetectAnomaliesAsync(new DetectAnomaliesRequest { CreditCode = TestRecords.OtherProvider, FromUnixMs = from, UntilUnixMs = from + 86_400_000, SilenceMinutes = 60 }, auditor),
            await audit.RenderReportAsync(new RenderReportRequest { CreditCode = TestRecords.OtherProvider, FromDay = "2026-11-20", ToDay = "2026-11-20" }, auditor),
            await audit.GetMerkleRootAsync(new GetMerkleRootRequest { CreditCode = TestRecords.OtherProvider, Day = "2026-11-20" }, auditor),
            await audit.GetInclusionProofAsync(new GetInclusionProofRequest { CreditCode = TestRecords.OtherProvider, StreamId = "audit-b", Sequence = 5 }, auditor));
    }

    [CitusFact]
    public async Task An_update_of_evidence_is_refused_on_the_distributed_table_and_on_the_shard_itself()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, time: new ManualClock(VoucherScene.Now), database: citus.ConnectionString);
        // The day before the one the comparison settles, which this stream must not change.
        await IngestAsync(server, "cluster-guard", citus.Keys.Provider, 3, VoucherScene.Day.AddDays(-1));

        // The owner, through the coordinator: no privilege stops it, only the guard trigger.
        await using var coordinator = new NpgsqlConnection(citus.ConnectionString);
        PostgresException distributed = await Assert.ThrowsAsync<PostgresException>(() => coordinator.ExecuteAsync(
            "UPDATE usage_records SET site = 'rewritten' WHERE provider_id = @p AND stream_id = 'cluster-guard'", new { p = TestRecords.Provider }));
        Assert.Contains("append-only", distributed.MessageText, StringComparison.Ordinal);

        // The runtime role, through the coordinator: not even granted.
        await using var runtime = new NpgsqlConnection(PostgresFixture.AsRuntimeRole(citus.ConnectionString));
        PostgresException denied = await Assert.ThrowsAsync<PostgresException>(() => runtime.ExecuteAsync(
            "UPDATE usage_records SET site = 'rewritten' WHERE provider_id = @p AND stream_id = 'cluster-guard'", new { p = TestRecords.Provider }));
        Assert.Equal(PostgresErrorCodes.InsufficientPrivilege, denied.SqlState);

        // The superuser of the worker that holds the shard, on the shard itself.
        var (shard, host) = await coordinator.QuerySingleAsync<(string, string)>("""
            SELECT s.shard_name::text, s.nodename FROM citus_shards s
            WHERE s.table_name = 'usage_records_2026_11'::regclass AND s.shardid = get_shard_id_for_distribution_column('usage_records_2026_11', @p)
            """, new { p = TestRecords.Provider });
        string worker = citus.WorkerConnectionStrings.Single(w => new NpgsqlConnectionStringBuilder(w).Host == host);
        await using var onWorker = new NpgsqlConnection(worker);
        Assert.Equal(3L, await onWorker.ExecuteScalarAsync<long>($"SELECT count(*) FROM {shard} WHERE stream_id = 'cluster-guard'"));
        PostgresException onShard = await Assert.ThrowsAsync<PostgresException>(() => onWorker.ExecuteAsync($"UPDATE {shard} SET site = 'rewritten' WHERE stream_id = 'cluster-guard'"));
        Assert.Contains("append-only", onShard.MessageText, StringComparison.Ordinal);
        PostgresException deleted = await Assert.ThrowsAsync<PostgresException>(() => onWorker.ExecuteAsync($"DELETE FROM {shard} WHERE stream_id = 'cluster-guard'"));
        Assert.Contains("append-only", deleted.MessageText, StringComparison.Ordinal);
        Assert.Equal(0L, await onWorker.ExecuteScalarAsync<long>($"SELECT count(*) FROM {shard} WHERE site = 'rewritten'"));
    }

    [CitusFact]
    public async Task Migrate_distributed_past_2027_creates_the_months_ahead_distributed_and_guarded_on_their_shards_and_a_2028_03_record_lands_in_its_own()
    {
        // Past the last partition the migrations create (2027-12): migrate on a clock of
        // 2028-02 makes 2028-01 through 2028-03 (one month ahead), and a second run nothing.
        await using var coordinator = new NpgsqlConnection(citus.ConnectionString);
        await using (NpgsqlDataSource dataSource = Database.CreateDataSource(citus.ConnectionString))
        {
            var later = new ManualClock(new DateTimeOffset(2028, 2, 15, 8, 0, 0, TimeSpan.Zero));
            var migrator = new Migrator(dataSource, NullLogger.Instance) { Distributed = true, Time = later, PartitionMonthsAhead = 1 };
            await migrator.MigrateAsync();
            Assert.Equal(["usage_records_2028_01", "usage_records_2028_02", "usage_records_2028_03"], migrator.PartitionsCreated);
            var again = new Migrator(dataSource, NullLogger.Instance) { Distributed = true, Time = later, PartitionMonthsAhead = 1 };
            await again.MigrateAsync();
            Assert.Empty(again.PartitionsCreated);
        }

        await coordinator.ExecuteAsync(PartitionRows.Insert, PartitionRows.Row(TestRecords.Provider, "cluster-2028", new DateTimeOffset(2028, 3, 10, 8, 0, 0, TimeSpan.Zero)));
        Assert.Equal((1L, 0L), await coordinator.QuerySingleAsync<(long, long)>(
            "SELECT (SELECT count(*) FROM usage_records_2028_03 WHERE provider_id = @p AND stream_id = 'cluster-2028'), (SELECT count(*) FROM usage_records_default WHERE provider_id = @p)",
            new { p = TestRecords.Provider }));
        // On the worker that holds the provider's shard of the new partition.
        var (newShard, newHost) = await coordinator.QuerySingleAsync<(string, string)>("""
            SELECT s.shard_name::text, s.nodename FROM citus_shards s
            WHERE s.table_name = 'usage_records_2028_03'::regclass AND s.shardid = get_shard_id_for_distribution_column('usage_records_2028_03', @p)
            """, new { p = TestRecords.Provider });
        await using (var onWorker = new NpgsqlConnection(citus.WorkerConnectionStrings.Single(w => new NpgsqlConnectionStringBuilder(w).Host == newHost)))
        {
            Assert.Equal(1L, await onWorker.ExecuteScalarAsync<long>($"SELECT count(*) FROM {newShard} WHERE stream_id = 'cluster-2028'"));
        }

        var (method, colocated) = await coordinator.QuerySingleAsync<(string, bool)>("""
            SELECT p.partmethod::text, p.colocationid = (SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = 'usage_records'::regclass)
            FROM pg_dist_partition p WHERE p.logicalrelid = 'usage_records_2028_03'::regclass
            """);
        Assert.Equal(("h", true), (method, colocated));

        // The partition and each of its shards carry the guards that a partition the migrations
        // made carries (on a shard, Citus appends a shard id to each trigger's name).
        Assert.Equal(await TriggersAsync(coordinator, "usage_records_2027_12"), await TriggersAsync(coordinator, "usage_records_2028_03"));
        Assert.Contains("evidence_refuses_truncate", await TriggersAsync(coordinator, "usage_records_2028_03"));
        string[] madeEarlier = await ShardTriggersAsync(coordinator, "usage_records_2027_12");
        Assert.Contains("usage_records_append_only", madeEarlier);
        Assert.Equal(madeEarlier, await ShardTriggersAsync(coordinator, "usage_records_2028_03"));
        PostgresException truncate = await Assert.ThrowsAsync<PostgresException>(() => coordinator.ExecuteAsync("TRUNCATE usage_records_2028_03"));
        Assert.Contains("append-only", truncate.MessageText, StringComparison.Ordinal);
    }

    [CitusFact]
    public async Task An_application_and_its_fleet_validation_through_the_server_on_the_distributed_layout_match_one_node()
    {
        FleetOutcome single = await ValidateFleetAsync(null, null);
        FleetOutcome distributed = await ValidateFleetAsync(citus.ConnectionString, citus.Keys.Operator);

        Assert.Equal((FleetValidationState.ValidationComplete, 3u, 0u, 300_000_000L), (distributed.State, distributed.Passed, distributed.Failed, distributed.VerifiedFp16Gflops));
        Assert.Equal(ApplicationState.AwaitingPublicNotice, distributed.Application);
        Assert.Equal("ATTESTATION_REPLAYED", distributed.Replay);
        Assert.Equal(single, distributed with { Code = single.Code });

        // The rows are read back through the coordinator.
        await using var coordinator = new NpgsqlConnection(citus.ConnectionString);
        Assert.Equal(3L, await coordinator.ExecuteScalarAsync<long>("SELECT count(*) FROM capacity_attestations WHERE provider_id = @p AND accepted", new { p = distributed.Code }));
    }

    [CitusFact]
    public async Task An_admission_notice_on_the_distributed_layout_registers_its_number_once_programme_wide()
    {
        // The notice number's registration is written to the reference table and the application
        // on its shard names it; another provider's admission under the same number is refused.
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres, database: citus.ConnectionString, operatorKey: citus.Keys.Operator);
        var (first, firstId) = await scene.AwaitingAdmissionNoticeAsync();
        var (second, secondId) = await scene.AwaitingAdmissionNoticeAsync();
        string number = $"SZ-CITUS-{firstId}";
        Application admitted = await scene.Client.IssueAdmissionNoticeAsync(new IssueAdmissionNoticeRequest { ApplicationId = firstId, NoticeNumber = number }, scene.OperatorHeaders);

        RpcException taken = await Assert.ThrowsAsync<RpcException>(() => scene.Client.IssueAdmissionNoticeAsync(
            new IssueAdmissionNoticeRequest { ApplicationId = secondId, NoticeNumber = number }, scene.OperatorHeaders).ResponseAsync);

        Assert.Equal((ApplicationState.Admitted, number), (admitted.State, admitted.NoticeNumber));
        Assert.Equal("NOTICE_NUMBER_TAKEN", IngestCall.Reason(taken));
        Assert.Equal(ApplicationState.AwaitingAdmissionNotice,
            (await scene.Client.GetApplicationAsync(new GetApplicationRequest { ApplicationId = secondId }, scene.OperatorHeaders)).State);
        await using var coordinator = new NpgsqlConnection(citus.ConnectionString);
        Assert.Equal(new[] { (first, firstId) }, await coordinator.QueryAsync<(string, long)>(
            "SELECT provider_id, application_id FROM admission_notice_numbers WHERE notice_number = @number", new { number }));
        Assert.Equal(0L, await coordinator.ExecuteScalarAsync<long>("SELECT count(*) FROM service_items WHERE provider_id = @second", new { second }));
    }

    [CitusFact]
    public async Task The_sandbox_mark_is_refused_by_its_guard_on_the_distributed_layout_not_by_an_error_of_citus()
    {
        // The guard asks the distributed usage_records first; before migration 0026 it asked with an
        // empty target list, which Citus sends to the shards as a statement PostgreSQL refuses.
        await using var coordinator = new NpgsqlConnection(citus.ConnectionString);
        PostgresException mark = await Assert.ThrowsAsync<PostgresException>(() => coordinator.ExecuteAsync("INSERT INTO sandbox_clock DEFAULT VALUES"));
        Assert.Equal(PostgresErrorCodes.CheckViolation, mark.SqlState);
        Assert.Contains("only a database with no organisations", mark.MessageText, StringComparison.Ordinal);
        Assert.Equal(0L, await coordinator.ExecuteScalarAsync<long>("SELECT count(*) FROM sandbox_clock"));
    }

    private sealed record FleetOutcome(string Code, FleetValidationState State, uint Passed, uint Failed, long VerifiedFp16Gflops, ApplicationState Application, string Replay);

    /// <summary>
    /// A new provider's application filed and its materials passed, three CPU nodes registered,
    /// approved, declared, challenged, probed, committed and attested, the verification stage
    /// recorded on the fleet's figure, and the first accepted report sent again; all through the
    /// server, on a clone of the template or on <paramref name="database"/>.
    /// </summary>
    private async Task<FleetOutcome> ValidateFleetAsync(string? database, string? operatorKey)
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres, database: database, operatorKey: operatorKey);
        long application = await scene.ApplicationAwaitingVerificationAsync();
        TestNode[] nodes = await scene.NodesAsync(3);
        await scene.DeclareAsync(nodes);
        ProbeReport first = CapacityScene.RunProbe(await scene.ChallengeAsync(nodes[0]), nodes[0]);
        AttestationResult last = await scene.CommitAndSubmitAsync(nodes[0], first);
        foreach (TestNode node in nodes.Skip(1))
        {
            last = await scene.AttestAsync(node);
        }

        Application verified = await scene.Registry.Client.RecordVerificationAsync(
            new VerificationDecision { ApplicationId = application, Pass = true, VerifiedFp16Gflops = 0 }, scene.Registry.OperatorHeaders);
        var (_, replay, _) = await CapacityScene.RefusalAsync(() => scene.SubmitAsync(nodes[0], first));
        FleetValidation complete = last.Validation;
        return new FleetOutcome(scene.Code, complete.State, complete.PassedNodes, complete.FailedNodes, complete.VerifiedFp16Gflops, verified.State, replay);
    }

    private static async Task<string[]> TriggersAsync(NpgsqlConnection connection, string table) =>
        [.. await connection.QueryAsync<string>("SELECT tgname::text FROM pg_trigger WHERE tgrelid = @table::regclass AND NOT tgisinternal AND tgname NOT LIKE 'truncate_trigger%' ORDER BY 1", new { table })];

    /// <summary>The triggers on every shard of the table, read on the worker that holds each, with the number Citus appends taken off their names; one set for all shards.</summary>
    private async Task<string[]> ShardTriggersAsync(NpgsqlConnection coordinator, string table)
    {
        var shards = (await coordinator.QueryAsync<(string Shard, string Host)>(
            "SELECT s.shard_name::text, s.nodename FROM citus_shards s WHERE s.table_name = @table::regclass", new { table })).ToList();
        Assert.NotEmpty(shards);
        var sets = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (shard, host) in shards)
        {
            await using var onWorker = new NpgsqlConnection(citus.WorkerConnectionStrings.Single(w => new NpgsqlConnectionStringBuilder(w).Host == host));
            var names = await onWorker.QueryAsync<string>("SELECT tgname::text FROM pg_trigger WHERE tgrelid = @shard::regclass AND NOT tgisinternal ORDER BY 1", new { shard });
            sets.Add(string.Join(",", names.Select(n => System.Text.RegularExpressions.Regex.Replace(n, "_[0-9]+$", ""))));
        }

        return Assert.Single(sets).Split(',', StringSplitOptions.RemoveEmptyEntries);
    }

    [Fact]
    public async Task Migrate_distributed_without_citus_in_the_database_refuses_with_one_clear_line()
    {
        string database = await postgres.CreateDatabaseAsync();
        await using NpgsqlDataSource dataSource = Database.CreateDataSource(database);
        CitusUnavailableException refused = await Assert.ThrowsAsync<CitusUnavailableException>(
            () => new Migrator(dataSource, NullLogger.Instance) { Distributed = true }.MigrateAsync());

        Assert.Contains("--distributed", refused.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("\n", refused.Message, StringComparison.Ordinal);
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync();
        Assert.False(await connection.ExecuteScalarAsync<bool>("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"));
    }

    /// <summary>
    /// Moves each counter of the one-node database to where the cluster's stands, and returns
    /// the database. A settlement's statements name contract, voucher and claim ids, and the
    /// cluster's database is shared by the class: a workflow test that recorded vouchers there
    /// first has used ids that a fresh database would give out again.
    /// </summary>
    private async Task<string> AtTheClustersCountersAsync(string database)
    {
        await using var coordinator = new NpgsqlConnection(citus.ConnectionString);
        var counters = await coordinator.QueryAsync<(string Name, long Value)>(
            "SELECT sequencename::text, last_value FROM pg_sequences WHERE schemaname = current_schema() AND last_value IS NOT NULL");
        await using var single = new NpgsqlConnection(database);
        foreach (var (name, value) in counters)
        {
            await single.ExecuteAsync("""
                SELECT setval(to_regclass(quote_ident(@name)), @value) FROM pg_sequences
                WHERE schemaname = current_schema() AND sequencename = @name AND coalesce(last_value, 0) < @value
                """, new { name, value });
        }

        return database;
    }

    private sealed record Outcome(string ChainHead, ulong Verified, bool Intact, string LiveRoot, string SettlementSha256, string SettledRoot, SettledDay? Settled = null)
    {
        /// <summary>The fleet's device levels ingest wrote for the provider (usage_concurrency).</summary>
        public string Concurrency { get; init; } = "";
    }

    /// <summary>What a settlement run wrote: its totals and the ledger lines of its entries.</summary>
    private sealed record SettledDay(long DayRecords, long FeeFen, long SubsidyFen, long LedgerLines, long DebitFen, long CreditFen);

    /// <summary>
    /// One day of one provider through a real server on the database: ingest, verify, root; and
    /// when asked, a holder with a contract, a voucher and a claim recorded through the server,
    /// the day settled, settled again (which must find it closed and write nothing), and the
    /// settled root.
    /// </summary>
    private async Task<Outcome> RunDayAsync(string database, string providerKey, string auditorKey, string settlementKey, bool settle, string? operatorKey = null)
    {
        var clock = new ManualClock(VoucherScene.Now);
        await using TestServer server = await TestServer.StartAsync(postgres, time: clock, database: database);
        string head = await IngestAsync(server, Stream, providerKey, 60, VoucherScene.Day);
        // Ingest's INSERT … SELECT … ON CONFLICT of the fleet's per-second device levels, beside
        // the records (usage_concurrency, distributed with them): its rows and their sum.
        var (minutes, deviceSeconds) = (await server.QueryAsync<(long, long)>(
            "SELECT count(DISTINCT (c.minute_at, c.device_model)), coalesce(sum(l), 0)::bigint FROM usage_concurrency c, unnest(c.levels) l WHERE c.provider_id = @p AND c.minute_at >= @from AND c.minute_at < @from + interval '1 day'",
            new { p = TestRecords.Provider, from = new DateTimeOffset(VoucherScene.Day.ToDateTime(TimeOnly.MinValue), TimeSpan.FromHours(8)).UtcDateTime })).Single();
        Assert.True(minutes > 0 && deviceSeconds > 0);
        string concurrency = $"{minutes} minutes, {deviceSeconds} device-seconds";

        var audit = new AuditService.AuditServiceClient(server.Channel);
        VerifyChainResponse verified = await audit.VerifyChainAsync(new VerifyChainRequest { CreditCode = TestRecords.Provider, StreamId = Stream }, TestServer.Bearer(auditorKey));
        StreamVerification stream = Assert.Single(verified.Streams);
        MerkleRoot live = await audit.GetMerkleRootAsync(new GetMerkleRootRequest { CreditCode = TestRecords.Provider, Day = "2026-11-20" }, TestServer.Bearer(auditorKey));

        if (!settle)
        {
            return new Outcome(head, stream.RecordsChecked, stream.Intact, Convert.ToHexStringLower(live.Root.ToByteArray()), "", "") { Concurrency = concurrency };
        }

        await RecordVoucherAndClaimAsync(server, TestServer.Bearer(operatorKey));
        var settlement = new SettlementService.SettlementServiceClient(server.Channel);
        Protocol.V1.Settlement settled = await settlement.SettleDayAsync(new SettleDayRequest { Day = "2026-11-20" }, TestServer.Bearer(settlementKey));
        Assert.False(settled.AlreadyClosed);
        var (entries, lines, debits, credits) = (await server.QueryAsync<(long, long, long, long)>("""
            SELECT count(DISTINCT e.entry_id), count(*), coalesce(sum(l.debit_fen), 0)::bigint, coalesce(sum(l.credit_fen), 0)::bigint
            FROM ledger_entries e JOIN ledger_lines l ON l.entry_id = e.entry_id
            WHERE e.run_id = (SELECT run_id FROM settlement_runs WHERE day = '2026-11-20')
            """)).Single();
        Assert.True(entries > 0);
        Assert.Equal(debits, credits);

        // A second run of the closed day returns what is stored and writes nothing.
        const string Written = """
            SELECT (SELECT count(*) FROM settlement_runs) + (SELECT count(*) FROM settlement_lines) + (SELECT count(*) FROM settlement_statements)
                 + (SELECT count(*) FROM settlement_stream_marks) + (SELECT count(*) FROM ledger_entries) + (SELECT count(*) FROM ledger_lines)
                 + (SELECT count(*) FROM transparency_log_leaves) + (SELECT count(*) FROM voucher_holds)
            """;
        long before = await server.ScalarAsync<long>(Written);
        Protocol.V1.Settlement again = await settlement.SettleDayAsync(new SettleDayRequest { Day = "2026-11-20" }, TestServer.Bearer(settlementKey));
        Assert.True(again.AlreadyClosed);
        Assert.Equal(settled.SettlementSha256, again.SettlementSha256);
        Assert.Equal(before, await server.ScalarAsync<long>(Written));

        MerkleRoot settledRoot = await audit.GetMerkleRootAsync(
            new GetMerkleRootRequest { CreditCode = TestRecords.Provider, Day = "2026-11-20", Settled = true }, TestServer.Bearer(auditorKey));
        Assert.Equal(60U, settledRoot.LeafCount);

        return new Outcome(head, stream.RecordsChecked, stream.Intact, Convert.ToHexStringLower(live.Root.ToByteArray()), settled.SettlementSha256,
            Convert.ToHexStringLower(settledRoot.Root.ToByteArray()), new SettledDay(settled.DayRecords, settled.FeeFen, settled.SubsidyFen, lines, debits, credits)) { Concurrency = concurrency };
    }

    /// <summary>The holder registered and approved, a contract with the provider for the year, a voucher on it, and a claim on two of the day's jobs, all through the server.</summary>
    private static async Task RecordVoucherAndClaimAsync(TestServer server, Metadata operatorKey)
    {
        var vouchers = new VoucherService.VoucherServiceClient(server.Channel);
        (_, Contract contract) = await VoucherRequests.HolderAndContractAsync(vouchers, operatorKey, "HT-CITUS-001");
        await vouchers.IssueVoucherAsync(new IssueVoucherRequest { ContractId = contract.ContractId, ProgrammeYear = 2026, FaceValueFen = 50_000_000 }, operatorKey);
        await vouchers.FileClaimAsync(new FileClaimRequest
        {
            ContractId = contract.ContractId,
            JobIds = { $"{Stream}-1120-000", $"{Stream}-1120-001" },
            ProgrammeYear = 2026,
        }, operatorKey);
    }

    /// <summary>Sends records 1..count of a stream (of the test holder unless told) in batches of ten and returns the chain head the last acknowledgement carried.</summary>
    private static async Task<string> IngestAsync(TestServer server, string stream, string providerKey, int count, DateOnly day, string holder = TestRecords.Holder)
    {
        List<UsageRecord> records = VoucherScene.Jobs(holder, day, count, prefix: stream);
        for (int i = 0; i < records.Count; i++)
        {
            records[i].Sequence = (ulong)i + 1;
        }

        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), stream, providerKey);
        BatchAck last = null!;
        foreach (UsageRecord[] batch in records.Chunk(10))
        {
            last = await call.SendAsync(batch);
        }

        Assert.Equal((ulong)count, last.CommittedSequence);
        await call.CompleteAsync();
        return Convert.ToHexStringLower(last.ChainHead.ToByteArray());
    }

    private async Task<Dictionary<string, (string Method, string Model, int Colocation)>> LayoutAsync()
    {
        await using var connection = new NpgsqlConnection(citus.ConnectionString);
        return (await connection.QueryAsync<(string Table, string Method, string Model, int Colocation)>("""
            SELECT c.relname::text, p.partmethod::text, p.repmodel::text, p.colocationid FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid
            WHERE c.relnamespace = current_schema()::regnamespace AND NOT c.relispartition
            """)).ToDictionary(r => r.Table, r => (r.Method, r.Model, r.Colocation), StringComparer.Ordinal);
    }
}
