using Dapper;
using Metering.Engine.Catalog;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Fixtures;
using Npgsql;

namespace Metering.Server.Fixtures;

/// <summary>A test server with helpers to stream usage through ingest and to tamper with stored rows as a superuser would.</summary>
internal sealed class AuditScene : IAsyncDisposable
{
    private AuditScene(TestServer server)
    {
        Server = server;
        DataSource = Database.CreateDataSource(server.ConnectionString);
    }

    public TestServer Server { get; }

    public NpgsqlDataSource DataSource { get; }

    public static async Task<AuditScene> StartAsync(PostgresFixture postgres, TimeProvider? time = null) =>
        new(await TestServer.StartAsync(postgres, time: time));

    /// <summary>Streams records through ingest in batches; returns the last acknowledged chain head.</summary>
    public async Task<byte[]> StreamAsync(string streamId, IReadOnlyList<UsageRecord> records, string? key = null)
    {
        await using IngestCall call = await IngestCall.OpenAsync(Server.Client(), streamId, key);
        BatchAck? ack = null;
        foreach (UsageRecord[] batch in records.Chunk(2_000))
        {
            ack = await call.SendAsync(batch);
        }

        await call.CompleteAsync();
        return ack!.ChainHead.ToByteArray();
    }

    public Task<byte[]> StreamAsync(string streamId, ulong first, ulong last, string? key = null) => StreamAsync(streamId, TestRecords.Range(first, last), key);

    /// <summary>2026-10-01T00:00Z: long streams start here so that five-minute records stay in the past.</summary>
    public static readonly long EarlyStartMs = new DateTimeOffset(2026, 10, 1, 0, 0, 0, TimeSpan.Zero).ToUnixTimeMilliseconds();

    /// <summary>TestRecords.Valid, moved to start at <paramref name="baseMs"/> (five minutes apart).</summary>
    public static List<UsageRecord> Records(ulong first, ulong last, long baseMs)
    {
        List<UsageRecord> records = TestRecords.Range(first, last);
        foreach (UsageRecord record in records)
        {
            record.StartUnixMs += baseMs - TestRecords.BaseStartMs;
            record.EndUnixMs += baseMs - TestRecords.BaseStartMs;
        }

        return records;
    }

    /// <summary>Runs SQL against usage_records with its append-only triggers switched off, as only a superuser can.</summary>
    public async Task TamperAsync(string sql, object? parameters = null)
    {
        await using NpgsqlConnection connection = await DataSource.OpenConnectionAsync();
        await connection.ExecuteAsync("ALTER TABLE usage_records DISABLE TRIGGER USER");
        try
        {
            await connection.ExecuteAsync(sql, parameters);
        }
        finally
        {
            await connection.ExecuteAsync("ALTER TABLE usage_records ENABLE TRIGGER USER");
        }
    }

    /// <summary>
    /// Writes a completed fleet validation of <paramref name="provider"/> as the capacity service
    /// leaves one: a new inventory version of nodes of at most 8 devices at sz-nanshan-dc1, every
    /// node sampled and passed, completed and expiring at the instants given; and moves the
    /// provider's admission epoch, as a completion does. The probe flow itself needs each model's
    /// hardware (the tests' probe runs on the CPU fixture model); the detectors read only what it
    /// leaves behind. A validation that expired before records are streamed leaves ingest judging
    /// them against the declared devices, as it judges records backfilled after an expiry.
    /// </summary>
    public async Task<long> PlantValidationAsync(string provider, DateTimeOffset completedAt, DateTimeOffset expiresAt, params (string Model, int Devices)[] fleet)
    {
        CatalogVersion catalog = DeviceCatalog.LoadEmbedded().VersionAt(completedAt.ToUnixTimeMilliseconds());
        var nodes = new List<(string Node, string Model, int Devices, long Gflops)>();
        foreach (var (model, devices) in fleet)
        {
            Assert.True(catalog.TryGet(model, out DeviceModel entry), $"{model} is not in the catalog");
            for (int i = 0; i * 8 < devices; i++)
            {
                int count = Math.Min(8, devices - i * 8);
                nodes.Add(($"{model.ToLowerInvariant()}-{i:D5}", model, count, count * entry.Fp16DenseGflops));
            }
        }

        await using NpgsqlConnection connection = await DataSource.OpenConnectionAsync();
        await using NpgsqlTransaction transaction = await connection.BeginTransactionAsync();
        long gflops = nodes.Sum(n => n.Gflops);
        int version = await connection.ExecuteScalarAsync<int>("""
            INSERT INTO capacity_inventories (provider_id, inventory_version, declared_at, declared_by, node_count, device_count, declared_fp16_gflops, catalog_version)
            SELECT @provider, coalesce(max(inventory_version), 0) + 1, @declared, 'audit-test', @nodeCount, @deviceCount, @gflops, @catalog
            FROM capacity_inventories WHERE provider_id = @provider
            RETURNING inventory_version
            """, new { provider, declared = completedAt.AddHours(-1).UtcDateTime, nodeCount = nodes.Count, deviceCount = (long)nodes.Sum(n => n.Devices), gflops, catalog = catalog.Version }, transaction);
        await connection.ExecuteAsync("""
            INSERT INTO capacity_inventory_nodes (provider_id, inventory_version, node_id, site, device_model, device_count, fp16_gflops)
            SELECT @provider, @version, n, 'sz-nanshan-dc1', m, d, g FROM unnest(@ids, @models, @devices, @gflopsPerNode) AS u(n, m, d, g)
            """, new
        {
            provider,
            version,
            ids = nodes.Select(n => n.Node).ToArray(),
            models = nodes.Select(n => n.Model).ToArray(),
            devices = nodes.Select(n => n.Devices).ToArray(),
            gflopsPerNode = nodes.Select(n => n.Gflops).ToArray(),
        }, transaction);
        long id = await connection.ExecuteScalarAsync<long>("""
            INSERT INTO capacity_validations (provider_id, inventory_version, state, drawn_at, sample_seed, sample_size, confidence_percent, conforming_percent, catalog_version,
                passed_nodes, failed_nodes, nonconforming_nodes_bound, pass_rate_lower_bound_ppm, verified_fp16_gflops, completed_at, expires_at)
            VALUES (@provider, @version, 'complete', @drawn, @seed, @nodeCount, 95, 95, @catalog, @nodeCount, 0, 0, 1000000, @gflops, @completed, @expires)
            RETURNING validation_id
            """, new
        {
            provider,
            version,
            drawn = completedAt.AddHours(-1).UtcDateTime,
            seed = new byte[32],
            nodeCount = nodes.Count,
            catalog = catalog.Version,
            gflops,
            completed = completedAt.UtcDateTime,
            expires = expiresAt.UtcDateTime,
        }, transaction);
        await connection.ExecuteAsync("UPDATE organisations SET admission_epoch = admission_epoch + 1 WHERE provider_id = @provider", new { provider }, transaction);
        await transaction.CommitAsync();
        return id;
    }

    public async Task ExecuteAsync(string sql, object? parameters = null)
    {
        await using NpgsqlConnection connection = await DataSource.OpenConnectionAsync();
        await connection.ExecuteAsync(sql, parameters);
    }

    public async ValueTask DisposeAsync()
    {
        await DataSource.DisposeAsync();
        await Server.DisposeAsync();
    }
}
