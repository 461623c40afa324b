namespace Metering.Engine.Audit;

/// <summary>The verifier's threading: a fixed number of workers draining a numbered list of work items.</summary>
internal static class ParallelWork
{
    /// <summary>
    /// Runs work items 0 to count - 1, at most <paramref name="threads"/> at once. The first
    /// failure stops the rest and is the one raised.
    /// </summary>
    public static async Task RunAsync(int count, int threads, Func<int, CancellationToken, Task> work, CancellationToken cancellationToken)
    {
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        int next = -1;
        async Task WorkAsync()
        {
            int item;
            while ((item = Interlocked.Increment(ref next)) < count)
            {
                stop.Token.ThrowIfCancellationRequested();
                try
                {
                    await work(item, stop.Token);
                }
                catch
                {
                    await stop.CancelAsync();
                    throw;
                }
            }
        }

        var workers = new Task[Math.Clamp(count, 0, threads)];
        for (int w = 0; w < workers.Length; w++)
        {
            workers[w] = Task.Run(WorkAsync, CancellationToken.None);
        }

        try
        {
            await Task.WhenAll(workers);
        }
        catch when (!cancellationToken.IsCancellationRequested)
        {
            Exception? first = workers.Where(t => t.IsFaulted).Select(t => t.Exception!.InnerException).FirstOrDefault(e => e is not OperationCanceledException);
            if (first is not null)
            {
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(first);
            }

            throw;
        }
    }
}
