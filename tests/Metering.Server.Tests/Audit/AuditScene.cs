using Dapper;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Metering.Server.Tests.Infrastructure;
using Metering.Tests.Shared;
using Npgsql;

namespace Metering.Server.Tests.Audit;

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
