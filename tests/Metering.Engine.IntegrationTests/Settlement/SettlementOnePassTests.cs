using Metering.Engine.Audit;
using Metering.Engine.Settlement;
using Metering.Engine.Time;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Fixtures;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;
using Contract = Metering.Engine.Vouchers.Contract;
using FeeUnit = Metering.Engine.Registry.FeeUnit;

namespace Metering.Engine.IntegrationTests.Settlement;

/// <summary>
/// The run reads the day once and computes from that one read both the totals it prices and the
/// Merkle leaves it publishes. These tests hold the one pass to the set-based SQL aggregation it
/// replaced, computed here on its own over the same rows, and to the auditor's separate read of
/// the leaves.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class SettlementOnePassTests(PostgresFixture postgres)
{
    private static readonly DateOnly Day = VoucherScene.Day;

    /// <summary>A holder with usage but no contract anywhere.</summary>
    private static readonly string Stranger = Metering.Engine.Identity.CreditCode.Complete("91440300MA5K00002");

    /// <summary>The usage groups of the day by the set-based rule, written here independently of the engine: card time rounded down once per record.</summary>
    private const string IndependentAggregation = """
        SELECT provider_id, holder_code, device_model, count(*)::bigint AS records, sum(usage_npfh)::bigint AS usage_npfh,
               sum(floor(device_count::numeric * share_numerator * extract(epoch FROM end_at - start_at) * 1000 / share_denominator))::bigint AS card_ms
        FROM usage_records
        WHERE start_at >= @from AND start_at < @until AND stream_id NOT LIKE 'proof:%'
        GROUP BY provider_id, holder_code, device_model
        ORDER BY provider_id, holder_code, device_model
        """;

    private const string SettledLines = """
        SELECT l.provider_id, l.holder_code, l.device_model, l.records, l.usage_npfh, l.card_ms
        FROM settlement_lines l JOIN settlement_runs r USING (run_id)
        WHERE r.day = @day AND l.kind = 'usage'
        ORDER BY l.provider_id, l.holder_code, l.device_model
        """;

    /// <summary>
    /// A record with a fractional device share and a duration that is not a whole number of
    /// seconds, so that card time has a remainder to round down.
    /// </summary>
    private static UsageRecord Sliced(string holder, int slot, string job, uint devices, uint numerator, uint denominator, int extraMs, string model)
    {
        UsageRecord record = VoucherScene.Usage(holder, Day, slot, job, devices, minutes: 7, model: model);
        record.ShareNumerator = numerator;
        record.ShareDenominator = denominator;
        record.EndUnixMs += extraMs;
        return record;
    }

    [Theory]
    [InlineData(1, 1, 1024)]
    [InlineData(2, 1, 1024)]
    [InlineData(3, 1, 1024)]
    [InlineData(1, 4, 1024)]
    [InlineData(1, 1, 1)]
    [InlineData(2, 2, 1)]
    [InlineData(1, 1, 3)]
    public async Task One_read_of_a_day_of_several_providers_holders_and_contracts_gives_the_totals_of_the_set_based_aggregation_and_one_leaf_per_record(int segments, int rangesPerSegment, int chunkBlocks)
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string cardHours = await scene.HolderAsync();
        string pflopsHours = await scene.HolderAsync(VoucherScene.NewCode());
        string elsewhere = await scene.HolderAsync(VoucherScene.NewCode());
        Contract first = await scene.ContractAsync(cardHours);
        await scene.ContractAsync(pflopsHours, unit: FeeUnit.PerPflopsHour);
        await scene.ContractAsync(elsewhere, provider: TestRecords.OtherProvider);
        await scene.VoucherAsync(first.ContractId, 100_000_000);

        // Two streams at the first provider, one at the second; whole devices and slices, two
        // models, a holder without a contract, a proof stream and usage of the next day.
        await scene.IngestAsync("cluster-a", [
            .. VoucherScene.Jobs(cardHours, Day, 6),
            .. VoucherScene.Jobs(pflopsHours, Day, 4, firstSlot: 10, prefix: "pf"),
            Sliced(cardHours, 20, "slice-a1", 1, 3, 7, 1_234, "A100-SXM"),
            Sliced(pflopsHours, 21, "slice-a2", 2, 1, 3, 999, "A100-SXM"),
            Sliced(Stranger, 22, "stranger-a", 3, 2, 7, 1, "H100-SXM"),
        ]);
        await scene.IngestAsync("cluster-b", [
            .. VoucherScene.Jobs(cardHours, Day, 3, firstSlot: 30, prefix: "b"),
            Sliced(cardHours, 40, "slice-b1", 4, 5, 7, 17, "H100-SXM"),
            .. VoucherScene.Jobs(cardHours, Day.AddDays(1), 2, prefix: "next"),
        ]);
        await scene.IngestAsync("proof:nightly", VoucherScene.Jobs(cardHours, Day, 2, firstSlot: 100, prefix: "proof"));
        await scene.IngestAsync("rack-1", [
            .. VoucherScene.Jobs(elsewhere, Day, 5, firstSlot: 50, prefix: "rack"),
            Sliced(elsewhere, 60, "slice-r1", 1, 1, 2, 333, "A100-SXM"),
            Sliced(Stranger, 61, "stranger-r", 1, 6, 7, 4_321, "H100-SXM"),
        ], provider: TestRecords.OtherProvider);

        // Bulk in turns, so that the table spans blocks and each of these streams has rows in
        // several of them: a read split by block ranges then cuts streams between segments.
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(cardHours, Day, 90, firstSlot: 150, prefix: "bulk-a1"));
        await scene.IngestAsync("rack-1", VoucherScene.Jobs(elsewhere, Day, 90, firstSlot: 150, prefix: "bulk-r"), provider: TestRecords.OtherProvider);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(cardHours, Day, 90, firstSlot: 150, prefix: "bulk-a2"));

        // Read on one connection, cut into two or three block ranges read side by side, or cut
        // into four ranges that one connection reads one after the other; each range grouped by
        // PostgreSQL in chunks of a block or three, so that every stream comes in several runs
        // of a block of sequence numbers, or in one chunk of the whole range.
        DailySettlement settlement = scene.Settlement(new SettlementOptions { DaySegments = segments, DayRangesPerSegment = rangesPerSegment, DayChunkBlocks = chunkBlocks });
        var progress = new List<SettlementProgress>();
        SettlementOutcome outcome = await settlement.SettleAsync(Day, VoucherScene.Batch, progress.Add, CancellationToken.None);
        SettlementOutcome again = await settlement.SettleAsync(Day, VoucherScene.Batch, null, CancellationToken.None);

        var bounds = new { from = ShanghaiTime.StartOf(Day).UtcDateTime, until = ShanghaiTime.StartOf(Day.AddDays(1)).UtcDateTime };
        var expected = await scene.QueryAsync<(string ProviderId, string HolderCode, string DeviceModel, long Records, long UsageNpfh, long CardMs)>(IndependentAggregation, bounds);
        var settled = await scene.QueryAsync<(string ProviderId, string HolderCode, string DeviceModel, long Records, long UsageNpfh, long CardMs)>(SettledLines, new { day = Day });
        Assert.Equal(8, expected.Count);
        Assert.Contains(expected, l => l.CardMs % 1_000 != 0);
        Assert.Equal(expected, settled);
        Assert.Equal((expected.Sum(l => l.Records), expected.Sum(l => l.UsageNpfh)), (outcome.DayRecords, outcome.DayUsageNpfh));
        Assert.Equal(24 + 270, outcome.DayRecords);

        // The day was read in as many segments and ranges as asked, which together read the day's records.
        string aggregate = progress.Single(p => p.Stage == "aggregate").Message;
        if (segments * rangesPerSegment == 1)
        {
            Assert.EndsWith("read in one segment", aggregate, StringComparison.Ordinal);
        }
        else
        {
            long[] perRange = [.. aggregate[(aggregate.IndexOf(" ranges of ", StringComparison.Ordinal) + " ranges of ".Length)..]
                .Split(", ").Select(n => long.Parse(n, System.Globalization.NumberStyles.AllowThousands, System.Globalization.CultureInfo.InvariantCulture))];
            Assert.Contains($"read in {segments} block-range segment{(segments == 1 ? "" : "s")}, {segments * rangesPerSegment} ranges of ", aggregate, StringComparison.Ordinal);
            Assert.Equal(segments * rangesPerSegment, perRange.Length);
            Assert.All(perRange, records => Assert.True(records > 0, aggregate));
            Assert.Equal(outcome.DayRecords, perRange.Sum());
        }

        // Each provider's published root is the auditor's, read on its own through the leaf statement, with one leaf per settled record.
        foreach (string provider in new[] { TestRecords.Provider, TestRecords.OtherProvider })
        {
            StatementRow published = outcome.Statements.Single(s => s.PartyKind == StatementFormats.ProviderKind && s.Party == provider).Parse()
                .Rows.Single(r => r.Record == StatementFormats.MerkleRootRecord);
            DailyRoot audited = await new DailyMerkle(scene.DataSource).RootAsync(provider, Day, MerkleCutOff.AsSettled, CancellationToken.None);
            Assert.Equal((expected.Where(l => l.ProviderId == provider).Sum(l => l.Records), Convert.ToHexStringLower(audited.Root)), (published.Records!.Value, published.Note));
            Assert.Equal(audited.LeafCount, published.Records!.Value);
        }

        // The rerun writes nothing and returns the same settlement.
        Assert.True(again.AlreadyClosed);
        Assert.Equal(outcome.SettlementHex, again.SettlementHex);
        Assert.Equal(expected, await scene.QueryAsync<(string ProviderId, string HolderCode, string DeviceModel, long Records, long UsageNpfh, long CardMs)>(SettledLines, new { day = Day }));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(SettlementOptions.DaySegmentsMax + 1)]
    public async Task A_number_of_day_segments_outside_its_limits_is_refused_when_the_settlement_is_made(int segments)
    {
        // No connection is opened: the options are checked before anything runs.
        await using NpgsqlDataSource unused = NpgsqlDataSource.Create("Host=unused.invalid");

        var refused = Assert.Throws<ArgumentOutOfRangeException>(() => new DailySettlement(unused, TimeProvider.System, NullLogger.Instance, new SettlementOptions { DaySegments = segments }));

        Assert.Contains($"DaySegments is {segments}", refused.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-1)]
    [InlineData(SettlementOptions.DayChunkBlocksMax + 1)]
    public async Task A_chunk_of_blocks_outside_its_limits_is_refused_when_the_settlement_is_made(int chunkBlocks)
    {
        // No connection is opened: the options are checked before anything runs.
        await using NpgsqlDataSource unused = NpgsqlDataSource.Create("Host=unused.invalid");

        var refused = Assert.Throws<ArgumentOutOfRangeException>(() => new DailySettlement(unused, TimeProvider.System, NullLogger.Instance, new SettlementOptions { DayChunkBlocks = chunkBlocks }));

        Assert.Contains($"DayChunkBlocks is {chunkBlocks}", refused.Message, StringComparison.Ordinal);
    }
}
