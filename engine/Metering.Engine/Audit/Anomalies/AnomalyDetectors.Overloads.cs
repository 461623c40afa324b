using System.Globalization;
using Dapper;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Audit;

/// <summary>
/// The parts the detectors share: the exact sweep of devices × share over time, the
/// rendering of shares and instants, and the loading of one record as evidence.
/// </summary>
public sealed partial class AnomalyDetectors
{
    /// <summary>A record's running time, or the part of it inside one stretch; the record itself is the evidence.</summary>
    private readonly record struct Span(Usage Record, long StartMs, long EndMs);

    /// <summary>A run of time over a limit: from when the sum first exceeded it until it fell back, the peak, and the records at the peak.</summary>
    private sealed record Overload(long FromMs, long UntilMs, long PeakAtMs, Int128 PeakUnits, long UnitsPerDevice, List<Usage> Peak);

    /// <summary>
    /// Sweeps the spans in start order, keeping the running ones in a heap by end, and yields
    /// every run during which the sum of devices × share exceeds <paramref name="limit"/> devices.
    /// Shares are summed exactly in units of 1/L device, L the least common multiple of the
    /// denominators present.
    /// </summary>
    private static IEnumerable<Overload> Overloads(List<Span> spans, Func<Usage, uint> devices, long limit)
    {
        long unitsPerDevice = 1;
        foreach (uint denominator in spans.Select(s => s.Record.ShareDenominator).Distinct())
        {
            unitsPerDevice = checked(unitsPerDevice / (long)Gcd((ulong)unitsPerDevice, denominator) * denominator);
            if (unitsPerDevice > 1_000_000_000_000)
            {
                throw new AuditLimitExceededException("The share denominators at one site and model have a common multiple above 10^12; the exact capacity sweep refuses them.");
            }
        }

        Int128 Units(Usage r) => (Int128)devices(r) * r.ShareNumerator * (unitsPerDevice / r.ShareDenominator);
        Int128 limitUnits = (Int128)limit * unitsPerDevice;
        spans.Sort((a, b) => a.StartMs != b.StartMs ? a.StartMs.CompareTo(b.StartMs) : a.EndMs.CompareTo(b.EndMs));
        var running = new PriorityQueue<Usage, long>();
        Int128 sum = 0;
        Overload? open = null;
        Int128 peak = 0;
        long peakAt = 0;
        List<Usage>? peakSet = null;

        // Ends at or before the next start come first: a record ending when another starts does not overlap it.
        IEnumerable<Overload> EndUntil(long timeMs)
        {
            while (running.TryPeek(out Usage? ending, out long endMs) && endMs <= timeMs)
            {
                running.Dequeue();
                sum -= Units(ending);
                if (open is not null && sum <= limitUnits)
                {
                    yield return open with { UntilMs = endMs, PeakAtMs = peakAt, PeakUnits = peak, Peak = peakSet! };
                    open = null;
                }
            }
        }

        foreach (Span span in spans)
        {
            foreach (Overload closed in EndUntil(span.StartMs))
            {
                yield return closed;
            }

            running.Enqueue(span.Record, span.EndMs);
            sum += Units(span.Record);
            if (sum > limitUnits)
            {
                if (open is null)
                {
                    open = new Overload(span.StartMs, 0, span.StartMs, sum, unitsPerDevice, []);
                    peak = 0;
                }

                if (sum > peak)
                {
                    peak = sum;
                    peakAt = span.StartMs;
                    peakSet = running.UnorderedItems.Select(i => i.Element).OrderBy(r => r.StartMs).ThenBy(r => r.StreamId, StringComparer.Ordinal).ThenBy(r => r.Sequence).ToList();
                }
            }
        }

        foreach (Overload closed in EndUntil(long.MaxValue))
        {
            yield return closed;
        }
    }

    private static ulong Gcd(ulong a, ulong b)
    {
        while (b != 0)
        {
            (a, b) = (b, a % b);
        }

        return a;
    }

    /// <summary>Units of 1/L device as whole devices and a remainder fraction ("12", "3 5/7").</summary>
    private static string Shares(Int128 units, long unitsPerDevice)
    {
        Int128 whole = units / unitsPerDevice;
        Int128 rest = units % unitsPerDevice;
        if (rest == 0)
        {
            return whole.ToString(CultureInfo.InvariantCulture);
        }

        long divisor = (long)Gcd((ulong)rest, (ulong)unitsPerDevice);
        return string.Create(CultureInfo.InvariantCulture, $"{whole} {rest / divisor}/{unitsPerDevice / divisor}");
    }

    private static async Task<List<EvidenceRow>> EvidenceAsync(NpgsqlConnection connection, string providerId, string streamId, ulong sequence, CancellationToken cancellationToken)
    {
        var rows = await connection.QueryAsync<(string Job, string Holder, string Model, int Count, int Num, int Den, DateTime Start, DateTime End, string Site, string[]? Uuids, long Usage, int? SmActive)>(new CommandDefinition("""
            SELECT job_id, holder_code, device_model, device_count, share_numerator, share_denominator, start_at, end_at, site, device_uuids, usage_npfh, sm_active_bp
            FROM usage_records WHERE provider_id = @providerId AND stream_id = @streamId AND sequence = @sequence
            """, new { providerId, streamId, sequence = (long)sequence }, cancellationToken: cancellationToken));
        return rows.Select(r => new EvidenceRow(streamId, sequence, r.Job, r.Holder, r.Model, (uint)r.Count, (uint)r.Num, (uint)r.Den,
            UnixMs.FromDateTime(r.Start), UnixMs.FromDateTime(r.End), r.Site, r.Uuids ?? [], r.Usage, r.SmActive is int bp ? (uint)bp : null)).ToList();
    }

    private static string Time(long unixMs) =>
        DateTimeOffset.FromUnixTimeMilliseconds(unixMs).ToOffset(ShanghaiTime.Offset).ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture) + " Asia/Shanghai";
}
