using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Metering.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>A real HTTP server on loopback that answers GET /metrics with what <c>respond</c> gives for the n-th request (1-based).</summary>
internal sealed class RecordedExporter : IAsyncDisposable
{
    /// <summary>The recorded exposition of an 8×H100 node (tests/Metering.Cli.Tests/Dcgm), GPUs 0 to 3 idle and 4 to 7 busy.</summary>
    public static string Recorded() => File.ReadAllText(Path.Combine(TestRecords.RepositoryRoot(), "tests", "Metering.Cli.Tests", "Dcgm", "dcgm-exporter-gpu-node-07.txt"));

    private readonly WebApplication _app;
    private int _requests;

    private RecordedExporter(WebApplication app) => _app = app;

    public int Requests => _requests;

    public string MetricsUrl { get; private set; } = "";

    public static async Task<RecordedExporter> StartAsync(Func<int, (int Status, string Body)> respond)
    {
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        WebApplication app = builder.Build();
        var exporter = new RecordedExporter(app);
        app.MapGet("/metrics", async context =>
        {
            (int status, string body) = respond(Interlocked.Increment(ref exporter._requests));
            context.Response.StatusCode = status;
            context.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
            await context.Response.WriteAsync(body);
        });
        await app.StartAsync();
        string address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Single();
        exporter.MetricsUrl = address.TrimEnd('/') + "/metrics";
        return exporter;
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
