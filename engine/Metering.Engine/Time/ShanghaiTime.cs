using System.Globalization;

namespace Metering.Engine.Time;

/// <summary>
/// The one place for the engine's time rules. The guide's dates are Beijing time, which has no
/// daylight saving, so a fixed +08:00 offset is exact; PostgreSQL hands timestamps back as UTC
/// <see cref="DateTime"/> values, which become instants here.
/// </summary>
public static class ShanghaiTime
{
    public static readonly TimeSpan Offset = TimeSpan.FromHours(8);

    public static DateOnly DateOf(DateTimeOffset instant) => DateOnly.FromDateTime(instant.ToOffset(Offset).DateTime);

    /// <summary>The first instant of a local date.</summary>
    public static DateTimeOffset StartOf(DateOnly date) => new(date.ToDateTime(TimeOnly.MinValue), Offset);

    /// <summary>An instant read from a <c>timestamptz</c> column, which Npgsql returns as a UTC <see cref="DateTime"/>.</summary>
    public static DateTimeOffset Instant(DateTime utc) => new(DateTime.SpecifyKind(utc, DateTimeKind.Utc));

    /// <summary>A calendar date as the protocol and the documents write it: yyyy-MM-dd.</summary>
    public static string IsoDate(DateOnly date) => date.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture);

    /// <summary>An instant as local minutes, for messages that say when something happens: yyyy-MM-dd HH:mm.</summary>
    public static string LocalMinutes(DateTimeOffset instant) => instant.ToOffset(Offset).ToString("yyyy-MM-dd HH:mm", CultureInfo.InvariantCulture);

    /// <summary>Local minutes with the zone named, as refusal messages state a deadline.</summary>
    public static string Describe(DateTimeOffset instant) => LocalMinutes(instant) + " Asia/Shanghai";
}
