using System.Globalization;
using Dapper;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Vouchers;

// The checks of a claim that stand apart from the filing, and how a refusal names a record.
public sealed partial class Redemptions
{
    private static string[]? CheckSelector(ClaimFiling request)
    {
        bool byJobs = request.JobIds.Count > 0;
        bool byPeriod = request.PeriodFromUnixMs != 0 || request.PeriodUntilUnixMs != 0;
        if (byJobs == byPeriod)
        {
            throw VoucherBook.Invalid("a claim names its usage by job_ids or by a period (period_from_unix_ms, period_until_unix_ms), not both and not neither");
        }

        if (byPeriod)
        {
            if (request.PeriodUntilUnixMs <= request.PeriodFromUnixMs || request.PeriodUntilUnixMs - request.PeriodFromUnixMs > TimeSpan.FromDays(366).TotalMilliseconds)
            {
                throw VoucherBook.Invalid("the period must end after it starts and span at most 366 days");
            }

            return null;
        }

        if (request.JobIds.Count > JobIdsMax || request.JobIds.Any(j => j.Length is 0 or > JobIdLengthMax))
        {
            throw VoucherBook.Invalid($"a claim names 1 to {JobIdsMax} job ids of 1 to {JobIdLengthMax} characters");
        }

        if (request.ProgrammeYear != 0 && request.ProgrammeYear is < 2024 or > 2100)
        {
            throw VoucherBook.Invalid("programme_year must be 2024 to 2100, or 0 for this year");
        }

        return request.JobIds.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToArray();
    }

    private static async Task CheckNotRedeemedAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string providerId, List<ClaimedRecord> records)
    {
        var redeemed = await connection.QueryFirstOrDefaultAsync<(string Stream, long Sequence, long Claim)?>("""
            SELECT r.stream_id, r.sequence, r.claim_id FROM redeemed_usage r JOIN unnest(@streams, @sequences) AS u(s, q) ON r.stream_id = u.s AND r.sequence = u.q
            WHERE r.provider_id = @provider ORDER BY r.stream_id, r.sequence LIMIT 1
            """, new { provider = providerId, streams = records.Select(r => r.StreamId).ToArray(), sequences = records.Select(r => r.Sequence).ToArray() }, transaction);
        if (redeemed is { } r)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.UsageAlreadyRedeemed, $"record {r.Sequence} of stream {r.Stream} is already redeemed by claim {r.Claim}",
                new Dictionary<string, string>
                {
                    ["stream_id"] = r.Stream,
                    ["sequence"] = r.Sequence.ToString(CultureInfo.InvariantCulture),
                    ["claim_id"] = r.Claim.ToString(CultureInfo.InvariantCulture),
                });
        }
    }

    private static DateOnly DayOf(long unixMs) => ShanghaiTime.DateOf(DateTimeOffset.FromUnixTimeMilliseconds(unixMs));

    private static string Time(long unixMs) => ShanghaiTime.Describe(DateTimeOffset.FromUnixTimeMilliseconds(unixMs));

    private static string Describe(ClaimedRecord record) => $"record {record.Sequence} of stream {record.StreamId} (job {record.JobId})";

    private static Dictionary<string, string> Identify(ClaimedRecord record) => new()
    {
        ["stream_id"] = record.StreamId,
        ["sequence"] = record.Sequence.ToString(CultureInfo.InvariantCulture),
        ["job_id"] = record.JobId,
    };
}
