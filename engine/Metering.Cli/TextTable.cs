using Metering.Engine.Formatting;

namespace Metering.Cli;

/// <summary>
/// A plain-text table with a header rule; numbers are right-aligned. Headers are labels: where
/// the reader prefers Chinese, each one the label table knows is printed in Chinese.
/// </summary>
internal sealed class TextTable(params string[] headers)
{
    private readonly string[] _headers = [.. headers.Select(Labels.Of)];
    private readonly List<string[]> _rows = [];

    public void Add(params string[] cells) => _rows.Add(cells);

    public void Write(TextWriter output)
    {
        int[] widths = _headers.Select((h, i) => Math.Max(DisplayWidth.Of(h), _rows.Select(r => DisplayWidth.Of(r[i])).DefaultIfEmpty(0).Max())).ToArray();
        output.WriteLine(string.Join("  ", _headers.Select((h, i) => DisplayWidth.Pad(h, widths[i], alignRight: false))).TrimEnd());
        output.WriteLine(string.Join("  ", widths.Select(w => new string('-', w))));
        foreach (string[] row in _rows)
        {
            output.WriteLine(string.Join("  ", row.Select((cell, i) => DisplayWidth.Pad(cell, widths[i], alignRight: IsNumber(cell)))).TrimEnd());
        }
    }

    private static bool IsNumber(string cell) => cell.Length > 0 && cell.All(c => char.IsAsciiDigit(c) || c is ',' or '.');
}
