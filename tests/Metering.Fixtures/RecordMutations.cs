using Metering.Protocol.V1;

namespace Metering.Fixtures;

/// <summary>Named ways to make a valid record invalid, shared by the unit and integration tests.</summary>
internal static class RecordMutations
{
    public static UsageRecord Apply(UsageRecord record, string mutation, long nowMs)
    {
        switch (mutation)
        {
            case "unknown model": record.DeviceModel = "H100"; break;
            case "sparse-looking model key": record.DeviceModel = "H100-SXM-SPARSE"; break;
            case "end equals start": record.EndUnixMs = record.StartUnixMs; break;
            case "end before start": record.EndUnixMs = record.StartUnixMs - 1; break;
            case "longer than 24 h":
                record.StartUnixMs -= 86_400_000;
                record.EndUnixMs = record.StartUnixMs + 86_400_001;
                break;
            case "end 6 minutes in the future":
                record.EndUnixMs = nowMs + 360_000;
                record.StartUnixMs = nowMs;
                break;
            case "start before 2024":
                record.StartUnixMs = new DateTimeOffset(2023, 12, 31, 23, 0, 0, TimeSpan.Zero).ToUnixTimeMilliseconds();
                record.EndUnixMs = record.StartUnixMs + 60_000;
                break;
            case "zero devices": record.DeviceCount = 0; break;
            case "too many devices": record.DeviceCount = 16_385; break;
            case "zero share": record.ShareNumerator = 0; break;
            case "share above one": record.ShareNumerator = 2; break;
            case "zero denominator": record.ShareDenominator = 0; break;
            case "denominator above 1000":
                record.ShareNumerator = 1;
                record.ShareDenominator = 1001;
                break;
            case "holder check character wrong": record.HolderCode = "9144030071526726XH"; break;
            case "holder too short": record.HolderCode = "9144030071526726X"; break;
            case "empty job id": record.JobId = ""; break;
            case "job id of 129 bytes": record.JobId = new string('j', 129); break;
            case "empty site": record.Site = ""; break;
            case "NUL in job id": record.JobId = "job\0one"; break;
            case "NUL in site": record.Site = "sz\0"; break;
            case "more UUIDs than devices":
                record.DeviceCount = 1;
                break;
            case "empty UUID": record.DeviceUuids[0] = ""; break;
            case "energy above 5 kW per device":
                // 8 devices × 5,000 W × 5 min = 3,333,333 mWh is the bound.
                record.EnergyMwh = 3_333_334;
                break;
            case "SM activity of 10001 basis points": record.SmActiveBp = 10_001; break;
            case "SM activity of the largest u32": record.SmActiveBp = uint.MaxValue; break;
            default: throw new ArgumentException($"Unknown mutation {mutation}", nameof(mutation));
        }

        return record;
    }
}
