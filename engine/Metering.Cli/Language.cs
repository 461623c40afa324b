namespace Metering.Cli;

/// <summary>Which language the person at the terminal reads: Chinese where LANG (or LC_ALL, LC_MESSAGES) starts with zh, English otherwise.</summary>
internal static class Language
{
    public static bool PrefersChinese { get; } = Prefers("zh");

    private static bool Prefers(string prefix)
    {
        // POSIX precedence: LC_ALL overrides LC_MESSAGES, which overrides LANG.
        foreach (string name in (string[])["LC_ALL", "LC_MESSAGES", "LANG"])
        {
            if (Environment.GetEnvironmentVariable(name) is { Length: > 0 } value)
            {
                return value.StartsWith(prefix, StringComparison.OrdinalIgnoreCase);
            }
        }

        return false;
    }
}
