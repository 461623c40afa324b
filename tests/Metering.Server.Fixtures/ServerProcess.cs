using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Metering.Engine.Fixtures;

namespace Metering.Server.Fixtures;

/// <summary>`metering serve` as a separate OS process, so that a test can kill it outright.</summary>
public sealed class ServerProcess : IAsyncDisposable
{
    private readonly Process _process;

    private readonly System.Collections.Concurrent.ConcurrentQueue<string> _output;

    private ServerProcess(Process process, Uri address, System.Collections.Concurrent.ConcurrentQueue<string> output)
    {
        _process = process;
        Address = address;
        _output = output;
    }

    public Uri Address { get; }

    /// <summary>The lines the server has written so far, stdout and stderr in the order they arrived.</summary>
    public IReadOnlyList<string> Output => [.. _output];

    /// <summary>
    /// The test run's signing key in an owner-only file: serve on an external database needs one,
    /// and the same key as the in-process servers' lets a test check either's receipts.
    /// </summary>
    public static string SigningKeyPath => SigningKeyFile.Value;

    private static readonly Lazy<string> SigningKeyFile = new(() =>
    {
        string path = Path.Combine(Directory.CreateTempSubdirectory("metering-serve-key-").FullName, "signing-key.pem");
        TestServer.SigningKey.WritePrivateKey(path);
        return path;
    });

    public static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    /// <summary>Starts the CLI built next to the tests over TLS, with the test certificate as PEM files, logged in as the runtime role, and waits until it serves.</summary>
    public static Task<ServerProcess> StartAsync(string connectionString, int port)
    {
        // Logged in as the runtime role, as a production server is.
        connectionString = PostgresFixture.AsRuntimeRole(connectionString);
        var (certificate, key) = TestCertificates.ServerPemPaths;
        var address = new Uri($"https://127.0.0.1:{port}");
        return StartAsync(address, "serve", "--connection", connectionString, "--listen", address.ToString(), "--tls-cert", certificate, "--tls-key", key, "--signing-key", SigningKeyFile.Value);
    }

    /// <summary>Starts the CLI built next to the tests with these arguments and waits until it says it serves on <paramref name="address"/>.</summary>
    public static Task<ServerProcess> StartAsync(Uri address, params string[] arguments) =>
        StartAsync(address, new Dictionary<string, string>(), arguments);

    /// <summary>As <see cref="StartAsync(Uri, string[])"/>, with these environment variables set for the process.</summary>
    public static async Task<ServerProcess> StartAsync(Uri address, IReadOnlyDictionary<string, string> environment, params string[] arguments)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var (name, value) in environment)
        {
            start.Environment[name] = value;
        }

        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "metering.dll"));
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }
        var process = Process.Start(start)!;
        var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var output = new System.Collections.Concurrent.ConcurrentQueue<string>();
        process.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null)
            {
                return;
            }

            output.Enqueue(e.Data);
            if (e.Data.Contains("Serving gRPC on", StringComparison.Ordinal))
            {
                ready.TrySetResult();
            }
        };
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                output.Enqueue(e.Data);
            }
        };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        Task exited = process.WaitForExitAsync();
        if (await Task.WhenAny(ready.Task, exited, Task.Delay(TimeSpan.FromSeconds(60))) != ready.Task)
        {
            process.Kill(entireProcessTree: true);
            throw new InvalidOperationException("metering serve did not start:\n" + string.Join('\n', output));
        }

        return new ServerProcess(process, address, output);
    }

    /// <summary>SIGKILL: no shutdown hooks, no flushing, no goodbyes.</summary>
    public async Task KillAsync()
    {
        _process.Kill(entireProcessTree: true);
        await _process.WaitForExitAsync();
    }

    /// <summary>
    /// Asks the server to stop as an operator's Ctrl+C or a service manager would (SIGTERM), and
    /// waits for it: on the embedded database it then stops its PostgreSQL too, which a kill leaves running.
    /// </summary>
    public async Task StopAsync()
    {
        if (_process.HasExited)
        {
            return;
        }

        using (Process signal = Process.Start("kill", ["-TERM", _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]))
        {
            await signal.WaitForExitAsync();
        }

        await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            await KillAsync();
        }

        _process.Dispose();
    }
}
