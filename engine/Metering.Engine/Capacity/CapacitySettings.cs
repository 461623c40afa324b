namespace Metering.Engine.Capacity;

/// <summary>
/// The capacity service's parameters and bounds, each named, with a default, and checked at
/// start-up by <see cref="Validate"/>.
/// </summary>
public sealed class CapacitySettings
{
    /// <summary>
    /// The time the runs of one kernel on one device (warm-up and timed runs) take at the healthy
    /// threshold when the server sizes the work from the catalog's reference (Capacity/README.md, "Timing").
    /// </summary>
    public TimeSpan ChallengeKernelTime { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// What every deadline grants beyond the work's expected time, for the network and the probe's
    /// start-up (process, driver, kernel compilation); the server subtracts it from the time it
    /// measured before it computes a rate. Below twice <see cref="ChallengeKernelTime"/>, so that a
    /// device at half the healthy rate misses even a one-device deadline.
    /// </summary>
    public TimeSpan ChallengeAllowance { get; set; } = TimeSpan.FromSeconds(8);

    /// <summary>Timed runs per kernel that a challenge sets (the probe's --runs); each kernel also runs once untimed first.</summary>
    public int ChallengeRunsPerKernel { get; set; } = 3;

    /// <summary>How long an issued nonce may wait for its attestation, counted from its commitment deadline.</summary>
    public TimeSpan NonceTtl { get; set; } = TimeSpan.FromMinutes(30);

    /// <summary>How long a completed fleet validation counts, from its completion; then the provider validates again.</summary>
    public TimeSpan ValidationValidity { get; set; } = TimeSpan.FromDays(90);

    /// <summary>
    /// The least time between two inventory declarations of one provider. Each declaration draws
    /// a new sample, so a provider that could redeclare at will could redraw until the sample
    /// misses its weak nodes.
    /// </summary>
    public TimeSpan InventoryRedeclarationInterval { get; set; } = TimeSpan.FromDays(30);

    /// <summary>The confidence of the sampling claim, in percent.</summary>
    public int ConfidencePercent { get; set; } = 95;

    /// <summary>The share of declared nodes the claim says conform, in percent.</summary>
    public int ConformingPercent { get; set; } = 95;

    /// <summary>Most nodes in one inventory.</summary>
    public int NodesMax { get; set; } = 20_000;

    /// <summary>Longest review reasons, in characters.</summary>
    public int ReasonsMax { get; set; } = 4_000;

    /// <summary>
    /// Most report verifications (the CPU-heavy recomputation of opened leaves) running at once
    /// over all providers; each provider has at most one of them, and the others wait for a slot.
    /// </summary>
    public int VerificationsConcurrentMax { get; set; } = 2;

    public void Validate()
    {
        Require(ChallengeKernelTime >= TimeSpan.FromMilliseconds(100) && ChallengeKernelTime <= TimeSpan.FromMinutes(5), nameof(ChallengeKernelTime), "between 100 ms and 5 minutes");
        Require(ChallengeAllowance >= TimeSpan.FromMilliseconds(100) && ChallengeAllowance < 2 * ChallengeKernelTime, nameof(ChallengeAllowance),
            "at least 100 ms and below twice ChallengeKernelTime");
        Require(ChallengeRunsPerKernel is >= 1 and <= 10, nameof(ChallengeRunsPerKernel), "between 1 and 10");
        Require(NonceTtl >= TimeSpan.FromMinutes(1) && NonceTtl <= TimeSpan.FromDays(1), nameof(NonceTtl), "between 1 minute and 1 day");
        Require(ValidationValidity >= TimeSpan.FromDays(1) && ValidationValidity <= TimeSpan.FromDays(3 * 366), nameof(ValidationValidity), "between 1 day and 3 years");
        Require(InventoryRedeclarationInterval >= TimeSpan.FromMinutes(1) && InventoryRedeclarationInterval <= TimeSpan.FromDays(366), nameof(InventoryRedeclarationInterval),
            "between 1 minute and 366 days");
        Require(ConfidencePercent is >= 50 and <= 99, nameof(ConfidencePercent), "between 50 and 99");
        Require(ConformingPercent is >= 50 and <= 99, nameof(ConformingPercent), "between 50 and 99");
        Require(NodesMax is >= 1 and <= 100_000, nameof(NodesMax), "between 1 and 100000");
        Require(VerificationsConcurrentMax is >= 1 and <= 64, nameof(VerificationsConcurrentMax), "between 1 and 64");
        Require(ReasonsMax is >= 1 and <= 20_000, nameof(ReasonsMax), "between 1 and 20000");
    }

    private static void Require(bool condition, string name, string range)
    {
        if (!condition)
        {
            throw new ArgumentOutOfRangeException(name, $"Capacity setting {name} must be {range}.");
        }
    }
}
