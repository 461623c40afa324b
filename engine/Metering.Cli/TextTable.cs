namespace Metering.Cli;

/// <summary>A plain-text table with a header rule; numbers are right-aligned.</summary>
internal sealed class TextTable(params string[] headers)
{
    private readonly List<string[]> _rows = [];

    public void Add(params string[] cells) => _rows.Add(cells);

    public void Write(TextWriter output)
    {
        int[] widths = headers.Select((h, i) => Math.Max(h.Length, _rows.Select(r => r[i].Length).DefaultIfEmpty(0).Max())).ToArray();
        output.WriteLine(string.Join("  ", headers.Select((h, i) => h.PadRight(widths[i]))).TrimEnd());
        output.WriteLine(string.Join("  ", widths.Select(w => new string('-', w))));
        foreach (string[] row in _rows)
        {
            output.WriteLine(string.Join("  ", row.Select((cell, i) => IsNumber(cell) ? cell.PadLeft(widths[i]) : cell.PadRight(widths[i]))).TrimEnd());
        }
    }

    private static bool IsNumber(string cell) => cell.Length > 0 && cell.All(c => char.IsAsciiDigit(c) || c is ',' or '.');
}
