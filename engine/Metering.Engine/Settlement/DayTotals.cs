using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Text;

namespace Metering.Engine.Settlement;

/// <summary>
/// The day's usage summed per provider, holder and device model from the records of the day's
/// read (<see cref="AddRecords"/>), in integers only: records, nPFh and card-milliseconds, each
/// record's card time by the same rule as the set-based aggregation
/// (<see cref="DailySettlement.DayAggregationSql"/>): devices × share numerator × duration,
/// divided by the share denominator, rounded down once per record (<see cref="CardMilliseconds(long, int, long, ReadOnlySpan{byte})"/>). A group is looked up by the run's UTF-8 bytes; a new group
/// decodes its names once. Runs come grouped by provider, so the provider is compared with the
/// last run's and looked up only when it changes; within a provider the holder is looked up, and
/// the holder's few models are searched in turn. A reader that splits the day keeps one per
/// segment and adds the others into the first (<see cref="Absorb"/>) before it asks for the
/// groups, which are sorted once. Not thread-safe.
/// <para>
/// A run's attributes, as the read sends them (<see cref="RunAttributes"/>): one column per
/// attribute, the run's records in the same order in each: their durations (binary intervals,
/// <see cref="IntervalBytes"/> each), their nPFh (int8), their device count × share numerator
/// (int8) and their share denominators (int4), all big-endian and back to back; then their
/// holders and their device models, each column UTF-8 text joined by line feeds.
/// </para>
/// <para>Its per-record loops are compiled fully optimised at first call, as <see cref="Audit.Sha256Lanes"/> says why.</para>
/// </summary>
internal sealed class DayTotals
{
    /// <summary>Microseconds in a millisecond: durations arrive in microseconds and card time is counted in milliseconds.</summary>
    private const long MicrosecondsPerMillisecond = 1_000;

    private const long MicrosecondsPerDay = 86_400_000_000;

    /// <summary>Bytes of one duration: PostgreSQL's binary interval, microseconds (int64), days (int32) and months (int32), big-endian.</summary>
    public const int IntervalBytes = 16;

    private readonly Dictionary<byte[], ProviderTotals> _providers = new(KeyComparer.Instance);
    private ProviderTotals? _current;

    /// <summary>
    /// The card time of a run of <paramref name="records"/> records of one device share:
    /// devices × numerator × duration µs / (denominator × 1000) per record, rounded down once per
    /// record, as the set-based aggregation's numeric <c>div</c> does. The durations are the
    /// records' <c>end_at - start_at</c> as binary intervals, which a difference of two
    /// timestamps gives in days and microseconds, never months.
    /// </summary>
    /// <exception cref="InvalidDataException">A count, share or duration the table's checks would have refused, or durations that are not one interval per record.</exception>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static long CardMilliseconds(long deviceShares, int shareDenominator, long records, ReadOnlySpan<byte> durations)
    {
        if (deviceShares <= 0 || shareDenominator <= 0 || durations.Length != records * IntervalBytes)
        {
            throw new InvalidDataException($"A run of {records} record(s) has {deviceShares} device share(s) over {shareDenominator} and {durations.Length} bytes of durations; the table's checks allow no run like it.");
        }

        long cardMs = 0;
        for (int at = 0; at < durations.Length; at += IntervalBytes)
        {
            long microseconds = BinaryPrimitives.ReadInt64BigEndian(durations[at..]);
            int days = BinaryPrimitives.ReadInt32BigEndian(durations[(at + 8)..]);
            int months = BinaryPrimitives.ReadInt32BigEndian(durations[(at + 12)..]);
            long durationMicroseconds = months == 0 ? checked(days * MicrosecondsPerDay + microseconds) : 0;
            if (durationMicroseconds <= 0)
            {
                throw new InvalidDataException($"A record lasts {months} month(s), {days} day(s) and {microseconds} µs; the table's checks allow only a positive duration in days and microseconds.");
            }

            cardMs = checked(cardMs + CardMilliseconds((ulong)deviceShares, (ulong)durationMicroseconds, (ulong)shareDenominator));
        }

        return cardMs;
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

    /// <summary>The byte that joins a run's holders, and its models, in their text columns: neither a credit code nor a catalog model holds one.</summary>
    public const byte NameSeparator = (byte)'\n';

    /// <summary>
    /// Adds a run's <paramref name="records"/> records of one provider from their attributes
    /// (the class's summary), each to the totals of its holder and model, with its card time
    /// rounded down once (<see cref="CardMilliseconds(long, int, long, ReadOnlySpan{byte})"/>).
    /// A run of one stream tends to repeat its holder and model, so the last record's totals
    /// are tried first.
    /// </summary>
    /// <exception cref="InvalidDataException">The attributes are not <paramref name="records"/> records whose nPFh sum to <paramref name="usageNpfh"/> (a name holding a line feed among them), or hold a value the table's checks would have refused.</exception>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void AddRecords(ReadOnlySpan<byte> providerUtf8, long records, long usageNpfh, RunAttributes attributes)
    {
        if (records is < 1 or > int.MaxValue / IntervalBytes || attributes.Durations.Length != records * IntervalBytes || attributes.Usages.Length != records * sizeof(long)
            || attributes.DeviceShares.Length != records * sizeof(long) || attributes.Denominators.Length != records * sizeof(int))
        {
            throw new InvalidDataException($"A run of {Encoding.UTF8.GetString(providerUtf8)} counts {records} record(s); its attributes hold {attributes.Durations.Length} bytes of durations, "
                + $"{attributes.Usages.Length} of nPFh, {attributes.DeviceShares.Length} of device shares and {attributes.Denominators.Length} of denominators.");
        }

        int count = (int)records;
        ReadOnlySpan<byte> holders = attributes.Holders;
        ReadOnlySpan<byte> models = attributes.Models;
        long usageSeen = 0;
        Totals? last = null;
        for (int i = 0; i < count; i++)
        {
            bool final = i == count - 1;
            ReadOnlySpan<byte> holderUtf8 = NextName(ref holders, final, providerUtf8, records, "holders");
            ReadOnlySpan<byte> modelUtf8 = NextName(ref models, final, providerUtf8, records, "models");
            long recordNpfh = BinaryPrimitives.ReadInt64BigEndian(attributes.Usages[(i * sizeof(long))..]);
            long deviceShares = BinaryPrimitives.ReadInt64BigEndian(attributes.DeviceShares[(i * sizeof(long))..]);
            int shareDenominator = BinaryPrimitives.ReadInt32BigEndian(attributes.Denominators[(i * sizeof(int))..]);
            long cardMs = CardMilliseconds(deviceShares, shareDenominator, 1, attributes.Durations.Slice(i * IntervalBytes, IntervalBytes));
            if (recordNpfh < 0)
            {
                throw new InvalidDataException($"Record {i + 1} of a run of {Encoding.UTF8.GetString(providerUtf8)} has {recordNpfh} nPFh; the table's checks allow no negative usage.");
            }

            if (last is null || !holderUtf8.SequenceEqual(last.HolderUtf8) || !modelUtf8.SequenceEqual(last.ModelUtf8))
            {
                ProviderTotals provider = _current is { } current && providerUtf8.SequenceEqual(current.Utf8) ? current : Switch(providerUtf8);
                last = provider.Find(holderUtf8, modelUtf8);
            }

            Sum(last, 1, recordNpfh, cardMs);
            usageSeen = checked(usageSeen + recordNpfh);
        }

        if (usageSeen != usageNpfh)
        {
            throw new InvalidDataException($"A run of {Encoding.UTF8.GetString(providerUtf8)} counts {usageNpfh} nPFh; its records' attributes hold {usageSeen}.");
        }
    }

    /// <summary>
    /// The next name of a text column of a run's names joined by <see cref="NameSeparator"/>,
    /// taken off its front: the last record's is all that is left, and holds no separator.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static ReadOnlySpan<byte> NextName(ref ReadOnlySpan<byte> names, bool final, ReadOnlySpan<byte> providerUtf8, long records, string column)
    {
        int end = names.IndexOf(NameSeparator);
        if (final ? end >= 0 : end < 0)
        {
            throw new InvalidDataException($"A run of {Encoding.UTF8.GetString(providerUtf8)} counts {records} record(s); its {column} are {(final ? "more" : "fewer")} (or one of them holds a line feed).");
        }

        ReadOnlySpan<byte> name = final ? names : names[..end];
        names = final ? [] : names[(end + 1)..];
        return name;
    }

    private static void Sum(Totals totals, long records, long usageNpfh, long cardMs)
    {
        totals.Records += records;
        totals.UsageNpfh = checked(totals.UsageNpfh + usageNpfh);
        totals.CardMs = checked(totals.CardMs + cardMs);
    }

    private ProviderTotals Switch(ReadOnlySpan<byte> providerUtf8)
    {
        if (!_providers.GetAlternateLookup<ReadOnlySpan<byte>>().TryGetValue(providerUtf8, out ProviderTotals? provider))
        {
            provider = new ProviderTotals(providerUtf8.ToArray());
            _providers.Add(provider.Utf8, provider);
        }

        _current = provider;
        return provider;
    }

    /// <summary>Adds another segment's totals of the same day into these; the other is not used afterwards.</summary>
    public void Absorb(DayTotals other)
    {
        foreach (ProviderTotals theirs in other._providers.Values)
        {
            if (!_providers.TryGetValue(theirs.Utf8, out ProviderTotals? ours))
            {
                _providers.Add(theirs.Utf8, theirs);
                continue;
            }

            foreach (var (holder, models) in theirs.Holders)
            {
                foreach (Totals model in models)
                {
                    Totals into = ours.Find(holder, model.ModelUtf8);
                    into.Records += model.Records;
                    into.UsageNpfh = checked(into.UsageNpfh + model.UsageNpfh);
                    into.CardMs = checked(into.CardMs + model.CardMs);
                }
            }
        }
    }

    /// <summary>The groups, in ordinal order of provider, holder and model.</summary>
    public List<(string Provider, string Holder, string Model, long Records, long UsageNpfh, long CardMs)> Groups() =>
        _providers.Values.SelectMany(p => p.Holders.Values.SelectMany(models => models))
            .OrderBy(t => t.Provider, StringComparer.Ordinal).ThenBy(t => t.Holder, StringComparer.Ordinal).ThenBy(t => t.Model, StringComparer.Ordinal)
            .Select(t => (t.Provider, t.Holder, t.Model, t.Records, t.UsageNpfh, t.CardMs))
            .ToList();

    /// <summary>One provider's groups: by holder, then a short list of the holder's models.</summary>
    private sealed class ProviderTotals(byte[] utf8)
    {
        public byte[] Utf8 { get; } = utf8;

        public string Id { get; } = Encoding.UTF8.GetString(utf8);

        public Dictionary<byte[], List<Totals>> Holders { get; } = new(KeyComparer.Instance);

        public Totals Find(ReadOnlySpan<byte> holderUtf8, ReadOnlySpan<byte> modelUtf8)
        {
            if (!Holders.GetAlternateLookup<ReadOnlySpan<byte>>().TryGetValue(holderUtf8, out List<Totals>? models))
            {
                models = [];
                Holders.Add(holderUtf8.ToArray(), models);
            }

            foreach (Totals totals in models)
            {
                if (modelUtf8.SequenceEqual(totals.ModelUtf8))
                {
                    return totals;
                }
            }

            var added = new Totals(Id, holderUtf8.ToArray(), modelUtf8.ToArray());
            models.Add(added);
            return added;
        }
    }

    private sealed class Totals(string provider, byte[] holderUtf8, byte[] modelUtf8)
    {
        public string Provider { get; } = provider;

        public byte[] HolderUtf8 { get; } = holderUtf8;

        public string Holder { get; } = Encoding.UTF8.GetString(holderUtf8);

        public byte[] ModelUtf8 { get; } = modelUtf8;

        public string Model { get; } = Encoding.UTF8.GetString(modelUtf8);

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

/// <summary>
/// A run's record attributes as the day's read sends them, one column each, the records in the
/// same order in every column (<see cref="DayTotals"/>'s summary).
/// </summary>
internal readonly ref struct RunAttributes(ReadOnlySpan<byte> durations, ReadOnlySpan<byte> usages, ReadOnlySpan<byte> deviceShares, ReadOnlySpan<byte> denominators,
    ReadOnlySpan<byte> holders, ReadOnlySpan<byte> models)
{
    public ReadOnlySpan<byte> Durations { get; } = durations;

    public ReadOnlySpan<byte> Usages { get; } = usages;

    public ReadOnlySpan<byte> DeviceShares { get; } = deviceShares;

    public ReadOnlySpan<byte> Denominators { get; } = denominators;

    public ReadOnlySpan<byte> Holders { get; } = holders;

    public ReadOnlySpan<byte> Models { get; } = models;
}
