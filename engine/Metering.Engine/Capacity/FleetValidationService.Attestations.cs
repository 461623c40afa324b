using System.Data;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Catalog;
using Metering.Engine.Registry;
using Metering.Engine.Time;
using Metering.Probe.Attestation.Checksums;
using Metering.Probe.Attestation.Results;
using Npgsql;

namespace Metering.Engine.Capacity;

/// <summary>Fleet validation, the reports: a sampled node's signed attestation is checked, verified against its nonce and kept.</summary>
public sealed partial class FleetValidationService
{
    private sealed record NonceRow(byte[] Nonce, long ValidationId, string NodeId, DateTime ExpiresAt, DateTime? UsedAt, string WorkSizes, DateTime IssuedAt, DateTime? DeadlineAt);

    /// <summary>
    /// Checks one node's signed report and records its outcome. Cheap checks first: form, replay,
    /// node key (in force and approved), signature, device UUIDs (those registered with the key),
    /// nonce, sample, the commitment (the report's roots must be the committed ones), exactly the
    /// set work, the duration floor. Then the provider's place in the
    /// verification gate (one verification per provider at a time), and the nonce is spent under
    /// the provider's lock, so that any copy of the report is refused before it costs a leaf.
    /// Only then the probe's verifier, which recomputes leaves, in one of the gate's bounded slots
    /// and outside any transaction; then the catalog judgement, and under the provider's lock the
    /// node is checked again and the outcome written.
    /// </summary>
    public async Task<AttestationRecord> SubmitAttestationAsync(Actor actor, AttestationSubmission request, CancellationToken cancellationToken)
    {
        string code = OwnCode(actor, request.CreditCode);
        CheckNodeId(request.NodeId);
        ProbeReport report;
        byte[] encoded;
        try
        {
            report = ProbeReportJson.Deserialize(request.ReportJson);
            encoded = ProbeReportEncoding.Encode(report);
        }
        catch (Exception e) when (e is FormatException or ArgumentException or NullReferenceException)
        {
            throw new CapacityRefusedException(CapacityRefusalReason.ReportMalformed, $"the report is not a probe report: {e.Message}");
        }

        byte[] digest = SHA256.HashData(encoded);
        byte[] signature = request.Signature;
        NonceRow nonce;
        int keyVersion;
        NodeTiming timing;
        await using (NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken))
        {
            if (await connection.ExecuteScalarAsync<long?>("SELECT attestation_id FROM capacity_attestations WHERE provider_id = @code AND report_sha256 = @digest AND accepted", new { code, digest }) is long replayed)
            {
                throw new CapacityRefusedException(CapacityRefusalReason.AttestationReplayed,
                    $"this report (sha256 {Convert.ToHexStringLower(digest)}) was already accepted as attestation {replayed}",
                    new Dictionary<string, string> { ["attestation_id"] = replayed.ToString(CultureInfo.InvariantCulture) });
            }

            keyVersion = await NodeKeyService.CheckReportAsync(connection, code, request.NodeId, report, encoded, signature);
            nonce = await ReadNonceAsync(connection, null, code, report.Nonce)
                ?? throw new CapacityRefusedException(CapacityRefusalReason.NonceUnknown, $"nonce {Shorten(report.Nonce)} was never issued to {code}");
            CheckNonce(nonce, request.NodeId, report.Nonce, time.GetUtcNow());
            await CheckSampledAsync(connection, null, code, nonce.ValidationId, request.NodeId);
            timing = await CheckAgainstCommitmentAsync(connection, code, request.NodeId, report, nonce);
        }

        if (!verifications.TryEnter(code))
        {
            throw new CapacityRefusedException(CapacityRefusalReason.VerificationBusy,
                $"another attestation of {code} is being verified; send this one again when that call has returned (its nonce is not spent)");
        }

        try
        {
            await SpendNonceAsync(code, request.NodeId, nonce.Nonce, cancellationToken);
            return await VerifyAndRecordAsync(code, request, report, nonce, keyVersion, digest, encoded, signature, timing, cancellationToken);
        }
        finally
        {
            verifications.Leave(code);
        }
    }

    /// <summary>
    /// Spends the nonce before any leaf is recomputed: checked again under the provider's lock, then
    /// marked used with no attestation yet. From here on a copy of the report is refused with
    /// NONCE_USED by the cheap checks. A call that fails or is cancelled after this point leaves
    /// the nonce spent; the node asks for another.
    /// </summary>
    private async Task SpendNonceAsync(string code, string node, byte[] value, CancellationToken cancellationToken) =>
        await InTransactionAsync(code, async (connection, transaction) =>
        {
            DateTimeOffset now = time.GetUtcNow();
            NonceRow current = (await ReadNonceAsync(connection, transaction, code, value))!;
            CheckNonce(current, node, value, now);
            await CheckSampledAsync(connection, transaction, code, current.ValidationId, node);
            int spent = await connection.ExecuteAsync("UPDATE capacity_nonces SET used_at = @now WHERE provider_id = @code AND nonce = @value AND used_at IS NULL",
                new { code, value, now = now.UtcDateTime }, transaction);
            return spent == 1
                ? spent
                : throw new CapacityRefusedException(CapacityRefusalReason.NonceUsed, $"nonce {Shorten(value)} was spent by another call at the same moment; nonces are single use");
        }, cancellationToken);

    private async Task<AttestationRecord> VerifyAndRecordAsync(string code, AttestationSubmission request, ProbeReport report, NonceRow nonce, int keyVersion,
        byte[] digest, byte[] encoded, byte[] signature, NodeTiming timing, CancellationToken cancellationToken)
    {
        VerificationResult verification = await verifications.RunAsync(() => ProbeVerifier.VerifyReport(report.Nonce, report), cancellationToken);
        if (!verification.IsValid)
        {
            await KeepRefusedAsync(code, request, nonce, keyVersion, digest, encoded, signature, CapacityRefusalReason.ChecksumInvalid, verification.ToString(), cancellationToken);
            throw new CapacityRefusedException(CapacityRefusalReason.ChecksumInvalid, $"the probe's verifier refused the report: {verification}",
                new Dictionary<string, string> { ["verification"] = verification.Failure.ToString() });
        }

        await using (NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken))
        {
            var declared = await DeclaredNodeAsync(connection, null, code, nonce.ValidationId, request.NodeId);
            IReadOnlyDictionary<(string, int), string> aliases = await ReadAliasesAsync(connection, null);
            var (devices, forgery) = AttestationJudge.Judge(report, declared.Model, declared.Count, catalog.Latest, aliases, timing.ServerRates);
            if (forgery is { } forged)
            {
                string detail = $"device {forged.DeviceIndex} {forged.Kernel}: rate {forged.Rate} is above 1.10 × the {forged.Model} peak {forged.Peak}";
                await KeepRefusedAsync(code, request, nonce, keyVersion, digest, encoded, signature, CapacityRefusalReason.MeasurementForged, detail, cancellationToken);
                throw new CapacityRefusedException(CapacityRefusalReason.MeasurementForged, $"a measurement is forged: {detail}", new Dictionary<string, string>
                {
                    ["device"] = forged.DeviceIndex.ToString(CultureInfo.InvariantCulture),
                    ["kernel"] = forged.Kernel,
                    ["rate"] = forged.Rate.ToString(CultureInfo.InvariantCulture),
                    ["peak"] = forged.Peak.ToString(CultureInfo.InvariantCulture),
                });
            }

            return await AcceptAsync(code, request, nonce, keyVersion, digest, encoded, signature, devices, declared.Count, cancellationToken);
        }
    }

    private async Task<AttestationRecord> AcceptAsync(string code, AttestationSubmission request, NonceRow nonce, int keyVersion, byte[] digest, byte[] encoded, byte[] signature,
        IReadOnlyList<DeviceJudgement> devices, int declaredCount, CancellationToken cancellationToken)
    {
        var (verdict, _) = AttestationJudge.NodeOf(devices, declaredCount);
        try
        {
            return await InTransactionAsync(code, async (connection, transaction) =>
            {
                // The nonce was spent by this call before the verifier ran; the node is checked
                // again under the lock, since a new inventory may have closed its validation meanwhile.
                DateTimeOffset now = time.GetUtcNow();
                NonceRow current = (await ReadNonceAsync(connection, transaction, code, nonce.Nonce))!;
                await CheckSampledAsync(connection, transaction, code, current.ValidationId, request.NodeId);
                long attestationId = await InsertAttestationAsync(connection, transaction, code, current.ValidationId, request.NodeId, keyVersion, digest, encoded, signature, now, null, "", encoded.Length);
                await connection.ExecuteAsync("""
                    INSERT INTO capacity_device_results (provider_id, attestation_id, device_index, reported_name, multiprocessors, device_model, outcome, detail, kernels)
                    SELECT @code, @attestationId, i, n, m, d, o, t, k::jsonb FROM unnest(@indices, @names, @sms, @models, @outcomes, @details, @kernels) AS u(i, n, m, d, o, t, k)
                    """, new
                {
                    code,
                    attestationId,
                    indices = devices.Select(d => d.Index).ToArray(),
                    names = devices.Select(d => d.ReportedName).ToArray(),
                    sms = devices.Select(d => d.Multiprocessors).ToArray(),
                    models = devices.Select(d => d.Model).ToArray(),
                    outcomes = devices.Select(d => DeviceVerdictName(d.Verdict)).ToArray(),
                    details = devices.Select(d => d.Detail).ToArray(),
                    kernels = devices.Select(d => JsonSerializer.Serialize(d.Kernels, Json)).ToArray(),
                }, transaction);
                await connection.ExecuteAsync("""
                    UPDATE capacity_sample_nodes SET outcome = @outcome, attestation_id = @attestationId
                    WHERE provider_id = @code AND validation_id = @validationId AND node_id = @node
                    """, new { code, validationId = current.ValidationId, node = request.NodeId, outcome = NodeVerdictName(verdict), attestationId }, transaction);
                await TieNonceAsync(connection, transaction, code, nonce.Nonce, attestationId);
                await FailOverdueAsync(connection, transaction, code, current.ValidationId, now);
                await CompleteIfDoneAsync(connection, transaction, code, current.ValidationId, now);
                FleetValidationRecord validation = (await ReadValidationAsync(connection, transaction, code, current.ValidationId))!;
                return new AttestationRecord(attestationId, digest, validation.Sample.Single(n => n.NodeId == request.NodeId), validation);
            }, cancellationToken);
        }
        catch (PostgresException e) when (e.SqlState == PostgresErrorCodes.UniqueViolation && e.ConstraintName == "capacity_attestations_accepted_once")
        {
            throw new CapacityRefusedException(CapacityRefusalReason.AttestationReplayed, "this report was accepted by another call at the same moment");
        }
    }

    /// <summary>
    /// Most bytes of a refused attestation's report kept beside its SHA-256. A refused report
    /// feeds nothing, and a node that keeps sending refused reports must not grow the table by
    /// a whole report each.
    /// </summary>
    public const int RefusedReportBytesMax = 4096;

    /// <summary>Keeps a signed but refused attestation as evidence (its digest and first bytes) and ties its spent nonce to it, so that the node runs the probe again.</summary>
    private async Task KeepRefusedAsync(string code, AttestationSubmission request, NonceRow nonce, int keyVersion, byte[] digest, byte[] encoded, byte[] signature,
        CapacityRefusalReason refusal, string detail, CancellationToken cancellationToken) =>
        await InTransactionAsync(code, async (connection, transaction) =>
        {
            DateTimeOffset now = time.GetUtcNow();
            long attestationId = await InsertAttestationAsync(connection, transaction, code, nonce.ValidationId, request.NodeId, keyVersion, digest,
                encoded.AsSpan(0, Math.Min(encoded.Length, RefusedReportBytesMax)).ToArray(), signature, now, refusal.ContractName(), detail.Length > 4_000 ? detail[..4_000] : detail, encoded.Length);
            await TieNonceAsync(connection, transaction, code, nonce.Nonce, attestationId);
            return attestationId;
        }, cancellationToken);

    private static Task<long> InsertAttestationAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code, long validationId, string node, int keyVersion,
        byte[] digest, byte[] encoded, byte[] signature, DateTimeOffset now, string? refusal, string detail, int reportBytes) =>
        connection.ExecuteScalarAsync<long>("""
            INSERT INTO capacity_attestations (provider_id, validation_id, node_id, key_version, report_sha256, report_encoded, report_bytes, signature, received_at, accepted, refusal, detail)
            VALUES (@code, @validationId, @node, @keyVersion, @digest, @encoded, @reportBytes, @signature, @now, @accepted, @refusal, @detail)
            RETURNING attestation_id
            """, new { code, validationId, node, keyVersion, digest, encoded, reportBytes, signature, now = now.UtcDateTime, accepted = refusal is null, refusal, detail }, transaction);

    private static Task TieNonceAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code, byte[] nonce, long attestationId) =>
        connection.ExecuteAsync("UPDATE capacity_nonces SET attestation_id = @attestationId WHERE provider_id = @code AND nonce = @nonce AND attestation_id IS NULL",
            new { code, nonce, attestationId }, transaction);

    private static async Task<NonceRow?> ReadNonceAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string code, byte[] nonce)
    {
        if (nonce.Length != InputKey.NonceBytes)
        {
            return null;
        }

        var row = await connection.QueryFirstOrDefaultAsync<(long ValidationId, string NodeId, DateTime ExpiresAt, DateTime? UsedAt, string WorkSizes, DateTime IssuedAt, DateTime? DeadlineAt)?>(
            "SELECT validation_id, node_id, expires_at, used_at, work_sizes, issued_at, deadline_at FROM capacity_nonces WHERE provider_id = @code AND nonce = @nonce", new { code, nonce }, transaction);
        return row is { } r ? new NonceRow(nonce, r.ValidationId, r.NodeId, r.ExpiresAt, r.UsedAt, r.WorkSizes, r.IssuedAt, r.DeadlineAt) : null;
    }

    private static void CheckNonce(NonceRow nonce, string node, byte[] value, DateTimeOffset now)
    {
        if (nonce.NodeId != node)
        {
            throw new CapacityRefusedException(CapacityRefusalReason.NonceUnknown, $"nonce {Shorten(value)} was issued for node '{nonce.NodeId}', not '{node}'");
        }

        if (nonce.UsedAt is { } used)
        {
            throw new CapacityRefusedException(CapacityRefusalReason.NonceUsed, $"nonce {Shorten(value)} was already used at {ShanghaiTime.Instant(used):O}; nonces are single use");
        }

        if (ShanghaiTime.Instant(nonce.ExpiresAt) <= now)
        {
            throw new CapacityRefusedException(CapacityRefusalReason.NonceExpired, $"nonce {Shorten(value)} expired at {ShanghaiTime.Instant(nonce.ExpiresAt):O}; ask for a new one and run the probe again");
        }
    }

    private static async Task CheckSampledAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string code, long validationId, string node)
    {
        var row = await connection.QueryFirstOrDefaultAsync<(string State, string? Outcome)?>("""
            SELECT v.state, s.outcome FROM capacity_validations v
            LEFT JOIN capacity_sample_nodes s ON s.provider_id = v.provider_id AND s.validation_id = v.validation_id AND s.node_id = @node
            WHERE v.provider_id = @code AND v.validation_id = @validationId
            """, new { code, validationId, node }, transaction);
        if (row is not { State: "collecting" } r)
        {
            throw new CapacityRefusedException(CapacityRefusalReason.NoOpenValidation, $"validation {validationId} is no longer collecting attestations ({row?.State ?? "unknown"})");
        }

        if (r.Outcome is null)
        {
            throw new CapacityRefusedException(CapacityRefusalReason.NodeNotSampled, $"node '{node}' is not in the sample of validation {validationId}");
        }

        if (r.Outcome != "pending")
        {
            throw new CapacityRefusedException(CapacityRefusalReason.NodeAlreadyAttested, $"node '{node}' already has an outcome in validation {validationId} ({r.Outcome})");
        }
    }

    private static async Task<(string Model, int Count)> DeclaredNodeAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string code, long validationId, string node) =>
        await connection.QuerySingleAsync<(string, int)>("""
            SELECT n.device_model, n.device_count FROM capacity_validations v
            JOIN capacity_inventory_nodes n ON n.provider_id = v.provider_id AND n.inventory_version = v.inventory_version
            WHERE v.provider_id = @code AND v.validation_id = @validationId AND n.node_id = @node
            """, new { code, validationId, node }, transaction);

    private static async Task<IReadOnlyDictionary<(string, int), string>> ReadAliasesAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction) =>
        (await connection.QueryAsync<(string Name, int Multiprocessors, string Model)>(
            "SELECT reported_name, multiprocessors, device_model FROM capacity_model_aliases", transaction: transaction))
        .ToDictionary(a => (a.Name, a.Multiprocessors), a => a.Model);
}
