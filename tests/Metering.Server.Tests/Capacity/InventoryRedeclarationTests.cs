using Grpc.Core;
using Metering.Engine.Capacity;
using Metering.Probe.Attestation.Results;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Server.Tests.Capacity;

/// <summary>
/// A provider redraws its sample by declaring again, or hides a failed node behind a new
/// inventory: each declaration waits out the redeclaration period, and a validation with a failed
/// node stays on record and binding until a newer one completes.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class InventoryRedeclarationTests(PostgresFixture postgres)
{
    [Fact]
    public async Task An_inventory_redeclared_inside_the_period_is_refused_and_changes_nothing()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres);
        TestNode[] nodes = await scene.NodesAsync(2);
        FleetValidation first = await scene.DeclareAsync(nodes);
        scene.Clock.Advance(TimeSpan.FromDays(30) - TimeSpan.FromMilliseconds(1));

        var (status, reason, error) = await CapacityScene.RefusalAsync(() => scene.DeclareAsync(nodes.Take(1)));

        Assert.Equal((StatusCode.FailedPrecondition, "INVENTORY_TOO_SOON"), (status, reason));
        Assert.Equal((first.DrawnUnixMs + (long)TimeSpan.FromDays(30).TotalMilliseconds).ToString(System.Globalization.CultureInfo.InvariantCulture),
            IngestCall.Metadata(error, "next_declaration_unix_ms"));
        Assert.Equal(1L, await scene.Server.ScalarAsync<long>("SELECT count(*) FROM capacity_inventories"));
        FleetValidation unchanged = await scene.Client.GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = scene.Code }, scene.Key);
        Assert.Equal(first, unchanged);

        scene.Clock.Advance(TimeSpan.FromMilliseconds(1));
        FleetValidation second = await scene.DeclareAsync(nodes.Take(1));
        Assert.Equal((2u, 1u), (second.InventoryVersion, second.NodeCount));
    }

    [Fact]
    public async Task A_validation_with_a_failed_node_completes_when_the_inventory_is_redeclared_and_binds_until_a_newer_one_completes()
    {
        // A redeclaration period of a minute, shorter than a nonce's life (deadline + 30 minutes),
        // so that nodes can still be pending, their reports not yet sent, when the provider declares again.
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres, capacity: new CapacitySettings { InventoryRedeclarationInterval = TimeSpan.FromMinutes(1) });
        long application = await scene.ApplicationAwaitingVerificationAsync();
        TestNode[] nodes = await scene.NodesAsync(3);
        await scene.DeclareAsync(nodes);
        FleetValidation good = null!;
        foreach (TestNode node in nodes)
        {
            good = (await scene.AttestAsync(node)).Validation;
        }

        Assert.Equal((FleetValidationState.ValidationComplete, 300_000_000L), (good.State, good.VerifiedFp16Gflops));

        // A minute on, a new declaration: two nodes commit in time, the first commits after its deadline and fails.
        scene.Clock.Advance(TimeSpan.FromMinutes(1));
        FleetValidation failing = await scene.DeclareAsync(nodes);
        NodeChallenge challenge = await scene.ChallengeAsync(nodes[0]);
        ProbeReport report = CapacityScene.RunProbe(challenge, nodes[0]);
        foreach (TestNode node in nodes.Skip(1))
        {
            await scene.CommitAsync(node, CapacityScene.RunProbe(await scene.ChallengeAsync(node), node));
        }

        scene.Clock.Advance(DateTimeOffset.FromUnixTimeMilliseconds(challenge.DeadlineUnixMs + 1) - scene.Clock.Now);
        Assert.Equal("COMMITMENT_LATE", (await CapacityScene.RefusalAsync(() => scene.CommitAsync(nodes[0], report))).Reason);
        FleetValidation failed = await scene.Client.GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = scene.Code, ValidationId = failing.ValidationId }, scene.Key);
        Assert.Equal((FleetValidationState.ValidationCollecting, 1u), (failed.State, failed.FailedNodes));

        // Declaring again at once, to draw a sample without the failure, is refused; after the period it closes the failing validation instead of erasing it.
        Assert.Equal("INVENTORY_TOO_SOON", (await CapacityScene.RefusalAsync(() => scene.DeclareAsync(nodes))).Reason);
        scene.Clock.Advance(DateTimeOffset.FromUnixTimeMilliseconds(failing.DrawnUnixMs) + TimeSpan.FromMinutes(1) - scene.Clock.Now);
        FleetValidation next = await scene.DeclareAsync(nodes);

        FleetValidation closed = await scene.Client.GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = scene.Code, ValidationId = failing.ValidationId }, scene.Key);
        Assert.Equal((FleetValidationState.ValidationComplete, 0u, 3u, 2u), (closed.State, closed.PassedNodes, closed.FailedNodes, closed.AbandonedNodes));
        Assert.Equal((3u, 0L), (closed.NonconformingNodesBound, closed.VerifiedFp16Gflops));
        Assert.All(closed.Sample, node => Assert.Equal(NodeOutcome.NodeFailed, node.Outcome));
        Assert.Equal(FleetValidationState.ValidationCollecting, next.State);

        // The earlier, good validation has not expired, yet the failed one is the validation in force: the verification stage takes its figure.
        Assert.True(good.ExpiresUnixMs > scene.Clock.Now.ToUnixTimeMilliseconds());
        var (_, reason, error) = await CapacityScene.RefusalAsync(() => scene.Registry.Client.RecordVerificationAsync(
            new VerificationDecision { ApplicationId = application, Pass = true, VerifiedFp16Gflops = 0 }, RegistryScene.Operator).ResponseAsync);
        Assert.Equal("CAPACITY_BELOW_MINIMUM", reason);
        Assert.Contains($"fleet validation {failing.ValidationId} ", error.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_node_silent_past_its_deadline_fails_when_the_inventory_is_redeclared_so_its_validation_is_not_superseded()
    {
        await using CapacityScene scene = await CapacityScene.StartAsync(postgres, capacity: new CapacitySettings { InventoryRedeclarationInterval = TimeSpan.FromMinutes(1) });
        TestNode[] nodes = await scene.NodesAsync(1);
        FleetValidation first = await scene.DeclareAsync(nodes);
        NodeChallenge challenge = await scene.ChallengeAsync(nodes[0]);
        // The provider makes no call after its node misses the deadline, and declares again instead.
        scene.Clock.Advance(TimeSpan.FromMinutes(1));
        Assert.True(scene.Clock.Now.ToUnixTimeMilliseconds() > challenge.DeadlineUnixMs);

        await scene.DeclareAsync(nodes);

        FleetValidation closed = await scene.Client.GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = scene.Code, ValidationId = first.ValidationId }, scene.Key);
        Assert.Equal((FleetValidationState.ValidationComplete, 1u, 0u, 0L), (closed.State, closed.FailedNodes, closed.AbandonedNodes, closed.VerifiedFp16Gflops));
        Assert.Equal("no commitment by the deadline", closed.Sample.Single().Detail);
    }
}
