using Metering.Engine.Fixtures;
using Metering.Fixtures;
using Metering.Server.Fixtures;
using Metering.Server.Hosting;
using Microsoft.Extensions.DependencyInjection;

namespace Metering.Server.Tests.Storage;

/// <summary>`metering serve` warns while the monthly partitions end within 60 days of its clock, and is quiet while they reach further.</summary>
[Collection(PostgresCollection.Name)]
public sealed class PartitionCoverageTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Serve_warns_when_the_monthly_partitions_end_within_60_days_of_its_clock_and_not_before()
    {
        // The migrations' partitions end at 2028-01-01 00:00 UTC: 47 days after 2027-11-15, 407 after 2026-11-20.
        var clock = new ManualClock(new DateTimeOffset(2026, 11, 20, 8, 0, 0, TimeSpan.Zero));
        await using TestServer server = await TestServer.StartAsync(postgres, time: clock);
        PartitionCoverageMonitor monitor = server.Services.GetRequiredService<PartitionCoverageMonitor>();

        IReadOnlyList<string> farAhead = await monitor.LookAsync(CancellationToken.None);
        clock.Now = new DateTimeOffset(2027, 11, 15, 8, 0, 0, TimeSpan.Zero);
        IReadOnlyList<string> runningOut = await monitor.LookAsync(CancellationToken.None);

        Assert.Empty(farAhead);
        Assert.Equal(["usage_records"], runningOut);
    }
}
