namespace Metering.Engine.Identity;

/// <summary>
/// The 18-character unified social credit code (统一社会信用代码) of GB 32100-2015.
/// Characters come from a 31-symbol alphabet (digits and upper-case letters without I, O, S, V, Z);
/// the 18th is a check character over the first 17, weighted by 3^(i) mod 31.
/// </summary>
public static class CreditCode
{
    public const int Length = 18;

    private const string Alphabet = "0123456789ABCDEFGHJKLMNPQRTUWXY";

    private static readonly int[] Weights = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28];

    /// <summary>True when the code has 18 symbols of the alphabet and a correct check character.</summary>
    public static bool IsValid(ReadOnlySpan<char> code)
    {
        if (code.Length != Length)
        {
            return false;
        }

        int check = ComputeCheckValue(code[..17]);
        return check >= 0 && ValueOf(code[17]) == check;
    }

    /// <summary>The check character for a 17-symbol body, or throws if the body has a foreign symbol.</summary>
    public static char CheckCharacter(ReadOnlySpan<char> body)
    {
        if (body.Length != 17)
        {
            throw new ArgumentException("A credit code body has 17 characters.", nameof(body));
        }

        int check = ComputeCheckValue(body);
        if (check < 0)
        {
            throw new ArgumentException($"'{body}' has a character outside the GB 32100-2015 alphabet.", nameof(body));
        }

        return Alphabet[check];
    }

    /// <summary>Completes a 17-symbol body with its check character.</summary>
    public static string Complete(string body) => body + CheckCharacter(body);

    private static int ComputeCheckValue(ReadOnlySpan<char> body)
    {
        int sum = 0;
        for (int i = 0; i < body.Length; i++)
        {
            int value = ValueOf(body[i]);
            if (value < 0)
            {
                return -1;
            }

            sum += value * Weights[i];
        }

        int check = 31 - (sum % 31);
        return check == 31 ? 0 : check;
    }

    private static int ValueOf(char c)
    {
        if (c is >= '0' and <= '9')
        {
            return c - '0';
        }

        // Letters map to 10..30 in alphabet order, skipping I, O, S, V and Z.
        return c is >= 'A' and <= 'Y' ? LetterValues[c - 'A'] : -1;
    }

    private static readonly sbyte[] LetterValues = BuildLetterValues();

    private static sbyte[] BuildLetterValues()
    {
        var values = new sbyte[25];
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = (sbyte)Alphabet.IndexOf((char)('A' + i), StringComparison.Ordinal);
        }

        return values;
    }
}
