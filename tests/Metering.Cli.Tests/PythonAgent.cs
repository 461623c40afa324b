using System.ComponentModel;
using System.Diagnostics;
using System.Text.Json;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>
/// samples/python-agent run as a provider runs it: Debian's /usr/bin/python3 with python3-grpcio,
/// python3-protobuf, python3-cryptography and protoc (.ci/ensure-python installs them), a real
/// process against a real server over TLS with the test CA.
/// </summary>
internal static class PythonAgent
{
    /// <summary>Debian's interpreter: the packages live in its dist-packages, which another python3 on PATH does not see.</summary>
    public const string Python = "/usr/bin/python3";

    public static string Folder => Path.Combine(TestRecords.RepositoryRoot(), "samples", "python-agent");

    private static readonly Lazy<Task<string?>> Missing = new(FindMissingAsync);

    /// <summary>Fails the test with what to run when the machine lacks a package; never lets it pass silently.</summary>
    public static async Task RequireAsync()
    {
        string? missing = await Missing.Value;
        if (missing is not null)
        {
            throw new InvalidOperationException($"{missing}: run .ci/ensure-python (Debian's python3-grpcio, python3-protobuf, python3-cryptography and protobuf-compiler)");
        }
    }

    private static async Task<string?> FindMissingAsync()
    {
        try
        {
            var (exit, output) = await CliProcess.RunAsync(new ProcessStartInfo(Python, ["-c", "import grpc, google.protobuf, cryptography"]));
            if (exit != 0)
            {
                return $"{Python} cannot import the agent's packages ({output.Trim().Split('\n')[^1]})";
            }

            (exit, _) = await CliProcess.RunAsync(new ProcessStartInfo("protoc", ["--version"]));
            return exit == 0 ? null : "protoc does not run";
        }
        catch (Win32Exception e)
        {
            return $"a program is missing ({e.Message})";
        }
    }

    /// <summary>
    /// The agent's process, with the connection options for <paramref name="server"/> and the key
    /// after the arguments; arguments that name --server themselves keep theirs.
    /// </summary>
    public static ProcessStartInfo Start(TestServer server, string apiKey, string stateFolder, params string[] arguments)
    {
        var start = new ProcessStartInfo(Python) { WorkingDirectory = Folder };
        string[] serverOption = arguments.Contains("--server") ? [] : ["--server", server.Address.ToString().TrimEnd('/')];
        foreach (string argument in (string[])[Path.Combine(Folder, "metering-agent"), .. arguments, .. serverOption,
                     "--ca", TestCertificates.CaPemPath, "--api-key", apiKey, "--provider", TestRecords.Provider, "--state-dir", stateFolder])
        {
            start.ArgumentList.Add(argument);
        }

        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;
        return start;
    }

    /// <summary>Runs the agent to its end (at most 60 s): its exit code, its standard output (the summary) and its standard error.</summary>
    public static async Task<Run> RunAsync(TestServer server, string apiKey, string stateFolder, params string[] arguments)
    {
        await RequireAsync();
        using Process process = Process.Start(Start(server, apiKey, stateFolder, arguments))!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60));
        return new Run(process.ExitCode, await output, await error);
    }

    internal sealed record Run(int ExitCode, string Output, string Error)
    {
        /// <summary>The summary: the last line the agent printed, a JSON object.</summary>
        public JsonElement Summary => JsonDocument.Parse(Output.Trim().Split('\n')[^1]).RootElement;

        public override string ToString() => $"exit {ExitCode}\nstdout: {Output}\nstderr: {Error}";
    }
}
