namespace Metering.Server.Fixtures;

/// <summary>
/// Reads the command and option names out of a System.CommandLine --help text, so that a help test
/// checks the entries it names rather than a word that may stand anywhere in a description. An
/// entry starts two spaces in under its section's heading ("Commands:", "Options:"); its
/// description, and the lines that continue it, stand further in.
/// </summary>
internal static class CliHelp
{
    /// <summary>The subcommands the help lists, without their arguments: "ingest-file", not "ingest-file &lt;file&gt;".</summary>
    public static IReadOnlySet<string> Commands(string help) =>
        Entries(help, "Commands:").Select(entry => entry.Split(' ')[0]).ToHashSet(StringComparer.Ordinal);

    /// <summary>Every name and alias of every option the help lists, without their arguments: "--day", "-h", "--help".</summary>
    public static IReadOnlySet<string> Options(string help) =>
        Entries(help, "Options:")
            .Select(entry => entry.Split("  ")[0])
            .SelectMany(names => names.Split(", "))
            .Select(name => name.Split(' ')[0])
            .ToHashSet(StringComparer.Ordinal);

    private static List<string> Entries(string help, string heading)
    {
        var entries = new List<string>();
        bool inSection = false;
        foreach (string raw in help.Split('\n'))
        {
            string line = raw.TrimEnd('\r');
            if (line == heading)
            {
                inSection = true;
            }
            else if (line.Length > 0 && line[0] != ' ')
            {
                inSection = false;
            }
            else if (inSection && line.Length > 2 && line.StartsWith("  ", StringComparison.Ordinal) && line[2] != ' ')
            {
                entries.Add(line[2..]);
            }
        }

        Assert.True(entries.Count > 0, $"the help has no '{heading}' entries:\n{help}");
        return entries;
    }
}
