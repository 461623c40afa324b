namespace Metering.Engine.Storage;

/// <summary>
/// Writes a value into SQL text as a quoted literal, for the few statements that take no
/// parameters (COPY) but must name a provider, so that PostgreSQL, and Citus routing the
/// statement to a shard, see a constant. The statement must run with
/// <c>standard_conforming_strings</c> on (every such statement sets it), under which a
/// backslash is an ordinary character and a doubled quote is the only escape.
/// </summary>
internal static class SqlLiteral
{
    /// <summary>The text as a SQL string literal; a NUL, which no PostgreSQL text can hold, is refused.</summary>
    public static string Text(string value)
    {
        if (value.Contains('\0', StringComparison.Ordinal))
        {
            throw new ArgumentException("A SQL text literal cannot hold a NUL character.", nameof(value));
        }

        return "'" + value.Replace("'", "''", StringComparison.Ordinal) + "'";
    }
}
