using Metering.Engine.Capacity;
using Metering.Engine.Registry;
using Metering.Engine.Storage;
using Npgsql;

namespace Metering.Engine.Ingest;

/// <summary>
/// The registry has not changed the provider since the batch was checked against its admission
/// snapshot: the organisation's epoch, read under a share lock, is the snapshot's. A changed epoch
/// rolls the batch back so that it is checked again against what the registry says now. The read
/// goes with the head lock, in its round trip, so the check costs none of its own and a batch
/// whose registry changed is rolled back before its rows are copied.
/// </summary>
internal sealed class AdmissionEpochStep(string providerId) : ICommitStep
{
    /// <summary>The epoch of the snapshot the batch was checked against; set before each commit.</summary>
    public long ExpectedEpoch { get; set; }

    public NpgsqlBatchCommand ReadWithLock() => AdmissionGate.EpochForShare(providerId);

    public void CheckLockRead(object? value)
    {
        // No row: the organisation is not registered, which no snapshot's epoch matches.
        if ((value is long epoch ? epoch : -1) != ExpectedEpoch)
        {
            throw new AdmissionChangedException(providerId);
        }
    }

    public Task<NpgsqlBatchCommand?> RunAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, CancellationToken cancellationToken) =>
        Task.FromResult<NpgsqlBatchCommand?>(null);
}

/// <summary>
/// The batches (one stream's, or a group commit's), with everything already committed, never use
/// more devices of a model at any second than the provider's validated fleet holds
/// (<see cref="FleetConcurrency"/>). The new sums are written with the head update, in its round trip.
/// </summary>
internal sealed class FleetConcurrencyStep(string providerId, IReadOnlyList<PreparedRecords> batches, TimeProvider time, int minutesPerBatchMax) : ICommitStep
{
    /// <summary>The fleet of the admission snapshot the batch was checked against; set before each commit.</summary>
    public FleetSnapshot? Fleet { get; set; }

    public Task<NpgsqlBatchCommand?> RunAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, CancellationToken cancellationToken) =>
        FleetConcurrency.CheckAsync(connection, transaction, providerId, batches,
            Fleet ?? throw new InvalidOperationException("The fleet check ran without a fleet."), time.GetUtcNow().ToUnixTimeMilliseconds(), minutesPerBatchMax);
}
