namespace Metering.Cli;

/// <summary>A plain-text table with a header rule; numbers are right-aligned.</summary>
internal sealed class TextTable(params string[] headers)
{
    private readonly List<string[]> _rows = [];

    public void Add(params string[] cells) => _rows.Add(cells);

    public void Write(TextWriter output)
    {
        int[] widths = headers.Select((h, i) => Math.Max(Width(h), _rows.Select(r => Width(r[i])).DefaultIfEmpty(0).Max())).ToArray();
        output.WriteLine(string.Join("  ", headers.Select((h, i) => Pad(h, widths[i], left: false))).TrimEnd());
        output.WriteLine(string.Join("  ", widths.Select(w => new string('-', w))));
        foreach (string[] row in _rows)
        {
            output.WriteLine(string.Join("  ", row.Select((cell, i) => Pad(cell, widths[i], left: IsNumber(cell)))).TrimEnd());
        }
    }

    /// <summary>Columns a terminal gives the text: Chinese characters and other wide forms take two.</summary>
    internal static int Width(string text)
    {
        int width = 0;
        foreach (char c in text)
        {
            width += c is (>= '\u1100' and <= '\u115F') or (>= '\u2E80' and <= '\uA4CF') or (>= '\uAC00' and <= '\uD7A3')
                or (>= '\uF900' and <= '\uFAFF') or (>= '\uFE30' and <= '\uFE4F') or (>= '\uFF00' and <= '\uFF60') or (>= '\uFFE0' and <= '\uFFE6') ? 2 : 1;
        }

        return width;
    }

    private static string Pad(string text, int width, bool left)
    {
        string padding = new(' ', Math.Max(0, width - Width(text)));
        return left ? padding + text : text + padding;
    }

    private static bool IsNumber(string cell) => cell.Length > 0 && cell.All(c => char.IsAsciiDigit(c) || c is ',' or '.');
}
