using System.Diagnostics;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>
/// The sample systemd units in samples/deploy: systemd itself accepts them, and every command and
/// option they run is one the CLI takes. systemd-analyze checks unit files offline; it needs no
/// running systemd (.ci/ensure-systemd installs it where it is missing).
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class SystemdUnitTests
{
    private static readonly string[] Units = ["metering.service", "metering-settle.service", "metering-settle.timer"];

    /// <summary>Where the units expect the published CLI (samples/deploy/README.md).</summary>
    private const string InstalledCli = "/opt/metering/metering";

    private static string DeployFolder => Path.Combine(TestRecords.RepositoryRoot(), "samples", "deploy");

    [Fact]
    public async Task The_sample_units_pass_systemd_analyze_verify_without_a_warning()
    {
        string folder = UnitsWithTheBuiltCli(Units.ToDictionary(u => u, u => File.ReadAllText(Path.Combine(DeployFolder, u))));

        (int exitCode, string output) = await VerifyAsync(folder, Units);

        Assert.True(exitCode == 0, $"systemd-analyze verify exited {exitCode}:\n{output}");
        Assert.Empty(LinesAbout(output, Units));
    }

    [Fact]
    public async Task A_unit_with_a_misspelt_key_or_a_missing_program_fails_the_same_check()
    {
        string unit = File.ReadAllText(Path.Combine(DeployFolder, "metering.service"));
        string folder = UnitsWithTheBuiltCli(new Dictionary<string, string>
        {
            ["misspelt.service"] = unit.Replace("RestartSec=", "RestartSecs=", StringComparison.Ordinal),
            ["missing.service"] = unit.Replace(InstalledCli, "/nonexistent/metering", StringComparison.Ordinal),
        });

        (int misspeltExit, string misspelt) = await VerifyAsync(folder, ["misspelt.service"]);
        (int missingExit, string missing) = await VerifyAsync(folder, ["missing.service"]);

        Assert.Equal(0, misspeltExit); // systemd only warns about an unknown key, so the check reads the output too
        Assert.Contains(LinesAbout(misspelt, ["misspelt.service"]), line => line.Contains("RestartSecs", StringComparison.Ordinal));
        Assert.NotEqual(0, missingExit);
        Assert.Contains("/nonexistent/metering", missing, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Every_command_and_option_the_units_run_is_one_the_cli_takes()
    {
        var commands = Units.SelectMany(u => File.ReadAllLines(Path.Combine(DeployFolder, u)))
            .Where(line => line.StartsWith("ExecStart=", StringComparison.Ordinal))
            .Select(line => line["ExecStart=".Length..].Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .ToList();
        Assert.Equal(2, commands.Count); // serve and settle

        foreach (string[] words in commands)
        {
            Assert.Equal(InstalledCli, words[0]);
            string[] command = [.. words.Skip(1).TakeWhile(w => !w.StartsWith('-'))];
            string[] options = [.. words.Where(w => w.StartsWith("--", StringComparison.Ordinal))];
            Assert.NotEmpty(command);

            (int exitCode, string help) = await CliProcess.RunAsync([.. command, "--help"]);

            Assert.True(exitCode == 0, $"`metering {string.Join(' ', command)} --help` exited {exitCode}: {help}");
            string[] offered = [.. help.Split('\n').Select(l => l.TrimStart()).Where(l => l.StartsWith("--", StringComparison.Ordinal)).Select(l => l.Split(' ', ',')[0])];
            foreach (string option in options)
            {
                Assert.True(offered.Contains(option), $"`metering {string.Join(' ', command)}` has no option {option}; it offers {string.Join(", ", offered)}");
            }
        }
    }

    /// <summary>Writes the units to a folder of their own, running the CLI built beside the tests where they name the installed one.</summary>
    private static string UnitsWithTheBuiltCli(IReadOnlyDictionary<string, string> units)
    {
        string folder = Directory.CreateTempSubdirectory("metering-units-").FullName;
        string cli = Path.Combine(folder, "metering");
        File.WriteAllText(cli, $"#!/bin/sh\nexec dotnet '{Path.Combine(AppContext.BaseDirectory, "metering.dll")}' \"$@\"\n");
        File.SetUnixFileMode(cli, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupRead | UnixFileMode.GroupExecute
            | UnixFileMode.OtherRead | UnixFileMode.OtherExecute);
        foreach (var (name, text) in units)
        {
            File.WriteAllText(Path.Combine(folder, name), text.Replace(InstalledCli, cli, StringComparison.Ordinal));
        }

        return folder;
    }

    private static async Task<(int ExitCode, string Output)> VerifyAsync(string folder, IEnumerable<string> units)
    {
        var start = new ProcessStartInfo("systemd-analyze");
        start.ArgumentList.Add("verify");
        foreach (string unit in units)
        {
            start.ArgumentList.Add(Path.Combine(folder, unit));
        }

        try
        {
            return await CliProcess.RunAsync(start);
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new InvalidOperationException("systemd-analyze is not installed: run .ci/ensure-systemd (Debian's systemd package)", e);
        }
    }

    /// <summary>The lines of systemd-analyze's output about these units, not about units of the machine it runs on.</summary>
    private static List<string> LinesAbout(string output, IEnumerable<string> units) =>
        [.. output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(line => units.Any(u => line.Contains(u, StringComparison.Ordinal)))];
}
