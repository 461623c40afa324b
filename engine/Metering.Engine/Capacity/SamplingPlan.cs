using System.Buffers.Binary;
using System.Numerics;
using System.Security.Cryptography;
using System.Text;

namespace Metering.Engine.Capacity;

/// <summary>
/// Zero-acceptance sampling of nodes, and the bound on the pass rate that a sample's outcome
/// supports, both exact: every probability is a ratio of binomial coefficients compared in
/// BigInteger arithmetic, with no floating point anywhere (see Capacity/README.md).
///
/// Nodes are the sampling unit: a node conforms when every device it declares is there, of the
/// declared model, and healthy. The claim tested is "at least <c>conformingPercent</c>% of the
/// declared nodes conform", at <c>confidencePercent</c>% confidence, by the hypergeometric
/// distribution (sampling without replacement from the declared inventory), so small fleets get
/// the exact finite-population answer and large ones tend to the binomial's 59.
/// </summary>
internal static class SamplingPlan
{
    /// <summary>
    /// The fewest non-conforming nodes that make the claim false: D* = ⌊N × (100 − c) / 100⌋ + 1
    /// for c% conforming, since "at least c% conform" fails exactly when D &gt; N × (100 − c) / 100.
    /// </summary>
    public static int NonconformingThreshold(int nodes, int conformingPercent)
    {
        CheckPercent(conformingPercent, nameof(conformingPercent));
        ArgumentOutOfRangeException.ThrowIfLessThan(nodes, 1);
        return (int)((long)nodes * (100 - conformingPercent) / 100) + 1;
    }

    /// <summary>
    /// The sample size: the smallest n such that, were D* of the N nodes non-conforming, a sample
    /// of n would find none of them with probability at most 1 − confidence:
    /// C(N − D*, n) / C(N, n) ≤ (100 − confidence) / 100. When no n below N does, every node is
    /// probed (n = N, which can only pass if the claim is true).
    /// </summary>
    public static int SampleSize(int nodes, int confidencePercent, int conformingPercent)
    {
        CheckPercent(confidencePercent, nameof(confidencePercent));
        int threshold = NonconformingThreshold(nodes, conformingPercent);
        // C(N − D*, n) / C(N, n) = Π_{i<n} (N − D* − i) / (N − i), built up one factor at a time.
        BigInteger good = BigInteger.One;
        BigInteger all = BigInteger.One;
        for (int n = 1; n <= nodes; n++)
        {
            good *= Math.Max(0, nodes - threshold - (n - 1));
            all *= nodes - (n - 1);
            if (good * 100 <= all * (100 - confidencePercent))
            {
                return n;
            }
        }

        return nodes;
    }

    /// <summary>
    /// The upper confidence bound on the number of non-conforming nodes in the inventory, given
    /// that <paramref name="failed"/> of the <paramref name="sampled"/> probed nodes failed: the
    /// largest D for which seeing at most that many failures still has probability above
    /// 1 − confidence, P(X ≤ failed | N, D, n) &gt; (100 − confidence) / 100 (a one-sided exact
    /// hypergeometric bound). The probability falls as D grows, so a binary search finds it.
    /// </summary>
    public static int NonconformingUpperBound(int nodes, int sampled, int failed, int confidencePercent)
    {
        CheckPercent(confidencePercent, nameof(confidencePercent));
        if (nodes < 1 || sampled < 1 || sampled > nodes || failed < 0 || failed > sampled)
        {
            throw new ArgumentOutOfRangeException(nameof(sampled), $"A sample of {sampled} with {failed} failures does not fit {nodes} nodes.");
        }

        // The sample saw sampled − failed conforming nodes, so at most N − (n − x) can fail; and
        // the x failures seen are certain, so at least x do.
        int low = failed;
        int high = nodes - (sampled - failed);
        BigInteger total = Binomial(nodes, sampled);
        while (low < high)
        {
            int middle = low + (high - low + 1) / 2;
            if (AtMostProbabilityAbove(nodes, middle, sampled, failed, total, confidencePercent))
            {
                low = middle;
            }
            else
            {
                high = middle - 1;
            }
        }

        return low;
    }

    /// <summary>
    /// The lower confidence bound of the pass rate in parts per million, rounded down:
    /// (N − bound) / N.
    /// </summary>
    public static int PassRateLowerBoundPpm(int nodes, int nonconformingBound) =>
        (int)((long)(nodes - nonconformingBound) * 1_000_000 / nodes);

    /// <summary>
    /// Verified capacity: the declared peak less the peak of the <paramref name="nonconformingBound"/>
    /// largest nodes, since the bound says how many nodes may not conform but not which. For nodes
    /// of equal size this is declared × (N − bound) / N exactly; for unequal nodes it is never more.
    /// </summary>
    public static long VerifiedGflops(IReadOnlyList<long> nodeGflops, int nonconformingBound)
    {
        ArgumentNullException.ThrowIfNull(nodeGflops);
        if (nonconformingBound < 0 || nonconformingBound > nodeGflops.Count)
        {
            throw new ArgumentOutOfRangeException(nameof(nonconformingBound));
        }

        long declared = 0;
        foreach (long gflops in nodeGflops)
        {
            declared = checked(declared + gflops);
        }

        long largest = 0;
        foreach (long gflops in nodeGflops.OrderDescending().Take(nonconformingBound))
        {
            largest += gflops;
        }

        return declared - largest;
    }

    /// <summary>
    /// The sample itself, derived from a 32-byte seed: the node ids in ordinal order, then a
    /// partial Fisher–Yates shuffle whose j-th draw is uniform on [j, N) by rejection sampling
    /// from the 8-byte big-endian words of SHA-256("metering-capacity/v1/sample" ‖ seed ‖ counter)
    /// (counter u32 big-endian, from 0). The first <paramref name="size"/> positions, in draw
    /// order, are the sample. The server draws the seed from a cryptographic RNG and stores it,
    /// so anyone can re-derive the sample from the seed and the inventory.
    /// </summary>
    public static IReadOnlyList<string> Draw(IEnumerable<string> nodeIds, int size, ReadOnlySpan<byte> seed)
    {
        ArgumentNullException.ThrowIfNull(nodeIds);
        if (seed.Length != SeedBytes)
        {
            throw new ArgumentException($"A sample seed is {SeedBytes} bytes.", nameof(seed));
        }

        string[] order = nodeIds.Order(StringComparer.Ordinal).ToArray();
        if (size < 0 || size > order.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(size), size, $"A sample of {size} from {order.Length} nodes.");
        }

        var words = new SeedWords(seed);
        for (int j = 0; j < size; j++)
        {
            int pick = j + (int)words.Below((ulong)(order.Length - j));
            (order[j], order[pick]) = (order[pick], order[j]);
        }

        return order[..size];
    }

    public const int SeedBytes = 32;

    /// <summary>P(X ≤ x | N, D, n) &gt; (100 − confidence) / 100, as Σ C(D, k) C(N − D, n − k) × 100 &gt; C(N, n) × (100 − confidence).</summary>
    private static bool AtMostProbabilityAbove(int nodes, int nonconforming, int sampled, int failed, BigInteger total, int confidencePercent)
    {
        BigInteger ways = BigInteger.Zero;
        for (int k = 0; k <= failed; k++)
        {
            ways += Binomial(nonconforming, k) * Binomial(nodes - nonconforming, sampled - k);
        }

        return ways * 100 > total * (100 - confidencePercent);
    }

    /// <summary>C(n, k), exactly; 0 when k is outside [0, n].</summary>
    internal static BigInteger Binomial(int n, int k)
    {
        if (k < 0 || n < 0 || k > n)
        {
            return BigInteger.Zero;
        }

        k = Math.Min(k, n - k);
        BigInteger result = BigInteger.One;
        for (int i = 1; i <= k; i++)
        {
            // Each partial product C(n − k + i, i) is an integer, so the division is exact.
            result = result * (n - k + i) / i;
        }

        return result;
    }

    private static void CheckPercent(int percent, string name)
    {
        if (percent is < 50 or > 99)
        {
            throw new ArgumentOutOfRangeException(name, percent, "A confidence or conformance level is a whole percentage from 50 to 99.");
        }
    }

    /// <summary>Uniform integers from a seed by SHA-256 in counter mode, with rejection so that no value is favoured.</summary>
    private ref struct SeedWords(ReadOnlySpan<byte> seed)
    {
        private static readonly byte[] Label = Encoding.ASCII.GetBytes("metering-capacity/v1/sample");
        private readonly ReadOnlySpan<byte> _seed = seed;
        private uint _counter;
        private int _used = 4;
        private Span<byte> _block;

        public ulong Below(ulong bound)
        {
            // Values at or above the largest multiple of bound would favour the small residues.
            ulong limit = ulong.MaxValue - (ulong.MaxValue % bound + 1) % bound;
            while (true)
            {
                ulong word = Next();
                if (word <= limit)
                {
                    return word % bound;
                }
            }
        }

        private ulong Next()
        {
            if (_used == 4)
            {
                byte[] input = new byte[Label.Length + _seed.Length + 4];
                Label.CopyTo(input, 0);
                _seed.CopyTo(input.AsSpan(Label.Length));
                BinaryPrimitives.WriteUInt32BigEndian(input.AsSpan(Label.Length + _seed.Length), _counter++);
                _block = SHA256.HashData(input);
                _used = 0;
            }

            return BinaryPrimitives.ReadUInt64BigEndian(_block.Slice(8 * _used++, 8));
        }
    }
}
