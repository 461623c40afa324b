using Metering.Server.Ingest;

namespace Metering.Server.Tests.Ingest;

public sealed class StreamLeasesTests
{
    [Fact]
    public async Task A_newcomer_that_gives_up_while_waiting_leaves_no_orphan_lease()
    {
        var leases = new StreamLeases();
        using StreamLeases.Lease stuck = await leases.AcquireAsync("p", "s", CancellationToken.None);
        // The holder never lets go (its handler is stuck); the newcomer's caller gives up.
        using var givesUp = new CancellationTokenSource(TimeSpan.FromMilliseconds(200));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => leases.AcquireAsync("p", "s", givesUp.Token));

        // The next opener neither waits for the abandoned newcomer nor finds it registered.
        Assert.Equal(0, leases.ActiveCount);
        using StreamLeases.Lease next = await leases.AcquireAsync("p", "s", CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(5));
        Assert.True(stuck.TakenOver);
        Assert.True(stuck.Token.IsCancellationRequested);
    }

    [Fact]
    public async Task Taking_over_cancels_the_holder_and_waits_until_it_is_released()
    {
        var leases = new StreamLeases();
        StreamLeases.Lease first = await leases.AcquireAsync("p", "s", CancellationToken.None);
        Task<StreamLeases.Lease> second = leases.AcquireAsync("p", "s", CancellationToken.None);

        Assert.True(first.Token.IsCancellationRequested);
        Assert.False(second.IsCompleted);
        first.Dispose();
        using StreamLeases.Lease taken = await second.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Equal(1, leases.ActiveCount);
    }
}
