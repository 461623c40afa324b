using Grpc.Core;
using Grpc.Net.Client;
using Metering.Client.Channels;
using Metering.Protocol.V1;

namespace Metering.Samples.ProviderAgent;

/// <summary>
/// The server's date. A sandbox's clock runs ahead of this machine's, and the server judges every
/// record's time by its own clock, so the day to replay is "yesterday" as the server sees it.
/// </summary>
internal static class ServerClock
{
    private static readonly TimeSpan Shanghai = TimeSpan.FromHours(8);

    /// <summary>Yesterday in Asia/Shanghai by the server's clock (SandboxService.GetClock, any role).</summary>
    public static async Task<DateOnly> YesterdayAsync(GrpcChannel channel, string apiKey)
    {
        Metadata headers = MeteringChannel.Bearer(apiKey);
        Clock clock = await new SandboxService.SandboxServiceClient(channel).GetClockAsync(new GetClockRequest(), headers);
        DateTimeOffset now = DateTimeOffset.FromUnixTimeMilliseconds(clock.NowUnixMs).ToOffset(Shanghai);
        return DateOnly.FromDateTime(now.DateTime).AddDays(-1);
    }
}
