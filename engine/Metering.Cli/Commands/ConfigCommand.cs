using System.CommandLine;
using System.Text.Json;
using Metering.Cli.Configuration;

namespace Metering.Cli.Commands;

/// <summary>`metering config show`: the settings `serve` would run with, each with where it came from.</summary>
internal static class ConfigCommand
{
    public static Command Create()
    {
        var configFile = MeteringSettings.ConfigFileOption();
        var sets = MeteringSettings.SetOption();
        var namedLimits = MeteringSettings.CreateNamedOptions();
        var output = new Option<string>("--output")
        {
            Description = "table (the default) or json.",
            DefaultValueFactory = _ => "table",
        }.AcceptOnlyFromAmong("table", "json");
        var show = new Command("show", "Print the effective configuration `serve` would run with, read as serve reads it (default < --config file or metering.json < "
            + "METERING__Area__Name environment variables < command line): every setting, its value and where it came from; passwords and keys are masked. "
            + "An unknown setting or a value out of range exits 2, as serve does.")
        {
            configFile,
            sets,
            output,
        };
        foreach (var limit in namedLimits)
        {
            show.Options.Add(limit.Option);
        }

        show.SetAction(parse =>
        {
            MeteringSettings settings;
            try
            {
                settings = MeteringSettings.Load(parse.GetValue(configFile), parse.GetValue(sets) ?? [], MeteringSettings.Given(parse, namedLimits));
            }
            catch (SettingsException e)
            {
                Console.Error.WriteLine($"error: {e.Message}");
                return ExitCodes.Usage;
            }

            var rows = settings.Describe();
            if (parse.GetValue(output) == "json")
            {
                Console.WriteLine(JsonSerializer.Serialize(rows.Select(r => new Dictionary<string, string> { ["key"] = r.Key, ["value"] = r.Value, ["source"] = r.Source })));
                return ExitCodes.Success;
            }

            var table = new TextTable("Setting", "Value", "Source");
            foreach (var (key, value, source) in rows)
            {
                table.Add(key, value, source);
            }

            table.Write(Console.Out);
            return ExitCodes.Success;
        });
        return new Command("config", "Show the server's configuration.") { show };
    }
}
