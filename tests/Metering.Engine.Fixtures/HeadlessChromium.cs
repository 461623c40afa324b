using System.Diagnostics;

namespace Metering.Engine.Fixtures;

/// <summary>
/// Debian's chromium, headless, as the report tests use it: found on PATH (.ci/ensure-chromium
/// installs it), or the test fails saying how to get it; it never passes unchecked.
/// </summary>
public static class HeadlessChromium
{
    public static string Find()
    {
        foreach (string directory in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            foreach (string name in (string[])["chromium", "chromium-browser"])
            {
                string candidate = Path.Combine(directory, name);
                if (File.Exists(candidate))
                {
                    return candidate;
                }
            }
        }

        throw new InvalidOperationException(
            "Headless Chromium is needed to render the audit report and was not found on PATH (chromium or chromium-browser). Install Debian's chromium package and a CJK font: bash .ci/ensure-chromium (.ci/run does this).");
    }

    /// <summary>Renders <paramref name="htmlFile"/> into a PNG of the given window size and returns its bytes.</summary>
    public static async Task<byte[]> ScreenshotAsync(string htmlFile, int width, int height)
    {
        string png = Path.Combine(Directory.CreateTempSubdirectory("metering-shot-").FullName, "shot.png");
        var (exit, error) = await RunAsync(
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars",
            "--force-device-scale-factor=1", $"--window-size={width},{height}", $"--screenshot={png}", new Uri(htmlFile).AbsoluteUri);
        Assert.True(exit == 0 && File.Exists(png), $"chromium exited {exit} without a screenshot: {error}");
        return await File.ReadAllBytesAsync(png);
    }

    private static async Task<(int ExitCode, string Error)> RunAsync(params string[] arguments)
    {
        var start = new ProcessStartInfo(Find()) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(120));
        await output;
        return (process.ExitCode, await error);
    }
}
