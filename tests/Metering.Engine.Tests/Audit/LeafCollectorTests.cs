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
}
