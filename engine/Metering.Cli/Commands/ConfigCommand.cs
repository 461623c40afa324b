using System.CommandLine;
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
        var output = OutputOption.Create();
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

            var rows = new Rows(("Setting", "key"), ("Value", "value"), ("Source", "source"));
            foreach (var (key, value, source) in settings.Describe())
            {
                rows.Add(key, value, source);
            }

            rows.Write(parse.GetValue(output), Console.Out);
            return ExitCodes.Success;
        });
        return new Command("config", "Show the server's configuration.") { show };
    }
}
