using System.Globalization;
using Metering.Engine.Registry;
using Metering.Engine.Time;

namespace Metering.Cli;

/// <summary>How every command shows an instant: Asia/Shanghai wall time to the minute.</summary>
internal static class LocalTime
{
    public static string Minutes(DateTimeOffset instant) => instant.ToOffset(ShanghaiTime.Offset).ToString("yyyy-MM-dd HH:mm", CultureInfo.InvariantCulture);

    public static string Minutes(long unixMs) => Minutes(DateTimeOffset.FromUnixTimeMilliseconds(unixMs));
}
