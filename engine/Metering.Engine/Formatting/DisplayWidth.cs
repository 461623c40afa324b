namespace Metering.Engine.Formatting;

/// <summary>
/// How many columns a terminal or a monospaced page gives a text: Chinese characters and other
/// wide forms take two. The CLI's tables and the text statements align their columns with it.
/// </summary>
public static class DisplayWidth
{
    public static int Of(string text)
    {
        int width = 0;
        foreach (char c in text)
        {
            width += c is (>= '\u1100' and <= '\u115F') or (>= '\u2E80' and <= '\uA4CF') or (>= '\uAC00' and <= '\uD7A3')
                or (>= '\uF900' and <= '\uFAFF') or (>= '\uFE30' and <= '\uFE4F') or (>= '\uFF00' and <= '\uFF60') or (>= '\uFFE0' and <= '\uFFE6') ? 2 : 1;
        }

        return width;
    }

    /// <summary>The text padded with spaces to <paramref name="width"/> columns, on the left when <paramref name="alignRight"/>.</summary>
    public static string Pad(string text, int width, bool alignRight)
    {
        string padding = new(' ', Math.Max(0, width - Of(text)));
        return alignRight ? padding + text : text + padding;
    }
}
