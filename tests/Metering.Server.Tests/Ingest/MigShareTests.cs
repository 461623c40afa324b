using Grpc.Core;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Ingest;

/// <summary>
/// MIG shares through the real server and database: from catalog 2026.1 (effective 2026-12-07) a
/// share k/7 of an A100 is the k-slice profile's multiprocessor fraction, and records normalised
/// under 2025.1 keep the plain k/7 they were stored with.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class MigShareTests(PostgresFixture postgres)
{
    private const long HourMs = 3_600_000;

    private static readonly DateTimeOffset Now = new(2026, 12, 8, 12, 0, 0, TimeSpan.Zero);

    private static UsageRecord A100Slice(ulong sequence, uint slices, DateTimeOffset start)
    {
        UsageRecord record = TestRecords.Valid(sequence);
        record.DeviceModel = "A100-SXM";
        record.DeviceCount = 1;
        record.ShareNumerator = slices;
        record.ShareDenominator = 7;
        record.StartUnixMs = start.ToUnixTimeMilliseconds();
        record.EndUnixMs = record.StartUnixMs + HourMs;
        record.DeviceUuids.Clear();
        record.ClearEnergyMwh();
        return record;
    }

    [Fact]
    public async Task A_MIG_1g_record_is_normalised_to_14_of_108_SMs_and_an_older_one_keeps_its_seventh()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, time: new ManualClock(Now));
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "mig-a100");
        Assert.Equal("2026.1", call.Opened.CatalogVersion);

        // One hour of 1g before 2026.1 took effect, then one hour of 1g and one of 3g after it.
        await call.SendAsync([
            A100Slice(1, 1, new DateTimeOffset(2026, 12, 6, 10, 0, 0, TimeSpan.Zero)),
            A100Slice(2, 1, new DateTimeOffset(2026, 12, 8, 9, 0, 0, TimeSpan.Zero)),
            A100Slice(3, 3, new DateTimeOffset(2026, 12, 8, 10, 0, 0, TimeSpan.Zero)),
        ]);

        var rows = (await server.QueryAsync<(long Sequence, long Usage, string Catalog)>(
            "SELECT sequence, usage_npfh, catalog_version FROM usage_records WHERE stream_id = 'mig-a100' ORDER BY sequence")).ToList();
        Assert.Equal(
            [
                // 0.312 PFLOPS × 1/7 × 1 h, as 2025.1 normalised it.
                (1L, 44_571_428L, "2025.1"),
                // 0.312 PFLOPS × 14/108 × 1 h.
                (2L, 40_444_444L, "2026.1"),
                // 0.312 PFLOPS × 42/108 × 1 h.
                (3L, 121_333_333L, "2026.1"),
            ],
            rows);
    }

    [Fact]
    public async Task A_share_of_seven_that_names_no_MIG_profile_is_refused_and_nothing_is_stored()
    {
        await using TestServer server = await TestServer.StartAsync(postgres, time: new ManualClock(Now));
        await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "mig-a100");

        // Five slices of seven: no A100 profile takes five, so the record would claim SMs no instance has.
        RpcException error = await call.SendRefusedAsync([A100Slice(1, 5, new DateTimeOffset(2026, 12, 8, 9, 0, 0, TimeSpan.Zero))]);

        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Equal("SHARE_OUT_OF_RANGE", IngestCall.Reason(error));
        Assert.Contains("no MIG profile", error.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(0L, await server.ScalarAsync<long>("SELECT count(*) FROM usage_records WHERE stream_id = 'mig-a100'"));
    }
}
