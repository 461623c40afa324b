using System.Diagnostics;
using System.Text.Json;
using Metering.Server.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>
/// `metering config show` as an operator runs it: the settings file, the environment and the
/// command line layered in that order, secrets masked, and a wrong setting refused with exit 2
/// naming it, by `config show` and by `serve` alike.
/// </summary>
public sealed class ConfigShowCliTests
{
    [Fact]
    public async Task A_setting_on_the_command_line_beats_the_environment_which_beats_the_file_which_beats_the_default()
    {
        string folder = Directory.CreateTempSubdirectory("metering-config-").FullName;
        string file = Path.Combine(folder, "settings.json");
        await File.WriteAllTextAsync(file, """{"Ingest": {"BatchRecordsMax": 5000, "JobIdBytesMax": 100, "SiteBytesMax": 32}}""");

        var (exit, output) = await CliProcess.RunWithEnvironmentAsync(
            new Dictionary<string, string> { ["METERING__Ingest__JobIdBytesMax"] = "200", ["METERING__Ingest__SiteBytesMax"] = "48" },
            "config", "show", "--config", file, "--set", "Ingest:SiteBytesMax=56", "--output", "json");

        Assert.Equal(0, exit);
        var settings = Settings(output);
        Assert.Equal(("5000", $"file {file}"), settings["Ingest:BatchRecordsMax"]);
        Assert.Equal(("200", "env METERING__Ingest__JobIdBytesMax"), settings["Ingest:JobIdBytesMax"]);
        Assert.Equal(("56", "command line"), settings["Ingest:SiteBytesMax"]);
        Assert.Equal(("16384", "default"), settings["Ingest:DeviceCountMax"]);
    }

    [Fact]
    public async Task Metering_json_in_the_working_directory_is_read_without_config_and_the_older_variables_and_named_options_still_apply()
    {
        string folder = Directory.CreateTempSubdirectory("metering-config-").FullName;
        await File.WriteAllTextAsync(Path.Combine(folder, "metering.json"), """{"Access": {"AuditCallsInFlightMax": 6}, "Capacity": {"NodesMax": 900}}""");
        var start = new ProcessStartInfo("dotnet") { WorkingDirectory = folder };
        start.Environment["METERING_STREAMS_PER_KEY_MAX"] = "40";
        start.Environment["METERING_AUDIT_CALLS_IN_FLIGHT_MAX"] = "7";
        foreach (string argument in (string[])[ProgramBuilds.PathOf("metering.dll"), "config", "show", "--output", "json", "--audit-calls-in-flight", "8"])
        {
            start.ArgumentList.Add(argument);
        }

        var (exit, output) = await CliProcess.RunAsync(start);

        Assert.Equal(0, exit);
        var settings = Settings(output);
        Assert.Equal(("900", $"file {Path.Combine(folder, "metering.json")}"), settings["Capacity:NodesMax"]);
        Assert.Equal(("40", "env METERING_STREAMS_PER_KEY_MAX"), settings["Access:StreamsPerKeyMax"]);
        Assert.Equal(("8", "command line"), settings["Access:AuditCallsInFlightMax"]);
    }

    [Fact]
    public async Task Config_show_masks_the_database_password_the_api_key_and_the_tls_password_in_table_json_and_csv()
    {
        var environment = new Dictionary<string, string>
        {
            ["METERING_CONNECTION"] = "Host=db.example.org;Database=metering;Username=metering_runtime;Password=hunter2-db-secret",
            ["METERING_API_KEY"] = "mk_live_secret_key_value",
            ["METERING_TLS_PASSWORD"] = "pfx-secret-password",
        };

        foreach (string format in (string[])["table", "json", "csv"])
        {
            var (exit, output) = await CliProcess.RunWithEnvironmentAsync(environment, "config", "show", "--output", format);

            Assert.Equal(0, exit);
            Assert.DoesNotContain("hunter2-db-secret", output, StringComparison.Ordinal);
            Assert.DoesNotContain("mk_live_secret_key_value", output, StringComparison.Ordinal);
            Assert.DoesNotContain("pfx-secret-password", output, StringComparison.Ordinal);
            Assert.Contains("Host=db.example.org;Database=metering;Username=metering_runtime;Password=***", output, StringComparison.Ordinal);
        }
    }

    [Theory]
    [InlineData("METERING__Ingest__BatchRecordsMax", "-5", "setting Ingest:BatchRecordsMax = '-5' (from env METERING__Ingest__BatchRecordsMax) is refused: Ingest limit BatchRecordsMax must be between 1 and 100000")]
    [InlineData("METERING__Ingest__BatchRecordMax", "5", "setting Ingest:BatchRecordMax (from env METERING__Ingest__BatchRecordMax) is unknown")]
    [InlineData("METERING__Capacity__NonceTtl", "soon", "setting Capacity:NonceTtl = 'soon' (from env METERING__Capacity__NonceTtl) is not a time span")]
    [InlineData("METERING_AUTH_CACHE_MS", "-1", "setting Access:AuthenticationCacheMs = '-1' (from env METERING_AUTH_CACHE_MS) is refused: AuthenticationCacheMs must be between 0 and 60,000")]
    public async Task A_wrong_setting_is_refused_with_exit_2_naming_it_and_its_source_by_config_show_and_by_serve_before_it_starts(string variable, string value, string message)
    {
        var environment = new Dictionary<string, string> { [variable] = value };
        var (showExit, showOutput) = await CliProcess.RunWithEnvironmentAsync(environment, "config", "show");
        Assert.Equal(2, showExit);
        Assert.Contains("error: " + message, showOutput, StringComparison.Ordinal);

        string dataFolder = Path.Combine(Path.GetTempPath(), $"metering-config-never-{Guid.NewGuid():N}");
        var (serveExit, serveOutput) = await CliProcess.RunWithEnvironmentAsync(environment, "serve", "--data-dir", dataFolder);
        Assert.Equal(2, serveExit);
        Assert.Contains("error: " + message, serveOutput, StringComparison.Ordinal);
        Assert.False(Directory.Exists(dataFolder));
    }

    private static Dictionary<string, (string Value, string Source)> Settings(string json)
    {
        using JsonDocument document = JsonDocument.Parse(json);
        return document.RootElement.EnumerateArray().ToDictionary(
            row => row.GetProperty("key").GetString()!,
            row => (row.GetProperty("value").GetString()!, row.GetProperty("source").GetString()!));
    }
}
