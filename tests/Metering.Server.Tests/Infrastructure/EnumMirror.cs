namespace Metering.Server.Tests.Infrastructure;

/// <summary>
/// An engine enum the server maps to a generated one by value: both must hold the same names at
/// the same numbers, in both directions, or a reason would reach the wire under another name.
/// </summary>
public static class EnumMirror
{
    public static void AssertMirrors<TEngine, TWire>()
        where TEngine : struct, Enum
        where TWire : struct, Enum
    {
        foreach (TEngine value in Enum.GetValues<TEngine>())
        {
            Assert.True(Enum.TryParse(value.ToString(), out TWire wire), $"{typeof(TWire).Name} has no member named {value}");
            Assert.Equal(Convert.ToInt32(value, System.Globalization.CultureInfo.InvariantCulture), Convert.ToInt32(wire, System.Globalization.CultureInfo.InvariantCulture));
        }

        foreach (TWire value in Enum.GetValues<TWire>())
        {
            Assert.True(Enum.TryParse(value.ToString(), out TEngine engine), $"{typeof(TEngine).Name} has no member named {value}");
            Assert.Equal(Convert.ToInt32(value, System.Globalization.CultureInfo.InvariantCulture), Convert.ToInt32(engine, System.Globalization.CultureInfo.InvariantCulture));
        }
    }
}
