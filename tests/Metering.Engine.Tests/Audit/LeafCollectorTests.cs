using System.Security.Cryptography;
using System.Text;
using Metering.Engine.Audit;

namespace Metering.Engine.Tests.Audit;

/// <summary>
/// A day read in block ranges is collected per range and put together in block order: each
/// stream's leaves must come out exactly as one read of the whole day gives them.
/// </summary>
public sealed class LeafCollectorTests
{
    private static readonly DateOnly Day = new(2026, 11, 20);
    private static readonly byte[] Provider = Encoding.UTF8.GetBytes("91440300MA5B000011");
    private static readonly byte[] Other = Encoding.UTF8.GetBytes("91440300MA5B000029");

    private static byte[] Chain(long sequence, byte[] stream) => SHA256.HashData([.. stream, .. BitConverter.GetBytes(sequence)]);

    private static (byte[] Provider, byte[] Stream, long Sequence)[] Rows(params (byte[] Provider, string Stream, long Sequence)[] rows) =>
        [.. rows.Select(r => (r.Provider, Encoding.UTF8.GetBytes(r.Stream), r.Sequence))];

    private static async Task<LeafCollector> CollectAsync(IEnumerable<(byte[] Provider, byte[] Stream, long Sequence)> rows)
    {
        var leaves = new LeafCollector(Day);
        foreach (var (provider, stream, sequence) in rows)
        {
            leaves.Add(provider, stream, sequence, Chain(sequence, stream), usageNpfh: sequence * 10);
        }

        await leaves.FinishAsync();
        return leaves;
    }

    private static List<(string Provider, int Count, long UsageNpfh, string Leaves)> Shape(List<ProviderLeaves> providers) =>
        [.. providers.Select(p => (p.ProviderId, p.Count, p.UsageNpfh, Convert.ToHexStringLower(p.LeafHashes())))];

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(5)]
    [InlineData(8)]
    public async Task Ranges_absorbed_in_block_order_give_the_leaves_of_one_read(int cut)
    {
        // Two streams of one provider written in turns, and a second provider; the cut falls
        // inside a stream's run.
        var rows = Rows(
            (Provider, "site-0", 1), (Provider, "site-0", 2), (Provider, "site-1", 1), (Other, "rack", 1),
            (Provider, "site-0", 3), (Provider, "site-1", 2), (Provider, "site-1", 3), (Other, "rack", 2), (Provider, "site-0", 4));

        LeafCollector whole = await CollectAsync(rows);
        LeafCollector first = await CollectAsync(rows.Take(cut));
        first.Absorb(await CollectAsync(rows.Skip(cut)));

        Assert.Equal(Shape(whole.Providers()), Shape(first.Providers()));
    }

    [Fact]
    public async Task Folding_a_providers_root_spends_its_leaves()
    {
        // The fold writes each level of the tree over its leaves, so nothing may read them after.
        LeafCollector leaves = await CollectAsync(Rows((Provider, "site-0", 1), (Provider, "site-0", 2), (Provider, "site-1", 1)));
        ProviderLeaves provider = leaves.Providers().Single();
        byte[] expected = MerkleTree.Root(provider.LeafHashes(), -1, null);

        Assert.Equal(expected, provider.Fold(Day, MerkleCutOff.AsSettled).Root);
        Assert.Throws<InvalidOperationException>(() => provider.LeafHashes());
        Assert.Throws<InvalidOperationException>(() => provider.Fold(Day, MerkleCutOff.AsSettled));
    }

    [Fact]
    public async Task A_later_range_that_holds_earlier_sequences_is_put_in_sequence_order()
    {
        // Physical order is not sequence order here (only a rewrite past the guards does this),
        // so the appended stream must be sorted, not trusted.
        var early = Rows((Provider, "site-0", 1), (Provider, "site-0", 2));
        var late = Rows((Provider, "site-0", 3), (Provider, "site-0", 4), (Provider, "site-0", 5));

        LeafCollector inOrder = await CollectAsync([.. early, .. late]);
        LeafCollector swapped = await CollectAsync(late);
        swapped.Absorb(await CollectAsync(early));

        List<ProviderLeaves> providers = swapped.Providers();
        Assert.Equal(Shape(inOrder.Providers()), Shape(providers));
        Assert.Equal([0, 1, 2, 3, 4], [.. Enumerable.Range(1, 5).Select(s => providers.Single().IndexOf("site-0", (ulong)s))]);
    }

    /// <summary>One run as the grouped read ships it: (sequence big-endian, chain hash) pairs back to back, in the order given.</summary>
    private static byte[] Pairs(byte[] stream, params long[] sequences) =>
        [.. sequences.SelectMany(q => (byte[])[.. BitConverter.GetBytes(q).Reverse(), .. Chain(q, stream)])];

    [Theory]
    [InlineData(new long[] { 5, 1, 3 }, new long[] { 2, 4, 6 })]
    [InlineData(new long[] { 7, 9, 1 }, new long[] { 12, 4 })]
    [InlineData(new long[] { 1000, 1 }, new long[] { 2, 500 })]
    [InlineData(new long[] { 3, 2, 1 }, new long[] { })]
    [InlineData(new long[] { 4, 5, 6 }, new long[] { 1, 2, 3 })]
    [InlineData(new long[] { 70_000, 70_001, 1, 2 }, new long[] { 3, 65_536 })]
    public async Task Runs_in_any_order_give_the_leaves_of_records_read_in_sequence_order(long[] firstRun, long[] secondRun)
    {
        // Dense streams are placed by sequence (with gaps where other days' records are), a
        // sparse one (1 to 1000 over four leaves) is sorted; both must give sequence order.
        byte[] stream = Encoding.UTF8.GetBytes("site-0");
        long[] all = [.. firstRun.Concat(secondRun).Order()];
        LeafCollector inOrder = await CollectAsync(all.Select(q => (Provider, stream, q)));

        var runs = new LeafCollector(Day);
        runs.AddRun(Provider, stream, firstRun.Length, firstRun.Sum() * 10, 0, Pairs(stream, firstRun));
        if (secondRun.Length > 0)
        {
            runs.AddRun(Provider, stream, secondRun.Length, secondRun.Sum() * 10, 0, Pairs(stream, secondRun));
        }

        await runs.FinishAsync();

        List<ProviderLeaves> ordered = runs.Providers();
        Assert.Equal(Shape(inOrder.Providers()), Shape(ordered));
        // Each record's leaf index (what a proof is built at) is its place in sequence order; a sequence not read is no leaf.
        ProviderLeaves provider = ordered.Single();
        Assert.Equal(Enumerable.Range(0, all.Length), all.Select(q => provider.IndexOf("site-0", (ulong)q)));
        Assert.Equal(-1, provider.IndexOf("site-0", (ulong)all[^1] + 1));
        Assert.Equal(-1, provider.IndexOf("site-1", (ulong)all[0]));
    }

    [Fact]
    public async Task A_sequence_shipped_twice_in_runs_keeps_both_leaves_the_smaller_leaf_hash_first()
    {
        byte[] stream = Encoding.UTF8.GetBytes("site-0");
        byte[] twice = Chain(2, Encoding.UTF8.GetBytes("rewritten"));
        byte[] firstRun = [.. Pairs(stream, 3, 2), .. BitConverter.GetBytes(2L).Reverse(), .. twice];
        var runs = new LeafCollector(Day);
        runs.AddRun(Provider, stream, 3, 0, 0, firstRun);
        runs.AddRun(Provider, stream, 1, 0, 0, Pairs(stream, 1));
        await runs.FinishAsync();

        ProviderLeaves provider = runs.Providers().Single();

        byte[] Leaf(byte[] chain) => SHA256.HashData([0, .. chain]);
        byte[][] seconds = [Leaf(Chain(2, stream)), Leaf(twice)];
        Array.Sort(seconds, (a, b) => a.AsSpan().SequenceCompareTo(b));
        Assert.Equal(Convert.ToHexStringLower([.. Leaf(Chain(1, stream)), .. seconds[0], .. seconds[1], .. Leaf(Chain(3, stream))]), Convert.ToHexStringLower(provider.LeafHashes()));
        Assert.Equal([0, 1, 3], new ulong[] { 1, 2, 3 }.Select(q => provider.IndexOf("site-0", q)));
    }

    [Theory]
    [InlineData(2, 0, 79)]
    [InlineData(3, 0, 80)]
    [InlineData(2, 1, 80)]
    [InlineData(0, 0, 0)]
    public void A_run_whose_pairs_do_not_match_its_record_count_or_hold_a_hash_of_another_length_is_refused(long records, long otherHashLengths, int pairBytes)
    {
        byte[] stream = Encoding.UTF8.GetBytes("site-0");
        var runs = new LeafCollector(Day);

        var refused = Assert.Throws<InvalidDataException>(() => runs.AddRun(Provider, stream, records, 0, otherHashLengths, Pairs(stream, 1, 2).AsSpan(0, pairBytes)));

        Assert.Contains("verify the chain", refused.Message, StringComparison.Ordinal);
    }
}
