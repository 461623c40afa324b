using Grpc.Health.V1;

namespace Metering.Cli.Tests;

/// <summary>Waits for a served process's health check, which runs on its own period after start.</summary>
internal static class HealthWait
{
    /// <summary>The server's status once it is SERVING, or the last one seen after the health check's first runs.</summary>
    public static async Task<HealthCheckResponse.Types.ServingStatus> ServingWithinAsync(Health.HealthClient health)
    {
        DateTime until = DateTime.UtcNow.AddSeconds(15);
        HealthCheckResponse.Types.ServingStatus status;
        do
        {
            status = (await health.CheckAsync(new HealthCheckRequest())).Status;
            if (status == HealthCheckResponse.Types.ServingStatus.Serving)
            {
                break;
            }

            await Task.Delay(200);
        }
        while (DateTime.UtcNow < until);

        return status;
    }
}
