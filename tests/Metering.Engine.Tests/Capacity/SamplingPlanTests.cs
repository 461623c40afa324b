using System.Numerics;
using Metering.Engine.Capacity;

namespace Metering.Engine.Tests.Capacity;

/// <summary>The sampling rule and the confidence bound on known inventories; pure arithmetic, no I/O.</summary>
public sealed class SamplingPlanTests
{
    [Theory]
    [InlineData(1, 1)]
    [InlineData(2, 2)]
    [InlineData(10, 10)]
    [InlineData(19, 19)]
    [InlineData(20, 16)]
    [InlineData(40, 25)]
    [InlineData(100, 39)]
    [InlineData(303, 51)]
    [InlineData(1_000, 56)]
    [InlineData(10_000, 59)]
    [InlineData(20_000, 59)]
    public void The_sample_size_of_a_known_inventory_is_the_exact_hypergeometric_one(int nodes, int expected)
    {
        Assert.Equal(expected, SamplingPlan.SampleSize(nodes, 95, 95));
    }

    [Fact]
    public void Fleets_under_twenty_nodes_are_probed_whole_because_one_bad_node_already_breaks_95_percent()
    {
        for (int nodes = 1; nodes < 20; nodes++)
        {
            Assert.Equal(1, SamplingPlan.NonconformingThreshold(nodes, 95));
            Assert.Equal(nodes, SamplingPlan.SampleSize(nodes, 95, 95));
        }
    }

    [Theory]
    [InlineData(20)]
    [InlineData(40)]
    [InlineData(59)]
    [InlineData(60)]
    [InlineData(257)]
    [InlineData(1_000)]
    [InlineData(5_000)]
    public void The_sample_size_is_the_smallest_that_misses_every_bad_node_with_at_most_5_percent_probability(int nodes)
    {
        int threshold = SamplingPlan.NonconformingThreshold(nodes, 95);
        int n = SamplingPlan.SampleSize(nodes, 95, 95);

        // P(no bad node in the sample | D*) = C(N − D*, n) / C(N, n).
        Assert.True(SamplingPlan.Binomial(nodes - threshold, n) * 100 <= SamplingPlan.Binomial(nodes, n) * 5);
        Assert.True(SamplingPlan.Binomial(nodes - threshold, n - 1) * 100 > SamplingPlan.Binomial(nodes, n - 1) * 5);
        // D* nodes bad is just past 5%: D* − 1 is not.
        Assert.True((long)threshold * 100 > (long)nodes * 5 && (long)(threshold - 1) * 100 <= (long)nodes * 5);
    }

    [Fact]
    public void A_large_fleet_needs_the_binomial_59()
    {
        // 0.95^59 = 0.0485 ≤ 0.05 < 0.95^58 = 0.0510, in integers: 95^59 × 100 ≤ 100^59 × 5.
        Assert.True(BigInteger.Pow(95, 59) * 100 <= BigInteger.Pow(100, 59) * 5);
        Assert.True(BigInteger.Pow(95, 58) * 100 > BigInteger.Pow(100, 58) * 5);
        Assert.Equal(59, SamplingPlan.SampleSize(100_000, 95, 95));
    }

    [Theory]
    [InlineData(40, 25, 0, 2)]
    [InlineData(40, 25, 1, 5)]
    [InlineData(40, 25, 25, 40)]
    [InlineData(100, 39, 0, 5)]
    [InlineData(1_000, 56, 0, 50)]
    [InlineData(1_000, 56, 1, 80)]
    [InlineData(20_000, 59, 0, 988)]
    [InlineData(4, 4, 0, 0)]
    [InlineData(4, 4, 1, 1)]
    public void The_upper_bound_on_bad_nodes_of_a_known_sample_outcome(int nodes, int sampled, int failed, int expected)
    {
        Assert.Equal(expected, SamplingPlan.NonconformingUpperBound(nodes, sampled, failed, 95));
    }

    [Fact]
    public void With_no_failure_in_the_prescribed_sample_the_pass_rate_bound_is_at_least_95_percent()
    {
        foreach (int nodes in new[] { 1, 7, 20, 40, 99, 500, 2_000, 20_000 })
        {
            int n = SamplingPlan.SampleSize(nodes, 95, 95);
            int bound = SamplingPlan.NonconformingUpperBound(nodes, n, 0, 95);
            Assert.True(SamplingPlan.PassRateLowerBoundPpm(nodes, bound) >= 950_000, $"{nodes} nodes: bound {bound}");
        }
    }

    [Fact]
    public void Forty_nodes_of_eight_H100_that_all_pass_verify_300_78_PFLOPS()
    {
        // The worked example of Capacity/README.md: 320 H100 SXM declared (316.608 PFLOPS).
        long[] nodes = Enumerable.Repeat(8 * 989_400L, 40).ToArray();
        int bound = SamplingPlan.NonconformingUpperBound(40, SamplingPlan.SampleSize(40, 95, 95), 0, 95);

        Assert.Equal(2, bound);
        Assert.Equal(950_000, SamplingPlan.PassRateLowerBoundPpm(40, bound));
        Assert.Equal(300_777_600, SamplingPlan.VerifiedGflops(nodes, bound));
        Assert.Equal(316_608_000L * 38 / 40, SamplingPlan.VerifiedGflops(nodes, bound));
    }

    [Fact]
    public void With_unequal_nodes_the_largest_ones_are_assumed_bad()
    {
        long[] nodes = [100, 800, 100, 400];
        Assert.Equal(1_400, SamplingPlan.VerifiedGflops(nodes, 0));
        Assert.Equal(600, SamplingPlan.VerifiedGflops(nodes, 1));
        Assert.Equal(200, SamplingPlan.VerifiedGflops(nodes, 2));
        Assert.Equal(0, SamplingPlan.VerifiedGflops(nodes, 4));
    }

    [Fact]
    public void A_sample_is_a_function_of_the_seed_and_the_inventory_not_of_its_order()
    {
        string[] nodes = Enumerable.Range(0, 40).Select(i => $"node-{i:D2}").ToArray();
        byte[] seed = Enumerable.Range(1, 32).Select(i => (byte)i).ToArray();

        IReadOnlyList<string> first = SamplingPlan.Draw(nodes, 25, seed);
        IReadOnlyList<string> again = SamplingPlan.Draw(nodes.Reverse(), 25, seed);
        IReadOnlyList<string> other = SamplingPlan.Draw(nodes, 25, Enumerable.Range(2, 32).Select(i => (byte)i).ToArray());

        Assert.Equal(first, again);
        Assert.NotEqual(first, other);
        Assert.Equal(25, first.Distinct().Count());
        Assert.All(first, node => Assert.Contains(node, nodes));
        Assert.Equal(nodes.Order(StringComparer.Ordinal), SamplingPlan.Draw(nodes, 40, seed).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void Every_node_is_drawn_about_equally_often()
    {
        // 3 of 10 nodes over 3,000 fixed seeds: each node is expected 900 times (sd about 25).
        string[] nodes = Enumerable.Range(0, 10).Select(i => $"n{i}").ToArray();
        var counts = nodes.ToDictionary(n => n, _ => 0);
        for (int s = 0; s < 3_000; s++)
        {
            byte[] seed = new byte[32];
            BitConverter.TryWriteBytes(seed, s);
            foreach (string node in SamplingPlan.Draw(nodes, 3, seed))
            {
                counts[node]++;
            }
        }

        Assert.All(counts.Values, count => Assert.InRange(count, 800, 1_000));
    }

    [Theory]
    [InlineData(0, 1, 0)]
    [InlineData(10, 11, 0)]
    [InlineData(10, 5, 6)]
    [InlineData(10, 5, -1)]
    public void Impossible_sample_outcomes_are_refused(int nodes, int sampled, int failed)
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => SamplingPlan.NonconformingUpperBound(nodes, sampled, failed, 95));
    }
}
