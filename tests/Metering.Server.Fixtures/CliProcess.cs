using System.Diagnostics;

namespace Metering.Server.Fixtures;

/// <summary>The `metering` command built next to the tests, run as a user runs it: a real process, its exit code and its output.</summary>
public static class CliProcess
{
    public static Task<(int ExitCode, string Output)> RunAsync(params string[] arguments) =>
        RunWithEnvironmentAsync(new Dictionary<string, string>(), arguments);

    /// <summary>
    /// As <see cref="RunAsync"/>, with these environment variables set for the process. The
    /// locale the tests run under is not passed on: the CLI prints Chinese labels where it says
    /// zh, and a test that wants them names LANG itself.
    /// </summary>
    public static Task<(int ExitCode, string Output)> RunWithEnvironmentAsync(IReadOnlyDictionary<string, string> environment, params string[] arguments) =>
        RunProgramAsync("metering.dll", environment, arguments);

    /// <summary>`metering-probe` (its own build) as a provider's node runs it, with these environment variables.</summary>
    public static Task<(int ExitCode, string Output)> RunProbeAsync(IReadOnlyDictionary<string, string> environment, params string[] arguments) =>
        RunProgramAsync("metering-probe.dll", environment, arguments);

    private static async Task<(int ExitCode, string Output)> RunProgramAsync(string program, IReadOnlyDictionary<string, string> environment, string[] arguments)
    {
        var start = new ProcessStartInfo("dotnet");
        foreach (string locale in (string[])["LC_ALL", "LC_MESSAGES", "LANG"])
        {
            start.Environment.Remove(locale);
        }

        foreach (var (name, value) in environment)
        {
            start.Environment[name] = value;
        }

        start.ArgumentList.Add(ProgramBuilds.PathOf(program));
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        return await RunAsync(start);
    }

    /// <summary>Runs a prepared process to its end (at most 60 s) and returns its exit code with its standard output and error.</summary>
    public static async Task<(int ExitCode, string Output)> RunAsync(ProcessStartInfo start)
    {
        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;
        start.UseShellExecute = false;
        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60));
        return (process.ExitCode, await output + await error);
    }

    /// <summary>
    /// Runs a client command against <paramref name="server"/> as the caller <paramref name="apiKey"/>
    /// names, over TLS with the test CA: the arguments, then --server, --ca and --api-key.
    /// </summary>
    public static Task<(int ExitCode, string Output)> RunAsAsync(TestServer server, string apiKey, params string[] arguments) =>
        RunAsAsync(server, apiKey, new Dictionary<string, string>(), arguments);

    /// <summary>As <see cref="RunAsAsync(TestServer, string, string[])"/>, with these environment variables set for the process (LANG, for one).</summary>
    public static Task<(int ExitCode, string Output)> RunAsAsync(TestServer server, string apiKey, IReadOnlyDictionary<string, string> environment, params string[] arguments) =>
        RunWithEnvironmentAsync(environment, [.. arguments, "--server", server.Address.ToString().TrimEnd('/'), "--ca", TestCertificates.CaPemPath, "--api-key", apiKey]);
}
