using Metering.Engine.Fixtures;

namespace Metering.Cli.Tests.Slurm;

/// <summary>
/// The real-Slurm tests, a collection of their own so that xunit runs them beside the
/// <see cref="PostgresCollection"/>: most of their time is spent waiting on Slurm (a job's time
/// limit, a requeue, a follower's polls), which the other tests can use. They use the same
/// embedded PostgreSQL (<see cref="PostgresFixture"/> is one server per test process); each class
/// still starts its own Slurm cluster, since the follower's tests read sacct by time window and
/// would see the other class's jobs.
/// </summary>
[CollectionDefinition(Name)]
public sealed class SlurmCollection : ICollectionFixture<PostgresFixture>
{
    public const string Name = "slurm";
}
