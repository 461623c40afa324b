using System.Text;

namespace Metering.Engine.Settlement;

/// <summary>
/// The day's usage summed per provider, holder and device model while the rows stream past, in
/// integers only: records, nPFh and card-milliseconds, each record's card time by the same rule
/// as the set-based aggregation (<see cref="DailySettlement.DayAggregationSql"/>):
/// devices × share numerator × duration, divided by the share denominator, rounded down once
/// per record. A group is looked up by the row's UTF-8 bytes, so a row allocates nothing; a new
/// group decodes its names once. A reader that splits the day keeps one per segment and adds
/// the others into the first (<see cref="Absorb"/>) before it asks for the groups, which are
/// sorted once. Not thread-safe.
/// </summary>
internal sealed class DayTotals
{
    /// <summary>Microseconds in a millisecond: durations arrive in microseconds (timestamptz) and card time is counted in milliseconds.</summary>
    private const long MicrosecondsPerMillisecond = 1_000;

    private readonly Dictionary<byte[], Totals> _groups = new(KeyComparer.Instance);
    private readonly Dictionary<byte[], Totals>.AlternateLookup<ReadOnlySpan<byte>> _byBytes;
    private byte[] _key = new byte[256];

    public DayTotals()
    {
        _byBytes = _groups.GetAlternateLookup<ReadOnlySpan<byte>>();
    }

    /// <summary>
    /// Adds one record. Its device count and share numerator come as their product, which
    /// PostgreSQL computes in the read, so that one field travels instead of two.
    /// </summary>
    /// <exception cref="InvalidDataException">The record breaks a rule its table's checks enforce (a count, share or duration that is not positive).</exception>
    public void Add(ReadOnlySpan<byte> providerUtf8, ReadOnlySpan<byte> holderUtf8, ReadOnlySpan<byte> modelUtf8, long usageNpfh,
        long deviceShares, int shareDenominator, long startMicroseconds, long endMicroseconds)
    {
        long durationMicroseconds = checked(endMicroseconds - startMicroseconds);
        if (deviceShares <= 0 || shareDenominator <= 0 || durationMicroseconds <= 0)
        {
            throw new InvalidDataException($"A usage record of {Encoding.UTF8.GetString(providerUtf8)} has {deviceShares} device share(s) over {shareDenominator} and {durationMicroseconds} µs; the table's checks allow none of these.");
        }

        long cardMs = CardMilliseconds((ulong)deviceShares, (ulong)durationMicroseconds, (ulong)shareDenominator);
        int length = providerUtf8.Length + 1 + holderUtf8.Length + 1 + modelUtf8.Length;
        if (length > _key.Length)
        {
            _key = new byte[Math.Max(length, _key.Length * 2)];
        }

        // Provider NUL holder NUL model: PostgreSQL text holds no NUL, so the key is unambiguous.
        Span<byte> key = _key.AsSpan(0, length);
        providerUtf8.CopyTo(key);
        key[providerUtf8.Length] = 0;
        holderUtf8.CopyTo(key[(providerUtf8.Length + 1)..]);
        key[providerUtf8.Length + 1 + holderUtf8.Length] = 0;
        modelUtf8.CopyTo(key[(providerUtf8.Length + 2 + holderUtf8.Length)..]);
        if (!_byBytes.TryGetValue(key, out Totals? totals))
        {
            totals = new Totals(Encoding.UTF8.GetString(providerUtf8), Encoding.UTF8.GetString(holderUtf8), Encoding.UTF8.GetString(modelUtf8));
            _groups.Add(key.ToArray(), totals);
        }

        totals.Records++;
        totals.UsageNpfh = checked(totals.UsageNpfh + usageNpfh);
        totals.CardMs = checked(totals.CardMs + cardMs);
    }

    /// <summary>
    /// devices × numerator × duration µs / (denominator × 1000), rounded down: in 64 bits when the
    /// product fits, which is every realistic record, else in 128.
    /// </summary>
    private static long CardMilliseconds(ulong deviceShares, ulong durationMicroseconds, ulong shareDenominator)
    {
        ulong divisor = shareDenominator * MicrosecondsPerMillisecond;
        ulong high = Math.BigMul(deviceShares, durationMicroseconds, out ulong low);
        return high == 0
            ? checked((long)(low / divisor))
            : checked((long)(ulong)(new UInt128(high, low) / divisor));
    }

    /// <summary>Adds another segment's totals of the same day into these; the other is not used afterwards.</summary>
    public void Absorb(DayTotals other)
    {
        foreach (var (key, theirs) in other._groups)
        {
            if (_groups.TryGetValue(key, out Totals? ours))
            {
                ours.Records += theirs.Records;
                ours.UsageNpfh = checked(ours.UsageNpfh + theirs.UsageNpfh);
                ours.CardMs = checked(ours.CardMs + theirs.CardMs);
            }
            else
            {
                _groups.Add(key, theirs);
            }
        }
    }

    /// <summary>The groups, in ordinal order of provider, holder and model.</summary>
    public List<(string Provider, string Holder, string Model, long Records, long UsageNpfh, long CardMs)> Groups() =>
        _groups.Values
            .OrderBy(t => t.Provider, StringComparer.Ordinal).ThenBy(t => t.Holder, StringComparer.Ordinal).ThenBy(t => t.Model, StringComparer.Ordinal)
            .Select(t => (t.Provider, t.Holder, t.Model, t.Records, t.UsageNpfh, t.CardMs))
            .ToList();

    private sealed class Totals(string provider, string holder, string model)
    {
        public string Provider { get; } = provider;

        public string Holder { get; } = holder;

        public string Model { get; } = model;

        public long Records { get; set; }

        public long UsageNpfh { get; set; }

        public long CardMs { get; set; }
    }

    /// <summary>Byte keys compared by content, looked up by a span without copying it.</summary>
    private sealed class KeyComparer : IEqualityComparer<byte[]>, IAlternateEqualityComparer<ReadOnlySpan<byte>, byte[]>
    {
        public static readonly KeyComparer Instance = new();

        public bool Equals(byte[]? x, byte[]? y) => x is null ? y is null : y is not null && x.AsSpan().SequenceEqual(y);

        public int GetHashCode(byte[] obj) => GetHashCode((ReadOnlySpan<byte>)obj);

        public bool Equals(ReadOnlySpan<byte> alternate, byte[] other) => alternate.SequenceEqual(other);

        public int GetHashCode(ReadOnlySpan<byte> alternate)
        {
            var hash = default(HashCode);
            hash.AddBytes(alternate);
            return hash.ToHashCode();
        }

        public byte[] Create(ReadOnlySpan<byte> alternate) => alternate.ToArray();
    }
}
