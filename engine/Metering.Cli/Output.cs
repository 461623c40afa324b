using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using Metering.Engine.Time;

namespace Metering.Cli;

/// <summary>How a command that prints rows prints them: `--output table|json|csv`.</summary>
internal enum OutputFormat
{
    /// <summary>The aligned text table people read; the default, unchanged by the other two.</summary>
    Table,

    /// <summary>One JSON array of objects (or one object) with stable camelCase names.</summary>
    Json,

    /// <summary>RFC 4180: a header row of the JSON names, CRLF line ends, UTF-8 without a byte-order mark.</summary>
    Csv,
}

/// <summary>The one `--output` option every row-printing command shares.</summary>
internal static class OutputOption
{
    public const string Name = "--output";

    private static readonly string[] Spellings = ["table", "json", "csv"];

    /// <summary>
    /// `--output`: an unknown value is a parse error, so it exits with 2 before any call, as every
    /// other malformed option does. <paramref name="aliasForTable"/> is a spelling kept for scripts
    /// written before the option was shared (audit anomalies said `text`).
    /// </summary>
    public static Option<OutputFormat> Create(string? aliasForTable = null)
    {
        var option = new Option<OutputFormat>(Name)
        {
            Description = "table (default, for people), json (one JSON array or object, camelCase names, money as integer fen, "
                + "times ISO 8601 with their offset) or csv (RFC 4180 with a header row, the same names and values, UTF-8).",
            DefaultValueFactory = _ => OutputFormat.Table,
            CustomParser = result =>
            {
                string text = result.Tokens.Count == 1 ? result.Tokens[0].Value : "";
                int index = Array.IndexOf(Spellings, text);
                if (index >= 0)
                {
                    return (OutputFormat)index;
                }

                if (aliasForTable is not null && text == aliasForTable)
                {
                    return OutputFormat.Table;
                }

                result.AddError($"{Name} '{text}' is not one of {string.Join(", ", aliasForTable is null ? Spellings : [.. Spellings, aliasForTable])}");
                return OutputFormat.Table;
            },
        };
        option.CompletionSources.Add(Spellings);
        return option;
    }

    /// <summary>
    /// `--output` for a command that prints several sections (a holder with its contracts and
    /// vouchers): json is one object with a member per section; csv has one header row and so
    /// cannot hold them, and is refused as a usage error (exit 2) before any call.
    /// </summary>
    public static Option<OutputFormat> Sections(string command)
    {
        Option<OutputFormat> option = Create();
        option.Description = "table (default, for people) or json (one object with a member per section, camelCase names, money as integer fen, times ISO 8601 with their offset). "
            + "csv is refused: the sections have different columns.";
        option.Validators.Add(result =>
        {
            if (result.GetValueOrDefault<OutputFormat>() == OutputFormat.Csv)
            {
                result.AddError($"{Name} csv is not available for `{command}`, which prints several sections with different columns; use {Name} json");
            }
        });
        return option;
    }
}

/// <summary>
/// A command's output in named sections: the table prints them one after another (the caller's
/// own way), json writes one object with a member per section, an object for a single row and an
/// array for a list.
/// </summary>
internal sealed class Sections
{
    private readonly List<(string Name, Rows Rows, bool Single)> _sections = [];

    /// <summary>A section of one row, written as an object (null when it has none).</summary>
    public Sections One(string name, Rows rows)
    {
        _sections.Add((name, rows, true));
        return this;
    }

    /// <summary>A section of rows, written as an array.</summary>
    public Sections Many(string name, Rows rows)
    {
        _sections.Add((name, rows, false));
        return this;
    }

    public void WriteJson(TextWriter output)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, Rows.JsonOptions))
        {
            json.WriteStartObject();
            foreach (var (name, rows, single) in _sections)
            {
                json.WritePropertyName(name);
                rows.WriteJson(json, single);
            }

            json.WriteEndObject();
        }

        output.Write(Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length));
        output.Write('\n');
    }
}

/// <summary>
/// A column of <see cref="Rows"/>: its <paramref name="Header"/> in the table (null where the
/// table leaves it out) and its <paramref name="Name"/> in JSON and CSV (null where only the table
/// shows it, as a cell that joins two values for the eye).
/// </summary>
internal readonly record struct Column(string? Header, string? Name)
{
    public static implicit operator Column((string Header, string Name) pair) => new(pair.Header, pair.Name);

    /// <summary>A column only the table shows.</summary>
    public static Column TableOnly(string header) => new(header, null);

    /// <summary>A column only JSON and CSV carry.</summary>
    public static Column DataOnly(string name) => new(null, name);
}

/// <summary>
/// One cell: the <paramref name="Text"/> the table prints and the <paramref name="Value"/> JSON and
/// CSV carry: a string, a whole number, a boolean, an instant, or null for none.
/// </summary>
internal readonly record struct Cell(string Text, object? Value)
{
    public static implicit operator Cell(string text) => new(text, text);

    /// <summary>A whole number shown as <paramref name="text"/> (grouped, say) and carried exactly.</summary>
    public static Cell Number(long value, string text) => new(text, value);

    /// <summary>A whole number shown as <paramref name="text"/> and carried exactly.</summary>
    public static Cell Number(ulong value, string text) => new(text, value);

    /// <summary>Money: yuan for the eye, integer fen in the data, never a floating number.</summary>
    public static Cell Fen(long fen, string yuan) => new(yuan, fen);

    public static Cell Flag(bool value, string text) => new(text, value);

    /// <summary>An instant shown as <paramref name="text"/>; in the data ISO 8601 in Asia/Shanghai with its offset, null for none.</summary>
    public static Cell Instant(DateTimeOffset? instant, string text) => new(text, instant?.ToOffset(ShanghaiTime.Offset));

    /// <summary>Unix milliseconds, 0 for none, shown as Asia/Shanghai minutes.</summary>
    public static Cell Instant(long unixMs) =>
        unixMs == 0 ? new("", null) : Instant(DateTimeOffset.FromUnixTimeMilliseconds(unixMs), LocalTime.Minutes(unixMs));

    /// <summary>A value the data carries as it is while the table shows <paramref name="text"/>.</summary>
    public static Cell Data(object? value, string text = "") => new(text, value);
}

/// <summary>
/// The rows a command prints, written in the format `--output` asks for: the table exactly as
/// <see cref="TextTable"/> prints it, or the same values as JSON or CSV for programs.
/// </summary>
internal sealed class Rows(params Column[] columns)
{
    internal static readonly JsonWriterOptions JsonOptions = new()
    {
        Indented = true,

        // Organisation names are Chinese; a reader of the output should see them, not \uXXXX escapes.
        // Nothing here is embedded in HTML, so the relaxed encoder is the right one.
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    private readonly Column[] _columns = columns;
    private readonly List<Cell[]> _rows = [];

    public int Count => _rows.Count;

    public void Add(params Cell[] cells)
    {
        if (cells.Length != _columns.Length)
        {
            throw new ArgumentException($"a row of {cells.Length} cells for {_columns.Length} columns", nameof(cells));
        }

        _rows.Add(cells);
    }

    public void Write(OutputFormat format, TextWriter output)
    {
        switch (format)
        {
            case OutputFormat.Json:
                WriteJson(output, single: false);
                break;
            case OutputFormat.Csv:
                WriteCsv(output);
                break;
            default:
                WriteTable(output);
                break;
        }
    }

    /// <summary>The first row alone as one JSON object (a `show`); table and CSV as for a list.</summary>
    public void WriteOne(OutputFormat format, TextWriter output)
    {
        if (format == OutputFormat.Json)
        {
            WriteJson(output, single: true);
        }
        else
        {
            Write(format, output);
        }
    }

    /// <summary>The table as people read it; the caller prints whatever else it prints around it.</summary>
    public void WriteTable(TextWriter output) => ToTable().Write(output);

    /// <summary>The table's columns and texts, for a caller that prints it as one section of several.</summary>
    public TextTable ToTable()
    {
        int[] shown = [.. Enumerable.Range(0, _columns.Length).Where(i => _columns[i].Header is not null)];
        var table = new TextTable([.. shown.Select(i => _columns[i].Header!)]);
        foreach (Cell[] row in _rows)
        {
            table.Add([.. shown.Select(i => row[i].Text)]);
        }

        return table;
    }

    private int[] DataColumns() => [.. Enumerable.Range(0, _columns.Length).Where(i => _columns[i].Name is not null)];

    private void WriteJson(TextWriter output, bool single)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, JsonOptions))
        {
            WriteJson(json, single);
        }

        output.Write(Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length));
        output.Write('\n');
    }

    /// <summary>The rows as one JSON array, or the first as one object (null when there is none), into a writer that may hold more.</summary>
    internal void WriteJson(Utf8JsonWriter json, bool single)
    {
        int[] data = DataColumns();
        if (!single)
        {
            json.WriteStartArray();
        }

        foreach (Cell[] row in single ? _rows.Take(1) : _rows)
        {
            json.WriteStartObject();
            foreach (int i in data)
            {
                json.WritePropertyName(_columns[i].Name!);
                WriteValue(json, row[i].Value);
            }

            json.WriteEndObject();
        }

        if (!single)
        {
            json.WriteEndArray();
        }
        else if (_rows.Count == 0)
        {
            json.WriteNullValue();
        }
    }

    private static void WriteValue(Utf8JsonWriter json, object? value)
    {
        switch (value)
        {
            case null:
                json.WriteNullValue();
                break;
            case string text:
                json.WriteStringValue(text);
                break;
            case bool flag:
                json.WriteBooleanValue(flag);
                break;
            case long number:
                json.WriteNumberValue(number);
                break;
            case ulong number:
                json.WriteNumberValue(number);
                break;
            case int number:
                json.WriteNumberValue(number);
                break;
            case uint number:
                json.WriteNumberValue(number);
                break;
            case DateTimeOffset instant:
                json.WriteStringValue(Iso(instant));
                break;
            default:
                throw new ArgumentException($"no JSON form for a {value.GetType().Name}", nameof(value));
        }
    }

    private void WriteCsv(TextWriter output)
    {
        int[] data = DataColumns();
        output.Write(string.Join(',', data.Select(i => Quote(_columns[i].Name!))));
        output.Write("\r\n");
        foreach (Cell[] row in _rows)
        {
            output.Write(string.Join(',', data.Select(i => Quote(CsvText(row[i].Value)))));
            output.Write("\r\n");
        }
    }

    private static string CsvText(object? value) => value switch
    {
        null => "",
        string text => text,
        bool flag => flag ? "true" : "false",
        DateTimeOffset instant => Iso(instant),
        IFormattable number => number.ToString(null, CultureInfo.InvariantCulture),
        _ => throw new ArgumentException($"no CSV form for a {value.GetType().Name}", nameof(value)),
    };

    /// <summary>A field quoted, its quotes doubled, where RFC 4180 requires it: a comma, a quote or a line break inside.</summary>
    private static string Quote(string field) =>
        field.AsSpan().IndexOfAny(",\"\r\n") < 0 ? field : $"\"{field.Replace("\"", "\"\"", StringComparison.Ordinal)}\"";

    /// <summary>ISO 8601 with the offset; milliseconds only where the instant has them.</summary>
    private static string Iso(DateTimeOffset instant) => instant.ToString("yyyy-MM-dd'T'HH:mm:ss.FFFzzz", CultureInfo.InvariantCulture);
}
