using Metering.Engine.Capacity;
using Metering.Engine.Registry;
using Metering.Engine.Storage;
using Npgsql;

namespace Metering.Engine.Ingest;

/// <summary>
/// The registry has not changed the provider since the batch was checked against its admission
/// snapshot: the organisation's epoch, read under a share lock, is the snapshot's. A changed epoch
/// rolls the batch back so that it is checked again against what the registry says now.
/// </summary>
internal sealed class AdmissionEpochStep(string providerId) : ICommitStep
{
    /// <summary>The epoch of the snapshot the batch was checked against; set before each commit.</summary>
    public long ExpectedEpoch { get; set; }

    public async Task RunAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, CancellationToken cancellationToken)
    {
        if (await AdmissionGate.ReadEpochForShareAsync(connection, transaction, providerId) != ExpectedEpoch)
        {
            throw new AdmissionChangedException(providerId);
        }
    }
}

/// <summary>
/// The batches (one stream's, or a group commit's), with everything already committed, never use
/// more devices of a model at any second than the provider's validated fleet holds
/// (<see cref="FleetConcurrency"/>).
/// </summary>
internal sealed class FleetConcurrencyStep(string providerId, IReadOnlyList<PreparedRecords> batches, TimeProvider time, int minutesPerBatchMax) : ICommitStep
{
    /// <summary>The fleet of the admission snapshot the batch was checked against; set before each commit.</summary>
    public FleetSnapshot? Fleet { get; set; }

    public Task RunAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, CancellationToken cancellationToken) =>
        FleetConcurrency.CheckAsync(connection, transaction, providerId, batches,
            Fleet ?? throw new InvalidOperationException("The fleet check ran without a fleet."), time.GetUtcNow().ToUnixTimeMilliseconds(), minutesPerBatchMax);
}
