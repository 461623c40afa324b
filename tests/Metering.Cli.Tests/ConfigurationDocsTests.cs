using Metering.Cli.Configuration;
using Metering.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>
/// The settings an operator reads about are the settings there are: every `Area:Name` the options
/// classes hold (found by reflection, as `config show` finds them) has a row in README's
/// Configuration section and in proto/metering/v1/limits.md, with its default as the code has it.
/// A setting added to the code and not to the documents fails here.
/// </summary>
public sealed class ConfigurationDocsTests
{
    [Fact]
    public void Readme_configuration_lists_every_setting_with_its_default()
    {
        string readme = File.ReadAllText(Path.Combine(TestRecords.RepositoryRoot(), "README.md"));
        int start = readme.IndexOf("### Configuration", StringComparison.Ordinal);
        Assert.True(start >= 0, "README has no Configuration section");
        int end = readme.IndexOf("\n### ", start + 1, StringComparison.Ordinal);
        AssertEverySettingListed(readme[start..(end < 0 ? readme.Length : end)], "README.md's Configuration section");
    }

    [Fact]
    public void Limits_md_lists_every_setting_with_its_default()
    {
        string limits = File.ReadAllText(Path.Combine(TestRecords.RepositoryRoot(), "proto", "metering", "v1", "limits.md"));
        AssertEverySettingListed(limits, "proto/metering/v1/limits.md");
    }

    [Fact]
    public void The_check_finds_a_setting_the_text_leaves_out_or_gives_a_wrong_default()
    {
        // The check itself can fail: a row that names another default, or no row at all, is caught.
        Assert.Throws<Xunit.Sdk.TrueException>(() => AssertEverySettingListed("| `Ingest:BatchRecordsMax` | `5000` | 1 to 100000 |", "a text"));
        Assert.Throws<Xunit.Sdk.TrueException>(() => AssertEverySettingListed("", "a text"));
    }

    private static void AssertEverySettingListed(string text, string where)
    {
        string[] rows = text.Split('\n').Where(line => line.StartsWith('|')).ToArray();
        foreach (var (key, value) in MeteringSettings.DefaultsByKey().OrderBy(k => k.Key, StringComparer.Ordinal))
        {
            string? row = rows.FirstOrDefault(r => r.Contains($"| `{key}` |", StringComparison.Ordinal));
            Assert.True(row is not null, $"{where} has no table row for the setting {key}");
            string shown = string.IsNullOrEmpty(value) ? "(empty)" : $"`{value}`";
            Assert.True(row!.Contains($"| {shown} |", StringComparison.Ordinal), $"{where} gives {key} another default than the code's {shown}: {row}");
        }
    }
}
