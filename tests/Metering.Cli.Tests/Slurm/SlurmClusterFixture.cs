using System.Runtime.Versioning;

namespace Metering.Cli.Tests.Slurm;

/// <summary>One real Slurm cluster per test class that asks for it, torn down after the class.</summary>
[SupportedOSPlatform("linux")]
public sealed class SlurmClusterFixture : IAsyncLifetime
{
    private SlurmCluster? _cluster;

    internal SlurmCluster Cluster => _cluster ?? throw new InvalidOperationException("the Slurm cluster has not started");

    public async Task InitializeAsync() => _cluster = await SlurmCluster.StartAsync();

    public async Task DisposeAsync()
    {
        if (_cluster is not null)
        {
            await _cluster.DisposeAsync();
        }
    }
}
