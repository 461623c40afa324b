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
using Metering.Protocol.V1;
using Npgsql;

namespace Metering.Engine.Capacity;

/// <summary>
/// Fleet validation: inventories, the probe sample, nonces, attestations and operator reviews, over
/// PostgreSQL (the node keys that sign attestations are <see cref="NodeKeyService"/>'s). Every write of one provider runs in a transaction that first takes
/// that provider's capacity lock (a transaction-scoped advisory lock), so two calls of one
/// provider are ordered; calls of different providers never wait for each other. A refusal
/// throws <see cref="CapacityRefusedException"/> or <see cref="RegistryRefusedException"/>
/// before anything is written, except that an attestation spends its nonce before its checksums
/// are verified, and one refused for its checksums or a forged rate is kept as evidence.
/// </summary>
public sealed partial class FleetValidationService(NpgsqlDataSource dataSource, DeviceCatalog catalog, CapacitySettings settings, TimeProvider time, VerificationGate verifications)
{
    public const int NodeIdLengthMax = 64;
    public const int SiteLengthMax = 64;

    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    public CapacitySettings Settings => settings;

    /// <summary>The gate every report verification passes; its count of started verifications is what tests and operators read.</summary>
    public VerificationGate Verifications => verifications;

    // ---------------------------------------------------------------- inventory and sample

    /// <summary>Stores a new inventory version, draws its sample and opens its validation; an open one is closed (<see cref="CloseOpenValidationAsync"/>).</summary>
    public async Task<FleetValidation> DeclareInventoryAsync(Actor actor, DeclareInventoryRequest request, CancellationToken cancellationToken)
    {
        string code = OwnCode(actor, request.CreditCode);
        CatalogVersion version = catalog.Latest;
        if (request.Nodes.Count == 0 || request.Nodes.Count > settings.NodesMax)
        {
            throw new CapacityRefusedException(CapacityRefusal.InventoryInvalid, $"an inventory declares 1 to {settings.NodesMax} nodes, not {request.Nodes.Count}");
        }

        var seen = new HashSet<string>(StringComparer.Ordinal);
        var gflops = new long[request.Nodes.Count];
        for (int i = 0; i < request.Nodes.Count; i++)
        {
            DeclaredNode node = request.Nodes[i];
            CheckNodeId(node.NodeId, CapacityRefusal.InventoryInvalid);
            if (!seen.Add(node.NodeId))
            {
                throw new CapacityRefusedException(CapacityRefusal.InventoryInvalid, $"node '{node.NodeId}' is declared twice");
            }

            if (node.Site.Length is 0 or > SiteLengthMax || node.Site.Contains('\0', StringComparison.Ordinal))
            {
                throw new CapacityRefusedException(CapacityRefusal.InventoryInvalid, $"node '{node.NodeId}' needs a site of 1 to {SiteLengthMax} characters");
            }

            if (node.DeviceCount is 0 or > ProbeReport.DevicesMax)
            {
                throw new CapacityRefusedException(CapacityRefusal.InventoryInvalid,
                    $"node '{node.NodeId}' declares {node.DeviceCount} devices; a node holds 1 to {ProbeReport.DevicesMax}, what one probe report can hold");
            }

            if (!version.TryGet(node.DeviceModel, out DeviceModel model))
            {
                throw new RegistryRefusedException(RegistryRefusalReason.DeviceModelUnknown, $"node '{node.NodeId}': device model '{node.DeviceModel}' is not in device catalog {version.Version}");
            }

            if (model.Probe is null || model.CapacityFromVerifier)
            {
                throw new CapacityRefusedException(CapacityRefusal.ModelNotProbeable,
                    $"node '{node.NodeId}': the probe cannot measure {model.Key} (catalog {version.Version} gives it capacityFigure 'verifier'); its capacity is the commissioned verifier's figure");
            }

            gflops[i] = node.DeviceCount * model.Fp16DenseGflops;
        }

        int nodes = request.Nodes.Count;
        int sampleSize = SamplingPlan.SampleSize(nodes, settings.ConfidencePercent, settings.ConformingPercent);
        byte[] seed = RandomNumberGenerator.GetBytes(SamplingPlan.SeedBytes);
        IReadOnlyList<string> sample = SamplingPlan.Draw(request.Nodes.Select(n => n.NodeId), sampleSize, seed);
        DateTimeOffset now = time.GetUtcNow();
        return await InTransactionAsync(code, async (connection, transaction) =>
        {
            await CheckRedeclarationAsync(connection, transaction, code, now);
            int inventory = await connection.ExecuteScalarAsync<int>(
                "SELECT coalesce(max(inventory_version), 0) + 1 FROM capacity_inventories WHERE provider_id = @code", new { code }, transaction);
            await connection.ExecuteAsync("""
                INSERT INTO capacity_inventories (provider_id, inventory_version, declared_at, declared_by, node_count, device_count, declared_fp16_gflops, catalog_version)
                VALUES (@code, @inventory, @now, @by, @nodes, @devices, @declared, @catalog)
                """, new
            {
                code,
                inventory,
                now = now.UtcDateTime,
                by = actor.ToString(),
                nodes,
                devices = request.Nodes.Sum(n => (long)n.DeviceCount),
                declared = gflops.Sum(),
                catalog = version.Version,
            }, transaction);
            await connection.ExecuteAsync("""
                INSERT INTO capacity_inventory_nodes (provider_id, inventory_version, node_id, site, device_model, device_count, fp16_gflops)
                SELECT @code, @inventory, n, s, m, c, g FROM unnest(@ids, @sites, @models, @counts, @gflops) AS u(n, s, m, c, g)
                """, new
            {
                code,
                inventory,
                ids = request.Nodes.Select(n => n.NodeId).ToArray(),
                sites = request.Nodes.Select(n => n.Site).ToArray(),
                models = request.Nodes.Select(n => n.DeviceModel).ToArray(),
                counts = request.Nodes.Select(n => (int)n.DeviceCount).ToArray(),
                gflops,
            }, transaction);
            await CloseOpenValidationAsync(connection, transaction, code, now);
            long validationId = await connection.ExecuteScalarAsync<long>("""
                INSERT INTO capacity_validations (provider_id, inventory_version, state, drawn_at, sample_seed, sample_size, confidence_percent, conforming_percent, catalog_version)
                VALUES (@code, @inventory, 'collecting', @now, @seed, @sampleSize, @confidence, @conforming, @catalog)
                RETURNING validation_id
                """, new
            {
                code,
                inventory,
                now = now.UtcDateTime,
                seed,
                sampleSize,
                confidence = settings.ConfidencePercent,
                conforming = settings.ConformingPercent,
                catalog = version.Version,
            }, transaction);
            await connection.ExecuteAsync("""
                INSERT INTO capacity_sample_nodes (provider_id, validation_id, node_id, draw_order)
                SELECT @code, @validationId, n, o::int FROM unnest(@sample) WITH ORDINALITY AS u(n, o)
                """, new { code, validationId, sample = sample.ToArray() }, transaction);
            return (await ReadValidationAsync(connection, transaction, code, validationId))!;
        }, cancellationToken);
    }

    /// <summary>
    /// A provider declares at most once per <see cref="CapacitySettings.InventoryRedeclarationInterval"/>:
    /// every declaration draws a new sample, and one that came at will could be redrawn until it
    /// missed the weak nodes.
    /// </summary>
    private async Task CheckRedeclarationAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code, DateTimeOffset now)
    {
        DateTime? previous = await connection.ExecuteScalarAsync<DateTime?>(
            "SELECT max(declared_at) FROM capacity_inventories WHERE provider_id = @code", new { code }, transaction);
        if (previous is { } declared && ShanghaiTime.Instant(declared) + settings.InventoryRedeclarationInterval > now)
        {
            DateTimeOffset next = ShanghaiTime.Instant(declared) + settings.InventoryRedeclarationInterval;
            throw new CapacityRefusedException(CapacityRefusal.InventoryTooSoon,
                $"{code} declared an inventory at {ShanghaiTime.Instant(declared):O}; the next declaration may come from {next:O} (one per {settings.InventoryRedeclarationInterval.TotalDays:0.###} days)",
                new Dictionary<string, string> { ["next_declaration_unix_ms"] = next.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture) });
        }
    }

    /// <summary>
    /// Closes the validation still collecting, if any, before a new inventory opens the next. Its
    /// nodes past their challenge deadline fail first, as at any of the provider's calls. With no
    /// failed node it is superseded. Once a sampled node has failed it completes instead, its
    /// nodes without an outcome counted as failed (abandoned): a provider that sees a node fail, or
    /// miss its deadline, cannot erase the failure by declaring again, and the failed validation is
    /// the one in force until a newer one completes.
    /// </summary>
    private async Task CloseOpenValidationAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code, DateTimeOffset now)
    {
        long? open = await connection.ExecuteScalarAsync<long?>(
            "SELECT validation_id FROM capacity_validations WHERE provider_id = @code AND state = 'collecting'", new { code }, transaction);
        if (open is not { } id)
        {
            return;
        }

        await FailOverdueAsync(connection, transaction, code, id, now);
        var state = await connection.QueryFirstAsync<(string State, bool Failed)>("""
            SELECT v.state, EXISTS (SELECT 1 FROM capacity_sample_nodes s WHERE s.provider_id = v.provider_id AND s.validation_id = v.validation_id AND s.outcome = 'failed')
            FROM capacity_validations v WHERE v.provider_id = @code AND v.validation_id = @id
            """, new { code, id }, transaction);
        if (state.State != "collecting")
        {
            return;
        }

        if (!state.Failed)
        {
            await connection.ExecuteAsync("UPDATE capacity_validations SET state = 'superseded' WHERE provider_id = @code AND validation_id = @id",
                new { code, id }, transaction);
            return;
        }

        int abandoned = await connection.ExecuteAsync("""
            UPDATE capacity_sample_nodes SET outcome = 'failed', detail = 'abandoned: the provider declared a new inventory while this validation had a failed node'
            WHERE provider_id = @code AND validation_id = @id AND outcome IN ('pending', 'awaiting_review')
            """, new { code, id }, transaction);
        await connection.ExecuteAsync("UPDATE capacity_validations SET abandoned_nodes = @abandoned WHERE provider_id = @code AND validation_id = @id",
            new { code, id, abandoned }, transaction);
        await CompleteIfDoneAsync(connection, transaction, code, id, now);
    }

    // ---------------------------------------------------------------- attestations

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
    public async Task<AttestationResult> SubmitAttestationAsync(Actor actor, SubmitAttestationRequest request, CancellationToken cancellationToken)
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
            throw new CapacityRefusedException(CapacityRefusal.ReportMalformed, $"the report is not a probe report: {e.Message}");
        }

        byte[] digest = SHA256.HashData(encoded);
        byte[] signature = request.Signature.ToByteArray();
        NonceRow nonce;
        int keyVersion;
        NodeTiming timing;
        await using (NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken))
        {
            if (await connection.ExecuteScalarAsync<long?>("SELECT attestation_id FROM capacity_attestations WHERE report_sha256 = @digest AND accepted", new { digest }) is long replayed)
            {
                throw new CapacityRefusedException(CapacityRefusal.AttestationReplayed,
                    $"this report (sha256 {Convert.ToHexStringLower(digest)}) was already accepted as attestation {replayed}",
                    new Dictionary<string, string> { ["attestation_id"] = replayed.ToString(CultureInfo.InvariantCulture) });
            }

            keyVersion = await NodeKeyService.CheckReportAsync(connection, code, request.NodeId, report, encoded, signature);
            nonce = await ReadNonceAsync(connection, null, code, report.Nonce)
                ?? throw new CapacityRefusedException(CapacityRefusal.NonceUnknown, $"nonce {Shorten(report.Nonce)} was never issued to {code}");
            CheckNonce(nonce, request.NodeId, report.Nonce, time.GetUtcNow());
            await CheckSampledAsync(connection, null, code, nonce.ValidationId, request.NodeId);
            timing = await CheckAgainstCommitmentAsync(connection, code, request.NodeId, report, nonce);
        }

        if (!verifications.TryEnter(code))
        {
            throw new CapacityRefusedException(CapacityRefusal.VerificationBusy,
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
                : throw new CapacityRefusedException(CapacityRefusal.NonceUsed, $"nonce {Shorten(value)} was spent by another call at the same moment; nonces are single use");
        }, cancellationToken);

    private async Task<AttestationResult> VerifyAndRecordAsync(string code, SubmitAttestationRequest request, ProbeReport report, NonceRow nonce, int keyVersion,
        byte[] digest, byte[] encoded, byte[] signature, NodeTiming timing, CancellationToken cancellationToken)
    {
        VerificationResult verification = await verifications.RunAsync(() => ProbeVerifier.VerifyReport(report.Nonce, report), cancellationToken);
        if (!verification.IsValid)
        {
            await KeepRefusedAsync(code, request, nonce, keyVersion, digest, encoded, signature, CapacityRefusal.ChecksumInvalid, verification.ToString(), cancellationToken);
            throw new CapacityRefusedException(CapacityRefusal.ChecksumInvalid, $"the probe's verifier refused the report: {verification}",
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
                await KeepRefusedAsync(code, request, nonce, keyVersion, digest, encoded, signature, CapacityRefusal.MeasurementForged, detail, cancellationToken);
                throw new CapacityRefusedException(CapacityRefusal.MeasurementForged, $"a measurement is forged: {detail}", new Dictionary<string, string>
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

    private async Task<AttestationResult> AcceptAsync(string code, SubmitAttestationRequest request, NonceRow nonce, int keyVersion, byte[] digest, byte[] encoded, byte[] signature,
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
                FleetValidation validation = (await ReadValidationAsync(connection, transaction, code, current.ValidationId))!;
                return new AttestationResult
                {
                    AttestationId = attestationId,
                    ReportSha256 = Convert.ToHexStringLower(digest),
                    Node = validation.Sample.Single(n => n.NodeId == request.NodeId),
                    Validation = validation,
                };
            }, cancellationToken);
        }
        catch (PostgresException e) when (e.SqlState == PostgresErrorCodes.UniqueViolation && e.ConstraintName == "capacity_attestations_accepted_once")
        {
            throw new CapacityRefusedException(CapacityRefusal.AttestationReplayed, "this report was accepted by another call at the same moment");
        }
    }

    /// <summary>
    /// Most bytes of a refused attestation's report kept beside its SHA-256. A refused report
    /// feeds nothing, and a node that keeps sending refused reports must not grow the table by
    /// a whole report each.
    /// </summary>
    public const int RefusedReportBytesMax = 4096;

    /// <summary>Keeps a signed but refused attestation as evidence (its digest and first bytes) and ties its spent nonce to it, so that the node runs the probe again.</summary>
    private async Task KeepRefusedAsync(string code, SubmitAttestationRequest request, NonceRow nonce, int keyVersion, byte[] digest, byte[] encoded, byte[] signature,
        CapacityRefusal refusal, string detail, CancellationToken cancellationToken) =>
        await InTransactionAsync(code, async (connection, transaction) =>
        {
            DateTimeOffset now = time.GetUtcNow();
            long attestationId = await InsertAttestationAsync(connection, transaction, code, nonce.ValidationId, request.NodeId, keyVersion, digest,
                encoded.AsSpan(0, Math.Min(encoded.Length, RefusedReportBytesMax)).ToArray(), signature, now, ProtocolName(refusal), detail.Length > 4_000 ? detail[..4_000] : detail, encoded.Length);
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
            throw new CapacityRefusedException(CapacityRefusal.NonceUnknown, $"nonce {Shorten(value)} was issued for node '{nonce.NodeId}', not '{node}'");
        }

        if (nonce.UsedAt is { } used)
        {
            throw new CapacityRefusedException(CapacityRefusal.NonceUsed, $"nonce {Shorten(value)} was already used at {ShanghaiTime.Instant(used):O}; nonces are single use");
        }

        if (ShanghaiTime.Instant(nonce.ExpiresAt) <= now)
        {
            throw new CapacityRefusedException(CapacityRefusal.NonceExpired, $"nonce {Shorten(value)} expired at {ShanghaiTime.Instant(nonce.ExpiresAt):O}; ask for a new one and run the probe again");
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
            throw new CapacityRefusedException(CapacityRefusal.NoOpenValidation, $"validation {validationId} is no longer collecting attestations ({row?.State ?? "unknown"})");
        }

        if (r.Outcome is null)
        {
            throw new CapacityRefusedException(CapacityRefusal.NodeNotSampled, $"node '{node}' is not in the sample of validation {validationId}");
        }

        if (r.Outcome != "pending")
        {
            throw new CapacityRefusedException(CapacityRefusal.NodeAlreadyAttested, $"node '{node}' already has an outcome in validation {validationId} ({r.Outcome})");
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

    // ---------------------------------------------------------------- review

    /// <summary>An operator decides a device awaiting review: accepted as a catalog model (and remembered), or rejected.</summary>
    public async Task<FleetValidation> ReviewUnknownModelAsync(Actor actor, ReviewUnknownModelRequest request, CancellationToken cancellationToken)
    {
        string code = CheckCreditCode(request.CreditCode);
        string reasons = request.Reasons.Trim();
        if (reasons.Length > settings.ReasonsMax)
        {
            throw FilingRules.Invalid($"reasons are at most {settings.ReasonsMax} characters");
        }

        DeviceModel? accepted = null;
        if (request.DeviceModel.Length > 0)
        {
            if (!catalog.Latest.TryGet(request.DeviceModel, out DeviceModel model))
            {
                throw new RegistryRefusedException(RegistryRefusalReason.DeviceModelUnknown, $"device model '{request.DeviceModel}' is not in device catalog {catalog.Latest.Version}");
            }

            accepted = model.Probe is not null && !model.CapacityFromVerifier
                ? model
                : throw new CapacityRefusedException(CapacityRefusal.ModelNotProbeable, $"the probe cannot judge a device as {model.Key} (catalog {catalog.Latest.Version} gives it capacityFigure 'verifier'); its capacity is the commissioned verifier's figure");
        }
        else if (reasons.Length == 0)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.ReasonRequired, "rejecting a device needs its reasons");
        }

        DateTimeOffset now = time.GetUtcNow();
        return await InTransactionAsync(code, async (connection, transaction) =>
        {
            var device = await connection.QueryFirstOrDefaultAsync<(long AttestationId, string Outcome, string Name, int Multiprocessors, string Kernels, string State, string DeclaredModel, int DeclaredCount)?>("""
                SELECT r.attestation_id, r.outcome, r.reported_name, r.multiprocessors, r.kernels::text, v.state, n.device_model, n.device_count
                FROM capacity_sample_nodes s
                JOIN capacity_validations v ON v.provider_id = s.provider_id AND v.validation_id = s.validation_id
                JOIN capacity_inventory_nodes n ON n.provider_id = v.provider_id AND n.inventory_version = v.inventory_version AND n.node_id = s.node_id
                JOIN capacity_device_results r ON r.provider_id = s.provider_id AND r.attestation_id = s.attestation_id
                WHERE s.provider_id = @code AND s.validation_id = @validationId AND s.node_id = @node AND r.device_index = @index
                """, new { code, validationId = request.ValidationId, node = request.NodeId, index = (int)request.DeviceIndex }, transaction);
            if (device is not { Outcome: "awaiting_review", State: "collecting" } pending)
            {
                throw new CapacityRefusedException(CapacityRefusal.ReviewNotPending,
                    $"device {request.DeviceIndex} of node '{request.NodeId}' in validation {request.ValidationId} of {code} is not awaiting review ({(device is { } d ? $"{d.Outcome}, validation {d.State}" : "no such device")})");
            }

            string reviewer = actor.Subject;
            DeviceJudgement judgement;
            if (accepted is null)
            {
                judgement = new DeviceJudgement((int)request.DeviceIndex, pending.Name, pending.Multiprocessors, null, DeviceVerdict.Rejected, $"rejected in review by {reviewer}: {reasons}", []);
            }
            else
            {
                List<KernelJudgement> stored = JsonSerializer.Deserialize<List<KernelJudgement>>(pending.Kernels, Json) ?? [];
                var kernels = stored.Select(k => (k.Kernel, k.Path, k.Rate, k.Unit)).ToList();
                judgement = AttestationJudge.JudgeDevice((int)request.DeviceIndex, pending.Name, pending.Multiprocessors, kernels, accepted, pending.DeclaredModel, reviewer);
                judgement = judgement with { Kernels = judgement.Kernels.Select((k, j) => k with { ReportedRate = stored[j].ReportedRate }).ToList() };
                await connection.ExecuteAsync("""
                    INSERT INTO capacity_model_aliases (reported_name, multiprocessors, device_model, decided_by, decided_at) VALUES (@name, @sm, @model, @by, @now)
                    ON CONFLICT (reported_name, multiprocessors) DO UPDATE SET device_model = excluded.device_model, decided_by = excluded.decided_by, decided_at = excluded.decided_at
                    """, new { name = pending.Name, sm = pending.Multiprocessors, model = accepted.Key, by = actor.ToString(), now = now.UtcDateTime }, transaction);
            }

            string detail = reasons.Length > 0 && accepted is not null ? $"{judgement.Detail}; {reasons}" : judgement.Detail;
            await connection.ExecuteAsync("""
                UPDATE capacity_device_results SET outcome = @outcome, device_model = @model, detail = @detail, reviewed_by = @by, reviewed_at = @now
                WHERE provider_id = @code AND attestation_id = @attestationId AND device_index = @index
                """, new
            {
                code,
                attestationId = pending.AttestationId,
                index = (int)request.DeviceIndex,
                outcome = DeviceVerdictName(judgement.Verdict),
                model = judgement.Model,
                detail,
                by = actor.ToString(),
                now = now.UtcDateTime,
            }, transaction);

            var verdicts = (await connection.QueryAsync<(int Index, string Outcome)>(
                "SELECT device_index, outcome FROM capacity_device_results WHERE provider_id = @code AND attestation_id = @attestationId ORDER BY device_index",
                new { code, attestationId = pending.AttestationId }, transaction))
                .Select(r => new DeviceJudgement(r.Index, "", 0, null, DeviceVerdictOf(r.Outcome), "", [])).ToList();
            var (verdict, _) = AttestationJudge.NodeOf(verdicts, pending.DeclaredCount);
            await connection.ExecuteAsync(
                "UPDATE capacity_sample_nodes SET outcome = @outcome WHERE provider_id = @code AND validation_id = @validationId AND node_id = @node",
                new { code, validationId = request.ValidationId, node = request.NodeId, outcome = NodeVerdictName(verdict) }, transaction);
            await CompleteIfDoneAsync(connection, transaction, code, request.ValidationId, now);
            return (await ReadValidationAsync(connection, transaction, code, request.ValidationId))!;
        }, cancellationToken);
    }

    // ---------------------------------------------------------------- completion and reads

    /// <summary>
    /// Completes the validation once no sampled node is pending or awaiting review: the bound on
    /// non-conforming nodes, the pass-rate bound and the verified capacity, valid for the
    /// configured period. The fleet changes what ingest accepts, so the admission epoch moves.
    /// </summary>
    private async Task CompleteIfDoneAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string code, long validationId, DateTimeOffset now)
    {
        var counts = await connection.QuerySingleAsync<(int Sampled, int Passed, int Failed)>("""
            SELECT count(*)::int, (count(*) FILTER (WHERE outcome = 'passed'))::int, (count(*) FILTER (WHERE outcome = 'failed'))::int
            FROM capacity_sample_nodes WHERE provider_id = @code AND validation_id = @validationId
            """, new { code, validationId }, transaction);
        if (counts.Passed + counts.Failed < counts.Sampled)
        {
            await connection.ExecuteAsync("UPDATE capacity_validations SET passed_nodes = @passed, failed_nodes = @failed WHERE provider_id = @code AND validation_id = @validationId",
                new { code, validationId, passed = counts.Passed, failed = counts.Failed }, transaction);
            return;
        }

        var validation = await connection.QuerySingleAsync<(int Confidence, int Inventory)>(
            "SELECT confidence_percent, inventory_version FROM capacity_validations WHERE provider_id = @code AND validation_id = @validationId",
            new { code, validationId }, transaction);
        long[] nodeGflops = (await connection.QueryAsync<long>(
            "SELECT fp16_gflops FROM capacity_inventory_nodes WHERE provider_id = @code AND inventory_version = @inventory",
            new { code, inventory = validation.Inventory }, transaction)).ToArray();
        int bound = SamplingPlan.NonconformingUpperBound(nodeGflops.Length, counts.Sampled, counts.Failed, validation.Confidence);
        await connection.ExecuteAsync("""
            UPDATE capacity_validations SET state = 'complete', passed_nodes = @passed, failed_nodes = @failed, nonconforming_nodes_bound = @bound,
                pass_rate_lower_bound_ppm = @ppm, verified_fp16_gflops = @verified, completed_at = @now, expires_at = @expires
            WHERE provider_id = @code AND validation_id = @validationId
            """, new
        {
            code,
            validationId,
            passed = counts.Passed,
            failed = counts.Failed,
            bound,
            ppm = SamplingPlan.PassRateLowerBoundPpm(nodeGflops.Length, bound),
            verified = SamplingPlan.VerifiedGflops(nodeGflops, bound),
            now = now.UtcDateTime,
            expires = (now + settings.ValidationValidity).UtcDateTime,
        }, transaction);
        await connection.ExecuteAsync("UPDATE organisations SET admission_epoch = admission_epoch + 1 WHERE provider_id = @code", new { code }, transaction);
    }

    /// <summary>A provider's validation, or its latest when <paramref name="validationId"/> is 0; null when there is none.</summary>
    public async Task<FleetValidation?> GetAsync(string creditCode, long validationId, CancellationToken cancellationToken)
    {
        string code = CheckCreditCode(creditCode);
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        long? id = validationId != 0 ? validationId
            : await connection.ExecuteScalarAsync<long?>("SELECT max(validation_id) FROM capacity_validations WHERE provider_id = @code", new { code });
        return id is { } found ? await ReadValidationAsync(connection, null, code, found) : null;
    }

    /// <summary>The provider's current fleet validation: its latest completed one, unless that has expired.</summary>
    public static async Task<CurrentValidation?> CurrentAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string providerId, DateTimeOffset now)
    {
        var row = await connection.QueryFirstOrDefaultAsync<(long Id, int Inventory, long Verified, DateTime Completed, DateTime Expires, int Nodes, int Sampled, int Failed, int Ppm)?>("""
            SELECT validation_id, inventory_version, verified_fp16_gflops, completed_at, expires_at,
                   (SELECT node_count FROM capacity_inventories i WHERE i.provider_id = v.provider_id AND i.inventory_version = v.inventory_version),
                   sample_size, failed_nodes, pass_rate_lower_bound_ppm
            FROM capacity_validations v WHERE provider_id = @providerId AND state = 'complete' ORDER BY completed_at DESC, validation_id DESC LIMIT 1
            """, new { providerId }, transaction);
        return row is { } r && ShanghaiTime.Instant(r.Expires) > now
            ? new CurrentValidation(r.Id, r.Inventory, r.Verified, ShanghaiTime.Instant(r.Completed), ShanghaiTime.Instant(r.Expires), r.Nodes, r.Sampled, r.Failed, r.Ppm)
            : null;
    }

    private async Task<FleetValidation?> ReadValidationAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string code, long validationId)
    {
        var v = await connection.QueryFirstOrDefaultAsync<ValidationRecord>("""
            SELECT v.validation_id AS Id, v.inventory_version AS Inventory, v.state AS State, v.drawn_at AS DrawnAt, v.sample_seed AS Seed, v.sample_size AS SampleSize,
                   v.passed_nodes AS Passed, v.failed_nodes AS Failed, coalesce(v.nonconforming_nodes_bound, 0) AS Bound, coalesce(v.pass_rate_lower_bound_ppm, 0) AS Ppm,
                   coalesce(v.verified_fp16_gflops, 0) AS Verified, v.abandoned_nodes AS Abandoned, v.completed_at AS CompletedAt, v.expires_at AS ExpiresAt, v.catalog_version AS CatalogVersion,
                   i.node_count AS Nodes, i.device_count AS Devices, i.declared_fp16_gflops AS Declared
            FROM capacity_validations v JOIN capacity_inventories i ON i.provider_id = v.provider_id AND i.inventory_version = v.inventory_version
            WHERE v.provider_id = @code AND v.validation_id = @validationId
            """, new { code, validationId }, transaction);
        if (v is null)
        {
            return null;
        }

        var validation = new FleetValidation
        {
            CreditCode = code,
            ValidationId = v.Id,
            InventoryVersion = (uint)v.Inventory,
            State = v.State switch
            {
                "collecting" => FleetValidationState.ValidationCollecting,
                "complete" => FleetValidationState.ValidationComplete,
                _ => FleetValidationState.ValidationSuperseded,
            },
            DrawnUnixMs = ShanghaiTime.Instant(v.DrawnAt).ToUnixTimeMilliseconds(),
            NodeCount = (uint)v.Nodes,
            DeviceCount = (ulong)v.Devices,
            DeclaredFp16Gflops = v.Declared,
            SampleSize = (uint)v.SampleSize,
            SampleSeedHex = Convert.ToHexStringLower(v.Seed),
            PassedNodes = (uint)v.Passed,
            FailedNodes = (uint)v.Failed,
            NonconformingNodesBound = (uint)v.Bound,
            PassRateLowerBoundPpm = (uint)v.Ppm,
            VerifiedFp16Gflops = v.Verified,
            CompletedUnixMs = v.CompletedAt is { } completed ? ShanghaiTime.Instant(completed).ToUnixTimeMilliseconds() : 0,
            ExpiresUnixMs = v.ExpiresAt is { } expires ? ShanghaiTime.Instant(expires).ToUnixTimeMilliseconds() : 0,
            CatalogVersion = v.CatalogVersion,
            AbandonedNodes = (uint)v.Abandoned,
        };

        // The sample, and the seed it can be re-derived from, stay hidden while the validation
        // collects and its challenges have not started: a provider that knew its sample early
        // could prepare the sampled nodes only.
        DateTime? issued = await connection.ExecuteScalarAsync<DateTime?>(
            "SELECT issued_at FROM capacity_challenges WHERE provider_id = @code AND validation_id = @validationId", new { code, validationId }, transaction);
        validation.ChallengesIssuedUnixMs = issued is { } issuedAt ? ShanghaiTime.Instant(issuedAt).ToUnixTimeMilliseconds() : 0;
        bool hidden = issued is null && v.State == "collecting";
        if (hidden)
        {
            validation.SampleSeedHex = "";
        }

        var models = await connection.QueryAsync<(string Model, long Devices)>("""
            SELECT device_model, sum(device_count)::bigint FROM capacity_inventory_nodes WHERE provider_id = @code AND inventory_version = @inventory GROUP BY device_model ORDER BY device_model
            """, new { code, inventory = v.Inventory }, transaction);
        validation.Models.Add(models.Select(m => new ModelFleet { DeviceModel = m.Model, DeviceCount = (ulong)m.Devices }));
        if (hidden)
        {
            return validation;
        }

        var sample = (await connection.QueryAsync<(string Node, string Site, string Model, int Count, string Outcome, long? AttestationId, string Detail, DateTime? Deadline, DateTime? Committed, long? Elapsed)>("""
            SELECT s.node_id, n.site, n.device_model, n.device_count, s.outcome, s.attestation_id, s.detail, c.deadline_at, m.received_at, m.elapsed_ms
            FROM capacity_sample_nodes s JOIN capacity_inventory_nodes n ON n.provider_id = s.provider_id AND n.inventory_version = @inventory AND n.node_id = s.node_id
            LEFT JOIN capacity_nonces c ON c.provider_id = s.provider_id AND c.validation_id = s.validation_id AND c.node_id = s.node_id AND c.deadline_at IS NOT NULL
            LEFT JOIN capacity_commitments m ON m.provider_id = c.provider_id AND m.nonce = c.nonce
            WHERE s.provider_id = @code AND s.validation_id = @validationId ORDER BY s.draw_order
            """, new { code, validationId, inventory = v.Inventory }, transaction)).ToList();
        long[] attestations = sample.Where(s => s.AttestationId is not null).Select(s => s.AttestationId!.Value).ToArray();
        var results = (await connection.QueryAsync<(long AttestationId, int Index, string Name, int Multiprocessors, string? Model, string Outcome, string Detail, string Kernels)>("""
            SELECT attestation_id, device_index, reported_name, multiprocessors, device_model, outcome, detail, kernels::text
            FROM capacity_device_results WHERE provider_id = @code AND attestation_id = ANY(@attestations) ORDER BY attestation_id, device_index
            """, new { code, attestations }, transaction)).ToLookup(r => r.AttestationId);
        foreach (var node in sample)
        {
            var message = new SampledNode
            {
                NodeId = node.Node,
                Site = node.Site,
                DeviceModel = node.Model,
                DeviceCount = (uint)node.Count,
                Outcome = node.Outcome switch
                {
                    "passed" => NodeOutcome.NodePassed,
                    "failed" => NodeOutcome.NodeFailed,
                    "awaiting_review" => NodeOutcome.NodeAwaitingReview,
                    _ => NodeOutcome.NodePending,
                },
                AttestationId = node.AttestationId ?? 0,
                DeadlineUnixMs = node.Deadline is { } deadline ? ShanghaiTime.Instant(deadline).ToUnixTimeMilliseconds() : 0,
                CommittedUnixMs = node.Committed is { } committed ? ShanghaiTime.Instant(committed).ToUnixTimeMilliseconds() : 0,
                ElapsedMs = node.Elapsed ?? 0,
                Detail = node.Detail,
            };
            foreach (var r in results[node.AttestationId ?? -1])
            {
                var device = new DeviceResult
                {
                    DeviceIndex = (uint)r.Index,
                    ReportedName = r.Name,
                    Multiprocessors = (uint)Math.Max(0, r.Multiprocessors),
                    DeviceModel = r.Model ?? "",
                    Outcome = DeviceOutcomeOf(DeviceVerdictOf(r.Outcome)),
                    Detail = r.Detail,
                };
                device.Kernels.Add((JsonSerializer.Deserialize<List<KernelJudgement>>(r.Kernels, Json) ?? []).Select(k => new KernelResult
                {
                    Kernel = k.Kernel,
                    ArithmeticPath = k.Path,
                    Rate = k.Rate,
                    Unit = k.Unit,
                    Reference = k.Reference,
                    Peak = k.Peak,
                    Judged = k.Judged,
                    ReportedRate = k.ReportedRate,
                }));
                message.Devices.Add(device);
            }

            validation.Sample.Add(message);
        }

        return validation;
    }

    private sealed class ValidationRecord
    {
        public long Id { get; init; }
        public int Inventory { get; init; }
        public string State { get; init; } = "";
        public DateTime DrawnAt { get; init; }
        public byte[] Seed { get; init; } = [];
        public int SampleSize { get; init; }
        public int Passed { get; init; }
        public int Failed { get; init; }
        public int Bound { get; init; }
        public int Ppm { get; init; }
        public long Verified { get; init; }
        public int Abandoned { get; init; }
        public DateTime? CompletedAt { get; init; }
        public DateTime? ExpiresAt { get; init; }
        public string CatalogVersion { get; init; } = "";
        public int Nodes { get; init; }
        public long Devices { get; init; }
        public long Declared { get; init; }
    }

    // ---------------------------------------------------------------- helpers

    private Task<T> InTransactionAsync<T>(string code, Func<NpgsqlConnection, NpgsqlTransaction, Task<T>> work, CancellationToken cancellationToken) =>
        InProviderTransactionAsync(dataSource, code, work, cancellationToken);

    /// <summary>Runs the work in a transaction that holds the provider's capacity lock; refuses an unknown organisation first.</summary>
    internal static async Task<T> InProviderTransactionAsync<T>(NpgsqlDataSource dataSource, string code, Func<NpgsqlConnection, NpgsqlTransaction, Task<T>> work,
        CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync(IsolationLevel.ReadCommitted, cancellationToken);
        if (!await connection.ExecuteScalarAsync<bool>("SELECT EXISTS (SELECT 1 FROM organisations WHERE provider_id = @code)", new { code }, transaction))
        {
            throw new RegistryRefusedException(RegistryRefusalReason.OrganisationUnknown, $"no organisation {code} is registered");
        }

        await connection.ExecuteAsync("SELECT pg_advisory_xact_lock(@key)", new { key = LockKey("capacity", code) }, transaction);
        T result = await work(connection, transaction);
        await transaction.CommitAsync(cancellationToken);
        return result;
    }

    /// <summary>A 64-bit advisory-lock key: the first 8 bytes of SHA-256 of the scope and the names.</summary>
    internal static long LockKey(string scope, string first, string? second = null)
    {
        byte[] hash = SHA256.HashData(System.Text.Encoding.UTF8.GetBytes($"metering/{scope}/{first}/{second}"));
        return System.Buffers.Binary.BinaryPrimitives.ReadInt64BigEndian(hash);
    }

    /// <summary>A provider acts for itself only.</summary>
    internal static string OwnCode(Actor actor, string creditCode)
    {
        string code = CheckCreditCode(creditCode);
        if (actor.Role != Role.Provider || actor.Subject != code)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.OtherProvider, $"capacity entries of {code} are written by {code} itself");
        }

        return code;
    }

    internal static string CheckCreditCode(string code) =>
        Identity.CreditCode.IsValid(code)
            ? code
            : throw new RegistryRefusedException(RegistryRefusalReason.CreditCodeInvalid, $"'{code}' is not a valid unified social credit code");

    internal static void CheckNodeId(string nodeId, CapacityRefusal? refusal = null)
    {
        if (nodeId.Length is 0 or > NodeIdLengthMax || !nodeId.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or ':' or '-'))
        {
            string detail = $"node id '{(nodeId.Length > 80 ? nodeId[..80] : nodeId)}' must be 1 to {NodeIdLengthMax} characters from [A-Za-z0-9._:-]";
            throw refusal is { } reason ? new CapacityRefusedException(reason, detail) : FilingRules.Invalid(detail);
        }
    }

    private static string DeviceVerdictName(DeviceVerdict verdict) => verdict switch
    {
        DeviceVerdict.Healthy => "healthy",
        DeviceVerdict.Unhealthy => "unhealthy",
        DeviceVerdict.ModelMismatch => "model_mismatch",
        DeviceVerdict.AwaitingReview => "awaiting_review",
        DeviceVerdict.Rejected => "rejected",
        _ => "undeclared",
    };

    private static DeviceVerdict DeviceVerdictOf(string name) => name switch
    {
        "healthy" => DeviceVerdict.Healthy,
        "unhealthy" => DeviceVerdict.Unhealthy,
        "model_mismatch" => DeviceVerdict.ModelMismatch,
        "awaiting_review" => DeviceVerdict.AwaitingReview,
        "rejected" => DeviceVerdict.Rejected,
        _ => DeviceVerdict.Undeclared,
    };

    private static DeviceOutcome DeviceOutcomeOf(DeviceVerdict verdict) => verdict switch
    {
        DeviceVerdict.Healthy => DeviceOutcome.DeviceHealthy,
        DeviceVerdict.Unhealthy => DeviceOutcome.DeviceUnhealthy,
        DeviceVerdict.ModelMismatch => DeviceOutcome.DeviceModelMismatch,
        DeviceVerdict.AwaitingReview => DeviceOutcome.DeviceAwaitingReview,
        DeviceVerdict.Rejected => DeviceOutcome.DeviceRejected,
        _ => DeviceOutcome.DeviceUndeclared,
    };

    private static string NodeVerdictName(NodeVerdict verdict) => verdict switch
    {
        NodeVerdict.Passed => "passed",
        NodeVerdict.Failed => "failed",
        _ => "awaiting_review",
    };

    private static string ProtocolName(CapacityRefusal refusal) => Ingest.ProtocolNames.Of(refusal);

    private static string Shorten(byte[] nonce) => nonce.Length >= 4 ? Convert.ToHexStringLower(nonce.AsSpan(0, 4)) + "…" : "(not 32 bytes)";
}

/// <summary>A provider's completed, unexpired fleet validation: what the registry's verification stage takes.</summary>
public sealed record CurrentValidation(long ValidationId, int InventoryVersion, long VerifiedFp16Gflops, DateTimeOffset CompletedAt, DateTimeOffset ExpiresAt,
    int Nodes, int Sampled, int Failed, int PassRateLowerBoundPpm);
