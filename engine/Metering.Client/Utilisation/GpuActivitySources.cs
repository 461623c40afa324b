using System.Diagnostics;

namespace Metering.Client.Utilisation;

/// <summary>Where SM-activity samples come from: each read gives the fraction (0 to 1) of each GPU index now.</summary>
public static class GpuActivitySources
{
    /// <summary>The largest exposition read; a node's full dcgm-exporter page is tens of kilobytes.</summary>
    public const int ResponseBytesMax = 8 << 20;

    /// <summary>How long one read may take.</summary>
    public static readonly TimeSpan ReadTimeout = TimeSpan.FromSeconds(10);

    /// <summary>Reads DCGM_FI_PROF_SM_ACTIVE from a dcgm-exporter's <c>/metrics</c> (usually http://HOST:9400/metrics).</summary>
    public static Func<CancellationToken, Task<SortedDictionary<int, decimal>>> DcgmExporter(HttpClient http, Uri metricsUrl) => async cancellationToken =>
    {
        string text;
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(ReadTimeout);
            using HttpResponseMessage response = await http.GetAsync(metricsUrl, HttpCompletionOption.ResponseHeadersRead, timeout.Token);
            if (!response.IsSuccessStatusCode)
            {
                throw new GpuActivityException(GpuActivityProblem.Unreachable, $"dcgm-exporter at {metricsUrl} answered HTTP {(int)response.StatusCode} {response.ReasonPhrase}");
            }

            if (response.Content.Headers.ContentLength > ResponseBytesMax)
            {
                throw new GpuActivityException(GpuActivityProblem.BadOutput, $"dcgm-exporter at {metricsUrl} sent more than {ResponseBytesMax} bytes");
            }

            text = await response.Content.ReadAsStringAsync(timeout.Token);
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException && !cancellationToken.IsCancellationRequested)
        {
            throw new GpuActivityException(GpuActivityProblem.Unreachable, $"dcgm-exporter at {metricsUrl} does not answer ({e.Message})", e);
        }

        try
        {
            return DcgmExposition.ParseSmActive(text);
        }
        catch (GpuActivityException e)
        {
            throw new GpuActivityException(e.Problem, $"dcgm-exporter at {metricsUrl}: {e.Message}");
        }
    };

    /// <summary>Runs <paramref name="program"/> (nvidia-smi) with the query of <see cref="NvidiaSmiCsv"/> and reads its output.</summary>
    public static Func<CancellationToken, Task<SortedDictionary<int, decimal>>> NvidiaSmi(string program) => async cancellationToken =>
    {
        var start = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string argument in new[] { "--query-gpu=index,utilization.gpu", "--format=csv,noheader,nounits" })
        {
            start.ArgumentList.Add(argument);
        }

        string output;
        try
        {
            using Process process = Process.Start(start)!;
            Task<string> error = process.StandardError.ReadToEndAsync(cancellationToken);
            output = await process.StandardOutput.ReadToEndAsync(cancellationToken);
            await process.WaitForExitAsync(cancellationToken).WaitAsync(ReadTimeout, cancellationToken);
            if (process.ExitCode != 0)
            {
                throw new GpuActivityException(GpuActivityProblem.Unreachable, $"{program} exited {process.ExitCode}: {(await error).Trim()}");
            }
        }
        catch (Exception e) when (e is System.ComponentModel.Win32Exception or TimeoutException)
        {
            throw new GpuActivityException(GpuActivityProblem.Unreachable, $"{program} could not be run ({e.Message})", e);
        }

        return NvidiaSmiCsv.ParseUtilisation(output);
    };
}
