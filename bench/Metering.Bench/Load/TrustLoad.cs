using System.Diagnostics;
using System.Globalization;
using System.Net.Security;
using System.Text;
using Dapper;
using Grpc.Core;
using Grpc.Net.Client;
using Metering.Client.Receipts;
using Metering.Client.Simulation;
using Metering.Client.Streaming;
using Metering.Engine.Audit;
using Metering.Engine.Registry;
using Metering.Engine.Settlement;
using Metering.Engine.Signing;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Metering.Engine.Transparency;
using Metering.Protocol.V1;
using Metering.Server.Hosting;
using Metering.Fixtures;
using Microsoft.Extensions.Logging;
using Npgsql;
using EngineTreeHead = Metering.Engine.Transparency.SignedTreeHead;
using Receipt = Metering.Engine.Signing.Receipt;

namespace Metering.Bench.Load;

/// <summary>
/// The issue's trust claims end to end, in one process: a fresh embedded PostgreSQL migrated by
/// its superuser, the server over TLS with a certificate made at run time and serving as the
/// runtime role, a provider's day of usage streamed with a signed receipt per acknowledgement,
/// every receipt checked, the day settled and the log's signed tree head saved; then the runtime
/// role tries to rewrite every evidence table and partition, and the superuser rewrites a usage
/// record and everything after it so that the database is consistent again, which the receipts
/// and the saved head must catch. The last line of stdout is the RESULT line.
/// </summary>
internal static class TrustLoad
{
    // Admitted by Admissions.SeedAsync with a fleet that holds the demo sites' devices, as in the ingest load.
    private const string Provider = TestRecords.OtherProvider;

    private const string StreamId = "trust-sz";

    private const int IntervalsPerDay = 288;

    public const long RecordsMax = 200_000;

    public static async Task<int> RunAsync(string[] args)
    {
        Dictionary<string, string>? values = BenchArguments.Pairs(args, out string? error);
        long records = values is null ? 0 : BenchArguments.Long(values, "records", 5_000);
        long batch = values is null ? 0 : BenchArguments.Long(values, "batch", 100);
        if (values is null || !values.TryGetValue("data-dir", out string? dataDirectory) || records is < 100 or > RecordsMax || batch < 1 || batch > records / 4)
        {
            Console.Error.WriteLine($"error: {error ?? $"--data-dir is required, --records is 100 to {RecordsMax} and --batch at most a quarter of it"}");
            Console.Error.WriteLine("usage: Metering.Bench trust --data-dir DIR [--records 5000 --batch 100]");
            return 2;
        }

        using ILoggerFactory logging = LoggerFactory.Create(builder => builder
            .AddConsole(console => console.LogToStandardErrorThreshold = LogLevel.Trace)
            .SetMinimumLevel(LogLevel.Warning));
        ILogger logger = logging.CreateLogger("metering.bench.trust");
        var total = Stopwatch.StartNew();
        string directory = Path.GetFullPath(dataDirectory);
        string outDirectory = Path.GetDirectoryName(directory)!;
        IngestLoad.DeleteCluster(directory);
        string receiptsPath = Path.Combine(outDirectory, "trust-receipts.jsonl");
        string savedHeadPath = Path.Combine(outDirectory, "trust-tree-head.json");
        File.Delete(receiptsPath);
        File.Delete(savedHeadPath);

        await using EmbeddedPostgres postgres = await EmbeddedPostgres.StartAsync(new EmbeddedPostgresOptions { DataDirectory = directory, Durable = true }, logger);
        await using NpgsqlDataSource owner = Database.CreateDataSource(postgres.ConnectionString);
        await new Migrator(owner, logger).MigrateAsync();
        SeededKeys keys = await Admissions.SeedAsync(owner);
        string superuser = new NpgsqlConnectionStringBuilder(postgres.ConnectionString).Username ?? "?";
        string runtimeRole = new NpgsqlConnectionStringBuilder(postgres.RuntimeConnectionString).Username ?? "?";
        Console.WriteLine($"trust: fresh cluster in {directory} (fsync on), migrated as {superuser}; the server logs in as {runtimeRole}");

        using BenchCertificates certificates = BenchCertificates.Make();
        using ServerSigningKey signingKey = ServerSigningKey.CreateNew();
        await using MeteringServer server = await MeteringServer.StartAsync(new ServerSettings
        {
            SigningKey = signingKey,
            Listen = new Uri("https://127.0.0.1:0"),
            Certificate = certificates.Server,
            ConnectionString = postgres.RuntimeConnectionString,
            ConfigureLogging = builder => builder.AddConsole(console => console.LogToStandardErrorThreshold = LogLevel.Trace).SetMinimumLevel(LogLevel.Warning),
        });

        // Every handshake the pinned channel makes: the certificate presented and whether it chained to the bench CA.
        string serverThumbprint = certificates.Server.GetCertHashString(System.Security.Cryptography.HashAlgorithmName.SHA256);
        int handshakes = 0, handshakesToOurCertificate = 0;
        using GrpcChannel channel = BenchCertificates.Channel(server.Address, certificates.Ca, (thumbprint, errors) =>
        {
            Interlocked.Increment(ref handshakes);
            if (errors == SslPolicyErrors.None && thumbprint == serverThumbprint)
            {
                Interlocked.Increment(ref handshakesToOurCertificate);
            }
        });
        var audit = new AuditService.AuditServiceClient(channel);
        var log = new TransparencyService.TransparencyServiceClient(channel);
        Metadata provider = Bearer(keys.OtherProvider), auditor = Bearer(keys.Auditor);
        Console.WriteLine($"trust: server {server.Address} with a certificate from a CA made at run time, signing key {signingKey.KeyId}; the client trusts that CA only");

        // 1. A day of usage over the ingest stream, every acknowledgement's receipt kept by the agent.
        DateOnly day = DateOnly.FromDateTime(DateTime.UtcNow.AddHours(8)).AddDays(-30);
        SimulatedCluster site = SimulatedCluster.DemoSites(ShanghaiTime.StartOf(day), (int)((records + IntervalsPerDay - 1) / IntervalsPerDay), seed: 2026, devicesPerLaneMin: 32)[0];
        var clock = Stopwatch.StartNew();
        StreamResult streamed;
        using (var receiptsFile = new ReceiptsFile(receiptsPath))
        {
            streamed = await new UsageStreamer(channel, keys.OtherProvider, new StreamerOptions { BatchRecords = (int)batch, WindowBatches = 4, Receipts = receiptsFile })
                .RunAsync(StreamId, site.RecordAt, (ulong)records, CancellationToken.None);
        }

        double streamSeconds = clock.Elapsed.TotalSeconds;
        List<SignedReceipt> receipts = await ReadReceiptsAsync(receiptsPath);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"ingest: {streamed.CommittedSequence:N0} records of {day:yyyy-MM-dd} ({site.Site}) in batches of {batch} in {streamSeconds:0.00} s = {streamed.CommittedSequence / streamSeconds:N0} records/s; {receipts.Count} receipts kept in {receiptsPath}"));

        bool https = server.Address.Scheme == Uri.UriSchemeHttps;
        bool otherCaRefused = await RefusedWithOtherCaAsync(server.Address, certificates.OtherCa, auditor);
        bool tls = https && streamed.CommittedSequence == (ulong)records && handshakes > 0 && handshakes == handshakesToOurCertificate && otherCaRefused;
        Console.WriteLine($"tls: {server.Address.Scheme}; {handshakes} handshake(s), {handshakesToOurCertificate} to the bench certificate chained to the pinned CA; a client trusting another CA {(otherCaRefused ? "was refused" : "was NOT refused")}");

        // 2. Each receipt against the server's key and the head the database holds at its sequence.
        ReceiptCheck honest = await CheckReceiptsAsync(audit, provider, receipts, signingKey.PublicKey);
        Console.WriteLine($"check-receipts: {honest.Passed} of {receipts.Count} receipts hold (signature and stored head){(honest.FirstFailure is null ? "" : $"; first failure: {honest.FirstFailure}")}");

        // 3. The day settled through the server, and the log's signed head saved as an outsider saves it.
        clock.Restart();
        Protocol.V1.Settlement settled = await new SettlementService.SettlementServiceClient(channel).SettleDayAsync(
            new SettleDayRequest { Day = day.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture) }, Bearer(keys.Settlement));
        EngineTreeHead saved = FromMessage(await log.GetTreeHeadAsync(new GetTreeHeadRequest(), auditor));
        string? savedProblem = saved.SignatureProblem(signingKey.PublicKey);
        await File.WriteAllTextAsync(savedHeadPath, saved.ToJson() + "\n");
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"settle: {settled.Day} closed in {clock.Elapsed.TotalSeconds:0.00} s, {settled.DayRecords:N0} records, settlement {settled.SettlementSha256[..16]}…; log head size {saved.TreeSize}, root {saved.RootHex[..16]}…, {savedProblem ?? "signature verifies"}; saved to {savedHeadPath}"));

        // 4. The runtime role tries to rewrite every evidence table and partition.
        Refusals refusals = await TryRuntimeRewritesAsync(owner, postgres.RuntimeConnectionString);
        foreach (string line in refusals.Lines)
        {
            Console.WriteLine(line);
        }

        // 5. The superuser rewrites a record, the chain after it, the day's root, statement, leaf and heads.
        ulong rewritten = (ulong)records / 2 + 1;
        clock.Restart();
        Rewrite rewrite = await RewriteAsync(postgres.ConnectionString, owner, day, rewritten, streamed.CommittedSequence, site);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"rewrite: as {superuser} with the guard triggers off, record #{rewritten} of {StreamId} now has {rewrite.DevicesAfter} device(s) (was {rewrite.DevicesBefore}); "
            + $"{streamed.CommittedSequence - rewritten + 1:N0} chain hashes and the stream head recomputed; the day's Merkle root ({rewrite.LeafCount:N0} leaves), the provider statement, "
            + $"the run's settlement hash and the log leaf rewritten; {rewrite.HeadsDeleted} signed tree head(s) deleted ({clock.Elapsed.TotalSeconds:0.00} s)"));

        // The server re-hashes the stored statements against the run's settlement hash when it reads a settled day.
        var settlement = new SettlementService.SettlementServiceClient(channel);
        Protocol.V1.Settlement reread = await settlement.GetSettlementAsync(new GetSettlementRequest { Day = settled.Day }, auditor);
        Console.WriteLine($"settlement: {reread.Day} still reads as settled, its statements hash to the rewritten settlement hash {reread.SettlementSha256[..16]}… (was {settled.SettlementSha256[..16]}…)");

        VerifyChainResponse verified = await audit.VerifyChainAsync(new VerifyChainRequest { CreditCode = Provider, StreamId = StreamId }, auditor);
        StreamVerification chain = verified.Streams.Single();
        Console.WriteLine($"audit verify: {(chain.Intact ? "passed" : "FAILED")}: {chain.RecordsChecked:N0} records re-hash to the stored chain{(chain.Intact ? ", as expected: the rewrite is self-consistent" : $", broken at {chain.Break?.Sequence}")}");

        ReceiptCheck after = await CheckReceiptsAsync(audit, provider, receipts, signingKey.PublicKey);
        ulong expectedFirstFailure = receipts.Select(r => Receipt.Decode(r.Signed).Sequence).Where(s => s >= rewritten).Min();
        bool receiptsCaught = after.FirstFailedSequence == expectedFirstFailure;
        Console.WriteLine(after.FirstFailure is null
            ? "check-receipts: every receipt still holds: the rewrite was NOT caught"
            : $"check-receipts: FAILED: {after.FirstFailure}; {receipts.Count - after.Passed} of {receipts.Count} receipts fail");

        EngineTreeHead current = FromMessage(await log.GetTreeHeadAsync(new GetTreeHeadRequest(), auditor));
        List<byte[]> proof = current.TreeSize > saved.TreeSize && saved.TreeSize > 0
            ? (await log.GetConsistencyProofAsync(new GetConsistencyProofRequest { FromSize = (ulong)saved.TreeSize, ToSize = (ulong)current.TreeSize }, auditor)).Path.Select(p => p.ToByteArray()).ToList()
            : [];
        string? logProblem = LogCheck.Extends(EngineTreeHead.FromJson(await File.ReadAllTextAsync(savedHeadPath)), current, proof, signingKey.PublicKey);
        Console.WriteLine(logProblem is null
            ? $"check-log: OK: the current head (size {current.TreeSize}) extends the saved one: the rewrite was NOT caught"
            : $"check-log: FAILED: {logProblem} (the current head is freshly signed: {current.SignatureProblem(signingKey.PublicKey) ?? "its signature verifies"})");

        bool caught = receiptsCaught && logProblem is not null;
        Console.WriteLine($"trust: done in {total.Elapsed.TotalSeconds:0.0} s");
        Console.WriteLine($"RESULT receipts_verified={honest.Passed} rewrite_caught={Bool(caught)} runtime_role_refusals={refusals.Refused}/{refusals.Attempts} tls={Bool(tls)}");
        return 0;
    }

    private static string Bool(bool value) => value ? "true" : "false";

    private static Metadata Bearer(string key) => new() { { "authorization", "Bearer " + key } };

    private static EngineTreeHead FromMessage(Protocol.V1.SignedTreeHead head) =>
        new((long)head.TreeSize, head.Root.ToByteArray(), head.TimestampUnixMs, head.KeyId, head.Signature.ToByteArray());

    /// <summary>The same call through a channel that trusts another CA must fail in the TLS handshake.</summary>
    private static async Task<bool> RefusedWithOtherCaAsync(Uri address, System.Security.Cryptography.X509Certificates.X509Certificate2 otherCa, Metadata auditor)
    {
        using GrpcChannel other = BenchCertificates.Channel(address, otherCa);
        try
        {
            await new AuditService.AuditServiceClient(other).GetSigningKeyAsync(new GetSigningKeyRequest(), auditor);
            return false;
        }
        catch (RpcException e) when (RefusedInHandshake(e.Status.DebugException))
        {
            return true;
        }
    }

    private static bool RefusedInHandshake(Exception? e)
    {
        for (; e is not null; e = e.InnerException)
        {
            if (e is System.Security.Authentication.AuthenticationException)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>The receipts as the agent kept them, read as `metering audit check-receipts` reads them.</summary>
    private static async Task<List<SignedReceipt>> ReadReceiptsAsync(string path) =>
        [.. (await SavedReceipts.ReadAsync(path, int.MaxValue, CancellationToken.None)).Select(saved => new SignedReceipt(saved.Signed, saved.Signature, saved.KeyId))];

    private sealed record ReceiptCheck(int Passed, string? FirstFailure, ulong? FirstFailedSequence);

    /// <summary>
    /// What `metering audit check-receipts` checks: each signature with the engine's verifier and
    /// the published key, then the chain hash the database holds at each receipt's sequence,
    /// through the audit rpc, against the head the receipt names.
    /// </summary>
    private static async Task<ReceiptCheck> CheckReceiptsAsync(AuditService.AuditServiceClient audit, Metadata headers, List<SignedReceipt> receipts, ServerPublicKey key)
    {
        var verifier = new ReceiptVerifier([key]);
        var decoded = new Receipt?[receipts.Count];
        var failures = new string?[receipts.Count];
        for (int i = 0; i < receipts.Count; i++)
        {
            if (verifier.Check(receipts[i], out decoded[i], out string detail) != ReceiptSignatureCheck.Valid)
            {
                failures[i] = detail;
            }
        }

        foreach (var stream in Enumerable.Range(0, receipts.Count).Where(i => failures[i] is null).GroupBy(i => (decoded[i]!.ProviderId, decoded[i]!.StreamId)))
        {
            StoredHeads stored = await StoredChainHeads.FetchAsync(audit, headers, stream.Key.ProviderId, stream.Key.StreamId, stream.Select(i => decoded[i]!.Sequence), CancellationToken.None);
            foreach (int i in stream)
            {
                StoredChainHash? hash = stored.BySequence.GetValueOrDefault(decoded[i]!.Sequence);
                failures[i] = ReceiptVerifier.StoredHeadProblem(decoded[i]!, hash?.Stored == true, hash?.Duplicated == true, hash is null ? default : hash.ChainHash.Span, stored.CommittedSequence);
            }
        }

        int first = Array.FindIndex(failures, f => f is not null);
        return first < 0
            ? new ReceiptCheck(receipts.Count, null, null)
            : new ReceiptCheck(failures.Count(f => f is null), $"receipt {first + 1} ({decoded[first]?.ProviderId}/{decoded[first]?.StreamId} #{decoded[first]?.Sequence}): {failures[first]}", decoded[first]?.Sequence);
    }

    private sealed record Refusals(int Refused, int Attempts, List<string> Lines);

    /// <summary>
    /// As the runtime role, UPDATE (of a column it may not update: advancing evidence keeps its
    /// progress columns updatable, forward only, so the UPDATE tried there is of another column),
    /// DELETE, TRUNCATE and TRUNCATE CASCADE on every evidence table and partition, each in its own
    /// transaction, rolled back whatever happens. A refusal is SQLSTATE 42501: a missing privilege
    /// or a guard trigger.
    /// </summary>
    private static async Task<Refusals> TryRuntimeRewritesAsync(NpgsqlDataSource owner, string runtimeConnectionString)
    {
        List<EvidenceRelation> relations;
        Dictionary<string, long> rowsBefore;
        await using (NpgsqlConnection look = await owner.OpenConnectionAsync())
        {
            relations = await EvidenceRelations.ListAsync(look, CancellationToken.None);
            rowsBefore = await RowCountsAsync(look, relations);
        }

        var lines = new List<string>();
        var tally = new Dictionary<(TableKind Kind, bool Partition), (int Relations, int Refused, int Attempts)>();
        await using var runtime = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(runtimeConnectionString) { Pooling = false }.ConnectionString);
        await runtime.OpenAsync();
        foreach (EvidenceRelation relation in relations)
        {
            string? column = await runtime.ExecuteScalarAsync<string?>("""
                SELECT attname FROM pg_attribute
                WHERE attrelid = @relation::regclass AND attnum > 0 AND NOT attisdropped AND attidentity = '' AND attgenerated = '' AND NOT has_column_privilege(@relation::regclass, attnum, 'UPDATE')
                ORDER BY attnum LIMIT 1
                """, new { relation = relation.Relation });
            var attempts = new List<string>
            {
                $"DELETE FROM {relation.Relation}",
                $"TRUNCATE {relation.Relation}",
                $"TRUNCATE {relation.Relation} CASCADE",
            };
            if (column is not null)
            {
                attempts.Insert(0, $"UPDATE {relation.Relation} SET {column} = {column}");
            }
            else
            {
                lines.Add($"  {relation.Relation}: the runtime role may update every column; no UPDATE to try");
            }

            var key = (relation.Kind, relation.IsPartition);
            var counts = tally.GetValueOrDefault(key);
            counts.Relations++;
            foreach (string sql in attempts)
            {
                counts.Attempts++;
                await using NpgsqlTransaction transaction = await runtime.BeginTransactionAsync();
                try
                {
                    await runtime.ExecuteAsync(sql, transaction: transaction);
                    lines.Add($"  ALLOWED: {sql}");
                }
                catch (PostgresException e) when (e.SqlState == PostgresErrorCodes.InsufficientPrivilege)
                {
                    counts.Refused++;
                }
                catch (PostgresException e)
                {
                    lines.Add($"  {sql}: failed otherwise, {e.SqlState} {e.MessageText}");
                }
                finally
                {
                    await transaction.RollbackAsync();
                }
            }

            tally[key] = counts;
        }

        var summary = new List<string>();
        await using (NpgsqlConnection look = await owner.OpenConnectionAsync())
        {
            Dictionary<string, long> rowsAfter = await RowCountsAsync(look, relations);
            string[] changed = relations.Where(r => rowsBefore[r.Relation] != rowsAfter[r.Relation]).Select(r => r.Relation).ToArray();
            summary.Add(changed.Length == 0
                ? $"runtime role: {relations.Count} evidence relations holding {rowsAfter.Values.Sum():N0} rows; UPDATE (of a column outside its grant), DELETE, TRUNCATE and TRUNCATE CASCADE on each; every row count unchanged afterwards"
                : $"runtime role: {relations.Count} evidence relations; row counts CHANGED in {string.Join(", ", changed)}");
        }

        foreach (var ((kind, partition), counts) in tally.OrderBy(t => t.Key.Kind).ThenBy(t => t.Key.Partition))
        {
            string what = kind == TableKind.Evidence ? "evidence" : "advancing evidence";
            summary.Add($"  {what} {(partition ? "partitions" : "tables")}: {counts.Relations}, {counts.Refused}/{counts.Attempts} attempts refused");
        }

        summary.AddRange(lines);
        return new Refusals(tally.Values.Sum(c => c.Refused), tally.Values.Sum(c => c.Attempts), summary);
    }

    private static async Task<Dictionary<string, long>> RowCountsAsync(NpgsqlConnection connection, List<EvidenceRelation> relations)
    {
        var counts = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (EvidenceRelation relation in relations)
        {
            counts[relation.Relation] = await connection.ExecuteScalarAsync<long>($"SELECT count(*) FROM ONLY {relation.Relation}");
        }

        return counts;
    }

    private sealed record Rewrite(uint DevicesBefore, uint DevicesAfter, int LeafCount, int HeadsDeleted);

    /// <summary>
    /// The insider as the database superuser: the chain rewrite the receipt tests play, then the
    /// day's provider Merkle root recomputed from the rewritten hashes with the engine's own code,
    /// the statement's merkle_root row, its hash and the run's settlement hash made to match, the
    /// log's leaf rewritten to that root, and the signed heads deleted so that the server signs
    /// the rewritten log afresh. Afterwards the database agrees with itself everywhere.
    /// </summary>
    private static async Task<Rewrite> RewriteAsync(string superuserConnectionString, NpgsqlDataSource owner, DateOnly day, ulong rewritten, ulong last, SimulatedCluster site)
    {
        uint before = site.RecordAt(rewritten).DeviceCount;
        await InsiderRewrite.RewriteChainAsync(superuserConnectionString, Provider, StreamId, rewritten, last, site.RecordAt, record => record.DeviceCount *= 2);

        DailyRoot root = await new DailyMerkle(owner).RootAsync(Provider, day, MerkleCutOff.AsSettled, CancellationToken.None);
        await using NpgsqlConnection connection = await owner.OpenConnectionAsync();
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync();
        await connection.ExecuteAsync("SET LOCAL session_replication_role = replica", transaction: transaction);
        var leaf = await connection.QuerySingleAsync<(long RunId, byte[] DailyRoot)>(
            "SELECT run_id, daily_root FROM transparency_log_leaves WHERE day = @day AND provider_id = @Provider", new { day, Provider }, transaction);
        var statements = (await connection.QueryAsync<(string Kind, string Party, byte[] Csv)>(
            "SELECT party_kind, party_code, canonical_csv FROM settlement_statements WHERE run_id = @RunId ORDER BY ordinal", new { leaf.RunId }, transaction)).ToList();
        int index = statements.FindIndex(s => s.Kind == StatementFormats.ProviderKind && s.Party == Provider);
        string csv = Encoding.UTF8.GetString(statements[index].Csv);
        string oldRoot = Convert.ToHexStringLower(leaf.DailyRoot);
        if (csv.Split(oldRoot).Length != 2)
        {
            throw new InvalidOperationException($"The provider statement of {day} does not name the logged root {oldRoot} exactly once.");
        }

        byte[] rewrittenCsv = Encoding.UTF8.GetBytes(csv.Replace(oldRoot, Convert.ToHexStringLower(root.Root), StringComparison.Ordinal));
        statements[index] = statements[index] with { Csv = rewrittenCsv };
        byte[] settlementHash = StatementFormats.SettlementHash(statements.Select(s => s.Csv));
        await connection.ExecuteAsync("""
            UPDATE settlement_statements SET canonical_csv = @rewrittenCsv, sha256 = @sha256 WHERE run_id = @RunId AND party_kind = @kind AND party_code = @Provider;
            UPDATE settlement_runs SET settlement_sha256 = @settlementHash WHERE run_id = @RunId;
            UPDATE transparency_log_leaves SET settlement_sha256 = @settlementHash WHERE run_id = @RunId;
            UPDATE transparency_log_leaves SET daily_root = @newRoot WHERE day = @day AND provider_id = @Provider;
            """, new { rewrittenCsv, sha256 = StatementFormats.Sha256(rewrittenCsv), leaf.RunId, kind = StatementFormats.ProviderKind, Provider, settlementHash, newRoot = root.Root, day },
            transaction);
        int deleted = await connection.ExecuteAsync("DELETE FROM transparency_tree_heads", transaction: transaction);
        uint after = (uint)await connection.ExecuteScalarAsync<int>(
            "SELECT device_count FROM usage_records WHERE provider_id = @Provider AND stream_id = @StreamId AND sequence = @sequence",
            new { Provider, StreamId, sequence = (long)rewritten }, transaction);
        await transaction.CommitAsync();
        return new Rewrite(before, after, root.LeafCount, deleted);
    }
}
