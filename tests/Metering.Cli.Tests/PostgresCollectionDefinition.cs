using Metering.Engine.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>
/// The tests of this assembly that name <see cref="PostgresCollection"/> share one embedded
/// PostgreSQL; xunit looks for a collection's definition in the assembly of its tests only.
/// </summary>
[CollectionDefinition(PostgresCollection.Name)]
public sealed class PostgresCollectionDefinition : ICollectionFixture<PostgresFixture>;
