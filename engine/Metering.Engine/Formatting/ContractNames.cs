using System.Text;

namespace Metering.Engine.Formatting;

/// <summary>
/// The UPPER_SNAKE spelling the contract gives an enum member (UNKNOWN_DEVICE_MODEL, INVALID_UTF8)
/// for an engine enum that mirrors a wire enum by name. Raw-log line errors are stored and reported
/// under that name, and the engine never reads the generated descriptors to learn it; a server test
/// holds every spelling equal to the descriptor's.
/// </summary>
internal static class ContractNames
{
    /// <summary>
    /// The names of <typeparamref name="TEnum"/>'s members indexed by value. Value 0 takes
    /// <paramref name="unspecifiedName"/>, since the contract prefixes it with the enum's own name.
    /// </summary>
    public static string[] Of<TEnum>(string unspecifiedName)
        where TEnum : struct, Enum
    {
        TEnum[] values = Enum.GetValues<TEnum>();
        var names = new string[values.Max(v => Convert.ToInt32(v, System.Globalization.CultureInfo.InvariantCulture)) + 1];
        foreach (TEnum value in values)
        {
            int number = Convert.ToInt32(value, System.Globalization.CultureInfo.InvariantCulture);
            names[number] = number == 0 ? unspecifiedName : UpperSnake(value.ToString());
        }

        return names;
    }

    private static string UpperSnake(string pascal)
    {
        var snake = new StringBuilder(pascal.Length + 8);
        for (int i = 0; i < pascal.Length; i++)
        {
            char c = pascal[i];
            if (i > 0 && char.IsUpper(c))
            {
                snake.Append('_');
            }

            snake.Append(char.ToUpperInvariant(c));
        }

        return snake.ToString();
    }
}
