using System.Diagnostics;

namespace Metering.Probe.Tests;

/// <summary>Runs the built `metering-probe` as a provider runs it: a separate process, its exit code, standard output and standard error apart.</summary>
internal static class ProbeProcess
{
    public static async Task<(int ExitCode, string Output, string Error)> RunAsync(IReadOnlyDictionary<string, string>? environment, params string[] arguments)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string inherited in (string[])["METERING_API_KEY", "METERING_SERVER", "METERING_CA"])
        {
            start.Environment.Remove(inherited);
        }

        foreach (var (name, value) in environment ?? new Dictionary<string, string>())
        {
            start.Environment[name] = value;
        }

        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "metering-probe.dll"));
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(120));
        return (process.ExitCode, await output, await error);
    }

    public static Task<(int ExitCode, string Output, string Error)> RunAsync(params string[] arguments) => RunAsync(null, arguments);
}
