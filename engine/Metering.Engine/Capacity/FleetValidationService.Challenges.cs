using System.Globalization;
using System.Security.Cryptography;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Catalog;
using Metering.Engine.Time;
using Metering.Probe.Attestation.Checksums;
using Metering.Probe.Attestation.Results;
using Npgsql;

namespace Metering.Engine.Capacity;

/// <summary>One sampled node's challenge: its nonce, the work set for its model, and its deadline.</summary>
public sealed record NodeChallengeIssue(string NodeId, byte[] Nonce, string DeviceModel, int DeviceCount, ChallengePlan Plan, DateTimeOffset Deadline, DateTimeOffset Expires);

/// <summary>The challenges of one validation, all issued at <paramref name="IssuedAt"/>.</summary>
public sealed record ChallengeRound(string CreditCode, long ValidationId, DateTimeOffset IssuedAt, TimeSpan Allowance, bool StartedNow, IReadOnlyList<NodeChallengeIssue> Nodes);

/// <summary>The server's record of one node's commitment.</summary>
public sealed record CommitmentRecord(string NodeId, long ValidationId, DateTimeOffset IssuedAt, DateTimeOffset ReceivedAt, long ElapsedMs, DateTimeOffset Deadline, byte[] Sha256);

/// <summary>A node's timing as the server measured it, and the rates it gives each kernel.</summary>
internal sealed record NodeTiming(ChallengePlan Plan, long ElapsedMs, IReadOnlyDictionary<string, long> ServerRates);

/// <summary>
/// The server-timed challenges (Capacity/README.md, "Timing"): all sampled nodes get their nonce
/// at one instant, each commits to its results on the server's clock before its deadline, and
/// the report that follows must open exactly the committed roots.
/// </summary>
public sealed partial class FleetValidationService
{
    /// <summary>
    /// Issues every sampled node's nonce, work and deadline at one instant, or returns the
    /// challenges already issued for the open validation. Nodes past their deadline without a
    /// commitment, or past their nonce's expiry without a report, fail here.
    /// </summary>
    public async Task<ChallengeRound> StartChallengesAsync(Actor actor, string creditCode, CancellationToken cancellationToken)
    {
        string code = OwnCode(actor, creditCode);
        DateTimeOffset now = time.GetUtcNow();
        return await InTransactionAsync(code, async (connection, transaction) =>
        {
            long validationId = await connection.ExecuteScalarAsync<long?>(
                "SELECT validation_id FROM capacity_validations WHERE provider_id = @code AND state = 'collecting'", new { code }, transaction)
                ?? throw new CapacityRefusedException(CapacityRefusalReason.NoOpenValidation, $"{code} has no fleet validation collecting attestations; declare an inventory first");
            var started = await connection.QueryFirstOrDefaultAsync<(DateTime IssuedAt, long AllowanceMs, int Runs)?>(
                "SELECT issued_at, allowance_ms, runs_per_kernel FROM capacity_challenges WHERE provider_id = @code AND validation_id = @validationId",
                new { code, validationId }, transaction);
            if (started is { } existing)
            {
                await FailOverdueAsync(connection, transaction, code, validationId, now);
                return await ReadRoundAsync(connection, transaction, code, validationId, ShanghaiTime.Instant(existing.IssuedAt), TimeSpan.FromMilliseconds(existing.AllowanceMs), existing.Runs, false);
            }

            var sampled = (await connection.QueryAsync<(string Node, string Model, int Count)>("""
                SELECT s.node_id, n.device_model, n.device_count FROM capacity_sample_nodes s
                JOIN capacity_validations v ON v.provider_id = s.provider_id AND v.validation_id = s.validation_id
                JOIN capacity_inventory_nodes n ON n.provider_id = v.provider_id AND n.inventory_version = v.inventory_version AND n.node_id = s.node_id
                WHERE s.provider_id = @code AND s.validation_id = @validationId ORDER BY s.draw_order
                """, new { code, validationId }, transaction)).ToList();
            long allowanceMs = (long)settings.ChallengeAllowance.TotalMilliseconds;
            await connection.ExecuteAsync("""
                INSERT INTO capacity_challenges (provider_id, validation_id, issued_at, allowance_ms, runs_per_kernel) VALUES (@code, @validationId, @now, @allowanceMs, @runs)
                """, new { code, validationId, now = now.UtcDateTime, allowanceMs, runs = settings.ChallengeRunsPerKernel }, transaction);
            foreach (var (node, modelKey, count) in sampled)
            {
                ChallengePlan plan = ChallengeWork.Plan(ModelOf(modelKey), count, settings);
                DateTimeOffset deadline = now + TimeSpan.FromMilliseconds(plan.ExpectedMs + allowanceMs);
                await connection.ExecuteAsync("""
                    INSERT INTO capacity_nonces (provider_id, nonce, validation_id, node_id, issued_at, expires_at, work_sizes, expected_ms, deadline_at)
                    VALUES (@code, @nonce, @validationId, @node, @now, @expires, @sizes, @expected, @deadline)
                    """, new
                {
                    code,
                    nonce = RandomNumberGenerator.GetBytes(InputKey.NonceBytes),
                    validationId,
                    node,
                    now = now.UtcDateTime,
                    expires = (deadline + settings.NonceTtl).UtcDateTime,
                    sizes = plan.SizesText,
                    expected = plan.ExpectedMs,
                    deadline = deadline.UtcDateTime,
                }, transaction);
            }

            return await ReadRoundAsync(connection, transaction, code, validationId, now, settings.ChallengeAllowance, settings.ChallengeRunsPerKernel, true);
        }, cancellationToken);
    }

    /// <summary>
    /// Records a node's signed commitment at the server's receive time. It must be signed with the
    /// node's key in force (approved by an operator), and an on-time commitment must name the
    /// devices registered with that key. After the deadline the commitment is still recorded, as
    /// evidence, and the node fails; the call is then refused with COMMITMENT_LATE.
    /// </summary>
    public async Task<CommitmentRecord> CommitResultsAsync(Actor actor, string creditCode, string nodeId, byte[] commitment, byte[] signature, CancellationToken cancellationToken)
    {
        // The receive time is taken first: waiting for the provider's lock is the server's delay, not the node's.
        DateTimeOffset received = time.GetUtcNow();
        string code = OwnCode(actor, creditCode);
        CheckNodeId(nodeId);
        ArgumentNullException.ThrowIfNull(commitment);
        ArgumentNullException.ThrowIfNull(signature);
        CommittedResults results = ResultCommitment.TryDecode(commitment) is { } decoded && decoded.NodeId == nodeId
            ? decoded
            : throw new CapacityRefusedException(CapacityRefusalReason.CommitmentMalformed,
                $"the commitment is not a metering-probe/v1/commitment of node '{nodeId}' of at most {ResultCommitment.BytesMax} bytes");
        byte[] digest = SHA256.HashData(commitment);
        (CommitmentRecord Record, string? LateDetail) outcome = await InTransactionAsync(code, async (connection, transaction) =>
        {
            var key = await NodeKeyService.CheckSignedAsync(connection, transaction, code, nodeId, commitment, signature, "the commitment", "commitment");
            NonceRow nonce = await ReadNonceAsync(connection, transaction, code, results.Nonce) is { DeadlineAt: not null } row
                ? row
                : throw new CapacityRefusedException(CapacityRefusalReason.NonceUnknown, $"nonce {Shorten(results.Nonce)} was never issued to {code} by StartChallenges");
            CheckNonce(nonce, nodeId, results.Nonce, received);
            if (await connection.ExecuteScalarAsync<bool>("SELECT EXISTS (SELECT 1 FROM capacity_commitments WHERE provider_id = @code AND nonce = @nonce)",
                new { code, nonce = nonce.Nonce }, transaction))
            {
                throw new CapacityRefusedException(CapacityRefusalReason.CommitmentRepeated, $"node '{nodeId}' already committed for nonce {Shorten(nonce.Nonce)}; a commitment is made once");
            }

            await CheckSampledAsync(connection, transaction, code, nonce.ValidationId, nodeId);
            var declared = await DeclaredNodeAsync(connection, transaction, code, nonce.ValidationId, nodeId);
            DateTimeOffset issued = ShanghaiTime.Instant(nonce.IssuedAt);
            DateTimeOffset deadline = ShanghaiTime.Instant(nonce.DeadlineAt!.Value);
            long elapsedMs = (long)(received - issued).TotalMilliseconds;
            bool late = received > deadline;
            if (!late)
            {
                NodeKeyService.CheckDevices(results.Devices.Select(d => (d.Index, d.Uuid)), key.DeviceUuids, nodeId, key.Version, "commitment");
                ChallengePlan plan = ChallengeWork.From(ModelOf(declared.Model), declared.Count, await RunsOfAsync(connection, transaction, code, nonce.ValidationId), ChallengeWork.ParseSizes(nonce.WorkSizes));
                if (ChallengeWork.FirstDifference(results.Devices, plan) is { } difference)
                {
                    throw new CapacityRefusedException(CapacityRefusalReason.WorkSizeRefused, $"the committed work is not the work the server set: {difference.Detail}",
                        new Dictionary<string, string> { ["kernel"] = difference.Kernel });
                }
            }

            await connection.ExecuteAsync("""
                INSERT INTO capacity_commitments (provider_id, nonce, validation_id, node_id, key_version, commitment, commitment_sha256, signature, received_at, elapsed_ms, late)
                VALUES (@code, @nonce, @validationId, @node, @keyVersion, @commitment, @digest, @signature, @received, @elapsedMs, @late)
                """, new
            {
                code,
                nonce = nonce.Nonce,
                validationId = nonce.ValidationId,
                node = nodeId,
                keyVersion = key.Version,
                commitment,
                digest,
                signature,
                received = received.UtcDateTime,
                elapsedMs,
                late,
            }, transaction);
            string? lateDetail = null;
            if (late)
            {
                lateDetail = string.Create(CultureInfo.InvariantCulture,
                    $"the commitment arrived {elapsedMs} ms after the challenges were issued; the deadline was {(long)(deadline - issued).TotalMilliseconds} ms (the work's time at the healthy threshold plus the allowance)");
                await FailNodeAsync(connection, transaction, code, nonce.ValidationId, nodeId, $"late commitment: {lateDetail}");
                await CompleteIfDoneAsync(connection, transaction, code, nonce.ValidationId, received);
            }

            await FailOverdueAsync(connection, transaction, code, nonce.ValidationId, received);
            return (new CommitmentRecord(nodeId, nonce.ValidationId, issued, received, elapsedMs, deadline, digest), lateDetail);
        }, cancellationToken);
        if (outcome.LateDetail is { } detail)
        {
            throw new CapacityRefusedException(CapacityRefusalReason.CommitmentLate, $"node '{nodeId}' fails: {detail}", new Dictionary<string, string>
            {
                ["elapsed_ms"] = outcome.Record.ElapsedMs.ToString(CultureInfo.InvariantCulture),
                ["deadline_ms"] = ((long)(outcome.Record.Deadline - outcome.Record.IssuedAt).TotalMilliseconds).ToString(CultureInfo.InvariantCulture),
            });
        }

        return outcome.Record;
    }

    /// <summary>
    /// The cheap checks of a report against its node's commitment: the commitment exists, the
    /// report's roots, UUIDs and work are the committed ones, the work is the set one, and no run
    /// is shorter than its physical floor. Returns the node's timing on the server's clock.
    /// </summary>
    private async Task<NodeTiming> CheckAgainstCommitmentAsync(NpgsqlConnection connection, string code, string nodeId, ProbeReport report, NonceRow nonce)
    {
        var committed = await connection.QueryFirstOrDefaultAsync<(byte[] Commitment, long ElapsedMs)?>(
            "SELECT commitment, elapsed_ms FROM capacity_commitments WHERE provider_id = @code AND nonce = @nonce", new { code, nonce = nonce.Nonce })
            ?? throw new CapacityRefusedException(CapacityRefusalReason.CommitmentMissing,
                $"node '{nodeId}' has not committed to its results for nonce {Shorten(nonce.Nonce)}; send CommitResults first (the nonce is not spent)");
        byte[] fromReport;
        try
        {
            fromReport = ResultCommitment.Encode(nodeId, report);
        }
        catch (ArgumentException e)
        {
            throw new CapacityRefusedException(CapacityRefusalReason.ReportMalformed, $"the report is not a probe report: {e.Message}");
        }

        if (!fromReport.AsSpan().SequenceEqual(committed.Commitment))
        {
            throw new CapacityRefusedException(CapacityRefusalReason.CommitmentMismatch,
                $"the report's devices, UUIDs, work or Merkle roots are not the ones node '{nodeId}' committed to (commitment sha256 {Convert.ToHexStringLower(SHA256.HashData(committed.Commitment))}, report's {Convert.ToHexStringLower(SHA256.HashData(fromReport))})");
        }

        var declared = await DeclaredNodeAsync(connection, null, code, nonce.ValidationId, nodeId);
        DeviceModel model = ModelOf(declared.Model);
        int runs = await RunsOfAsync(connection, null, code, nonce.ValidationId);
        ChallengePlan plan = ChallengeWork.From(model, declared.Count, runs, ChallengeWork.ParseSizes(nonce.WorkSizes));
        var devices = ResultCommitment.TryDecode(fromReport)!.Devices;
        if (ChallengeWork.FirstDifference(devices, plan) is { } difference)
        {
            throw new CapacityRefusedException(CapacityRefusalReason.WorkSizeRefused, $"the report's work is not the work the server set: {difference.Detail}",
                new Dictionary<string, string> { ["kernel"] = difference.Kernel });
        }

        if (report.RunsPerKernel != runs)
        {
            throw new CapacityRefusedException(CapacityRefusalReason.WorkSizeRefused, $"the report ran {report.RunsPerKernel} timed run(s) per kernel; the challenge set {runs}",
                new Dictionary<string, string> { ["kernel"] = "" });
        }

        if (ChallengeWork.FirstBelowFloor(report, plan) is { } fast)
        {
            throw new CapacityRefusedException(CapacityRefusalReason.DurationBelowFloor, string.Create(CultureInfo.InvariantCulture,
                $"device {fast.Device} {fast.Kernel}: a run of {fast.DurationNs} ns is below the {fast.FloorNs} ns the set work takes at 1.10 × the {model.Key} peak"),
                new Dictionary<string, string>
                {
                    ["kernel"] = fast.Kernel,
                    ["duration_ns"] = fast.DurationNs.ToString(CultureInfo.InvariantCulture),
                    ["floor_ns"] = fast.FloorNs.ToString(CultureInfo.InvariantCulture),
                });
        }

        long allowanceMs = await connection.ExecuteScalarAsync<long>(
            "SELECT allowance_ms FROM capacity_challenges WHERE provider_id = @code AND validation_id = @validationId", new { code, validationId = nonce.ValidationId });
        return new NodeTiming(plan, committed.ElapsedMs, ChallengeWork.ServerRates(plan, model.Probe!, committed.ElapsedMs, allowanceMs));
    }

    /// <summary>
    /// Fails every pending sampled node whose deadline passed without a commitment, or whose nonce
    /// expired without an accepted report (none, or only refused ones), and completes the
    /// validation when that was the last.
    /// </summary>
    /// <remarks>
    /// The commitment is joined, not asked for in a correlated subquery: Citus sends an UPDATE
    /// whose SET or WHERE holds a subquery correlated with another table to every shard (32
    /// tasks, run in parallel), and after that parallel write the transaction may no longer
    /// write the reference table organisations (the validation's completion moves the
    /// admission epoch), which failed the last node's attestation. Joined, with every table
    /// naming the provider, the statement routes to the provider's shard.
    /// </remarks>
    private async Task FailOverdueAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code, long validationId, DateTimeOffset now)
    {
        // (provider_id, nonce) is the commitments' primary key: the join adds no row.
        int failed = await connection.ExecuteAsync("""
            UPDATE capacity_sample_nodes s
            SET outcome = 'failed',
                detail = CASE WHEN m.nonce IS NULL THEN 'no commitment by the deadline' ELSE 'no accepted report before the nonce expired' END
            FROM capacity_nonces n
            LEFT JOIN capacity_commitments m ON m.provider_id = n.provider_id AND m.nonce = n.nonce
            WHERE s.provider_id = @code AND s.validation_id = @validationId AND s.outcome = 'pending'
              AND n.provider_id = @code AND n.validation_id = s.validation_id AND n.node_id = s.node_id AND n.deadline_at IS NOT NULL
              AND (n.expires_at <= @now OR (n.deadline_at < @now AND m.nonce IS NULL))
            """, new { code, validationId, now = now.UtcDateTime }, transaction);
        if (failed > 0)
        {
            await CompleteIfDoneAsync(connection, transaction, code, validationId, now);
        }
    }

    private static async Task FailNodeAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code, long validationId, string node, string detail)
    {
        await connection.ExecuteAsync("""
            UPDATE capacity_sample_nodes SET outcome = 'failed', detail = @detail
            WHERE provider_id = @code AND validation_id = @validationId AND node_id = @node AND outcome = 'pending'
            """, new { code, validationId, node, detail }, transaction);
    }

    private async Task<ChallengeRound> ReadRoundAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code, long validationId,
        DateTimeOffset issued, TimeSpan allowance, int runs, bool startedNow)
    {
        var rows = await connection.QueryAsync<(string Node, byte[] Nonce, string Sizes, DateTime Deadline, DateTime Expires, string Model, int Count)>("""
            SELECT c.node_id, c.nonce, c.work_sizes, c.deadline_at, c.expires_at, n.device_model, n.device_count
            FROM capacity_nonces c
            JOIN capacity_sample_nodes s ON s.provider_id = c.provider_id AND s.validation_id = c.validation_id AND s.node_id = c.node_id
            JOIN capacity_validations v ON v.provider_id = c.provider_id AND v.validation_id = c.validation_id
            JOIN capacity_inventory_nodes n ON n.provider_id = v.provider_id AND n.inventory_version = v.inventory_version AND n.node_id = c.node_id
            WHERE c.provider_id = @code AND c.validation_id = @validationId AND c.deadline_at IS NOT NULL ORDER BY s.draw_order
            """, new { code, validationId }, transaction);
        var nodes = rows.Select(r => new NodeChallengeIssue(r.Node, r.Nonce, r.Model, r.Count,
            ChallengeWork.From(ModelOf(r.Model), r.Count, runs, ChallengeWork.ParseSizes(r.Sizes)), ShanghaiTime.Instant(r.Deadline), ShanghaiTime.Instant(r.Expires))).ToList();
        return new ChallengeRound(code, validationId, issued, allowance, startedNow, nodes);
    }

    private static Task<int> RunsOfAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string code, long validationId) =>
        connection.ExecuteScalarAsync<int>("SELECT runs_per_kernel FROM capacity_challenges WHERE provider_id = @code AND validation_id = @validationId",
            new { code, validationId }, transaction);

    /// <summary>A declared model with probe figures; the catalog only adds versions, so a model once declared stays in the latest.</summary>
    private DeviceModel ModelOf(string key) =>
        catalog.Latest.TryGet(key, out DeviceModel model) && model.Probe is not null
            ? model
            : throw new CapacityRefusedException(CapacityRefusalReason.ModelNotProbeable, $"device model '{key}' has no probe figures in device catalog {catalog.Latest.Version}");
}
