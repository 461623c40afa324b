using System.Collections.Concurrent;
using System.Text;
using Metering.Server.Telemetry;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using OpenTelemetry.Exporter;

namespace Metering.Server.Tests.Telemetry;

/// <summary>
/// Traces leave the server by OTLP when a collector is configured. The collector here is a real
/// HTTP endpoint on loopback that keeps what it is sent, as an OpenTelemetry collector's OTLP/HTTP
/// receiver would take it; the span names travel as UTF-8 inside the protobuf body.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class OtlpExportTests(PostgresFixture postgres)
{
    [Fact]
    public async Task A_batch_commit_is_exported_as_a_trace_to_the_configured_collector()
    {
        var received = new ConcurrentQueue<(string Path, byte[] Body)>();
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        await using WebApplication collector = builder.Build();
        collector.Run(async context =>
        {
            using var body = new MemoryStream();
            await context.Request.Body.CopyToAsync(body);
            received.Enqueue((context.Request.Path.Value ?? "", body.ToArray()));
            context.Response.StatusCode = StatusCodes.Status200OK;
        });
        await collector.StartAsync();
        var collectorAddress = new Uri(collector.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First());

        await using (TestServer server = await TestServer.StartAsync(postgres,
            telemetry: new TelemetrySettings { OtlpEndpoint = collectorAddress, OtlpProtocol = OtlpExportProtocol.HttpProtobuf }))
        {
            await using IngestCall call = await IngestCall.OpenAsync(server.Client(), "traced");
            await call.SendAsync(Metering.Fixtures.TestRecords.Range(1, 3));
        }

        // Stopping the server flushes its exporters.
        byte[][] traces = received.Where(r => r.Path == "/v1/traces").Select(r => r.Body).ToArray();
        Assert.NotEmpty(traces);
        Assert.Contains(traces, body => Contains(body, "metering.ingest.batch") && Contains(body, "traced"));
    }

    private static bool Contains(byte[] body, string text) => body.AsSpan().IndexOf(Encoding.UTF8.GetBytes(text)) >= 0;
}
