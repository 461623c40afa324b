namespace Metering.Engine.Capacity;

/// <summary>
/// The capacity service's parameters and bounds, each named, with a default, and checked at
/// start-up by <see cref="Validate"/>.
/// </summary>
public sealed class CapacitySettings
{
    /// <summary>How long an issued nonce may wait for its attestation.</summary>
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

    /// <summary>Most unexpired, unused nonces one node may hold at once.</summary>
    public int NoncesOutstandingPerNodeMax { get; set; } = 8;

    /// <summary>Longest review reasons, in characters.</summary>
    public int ReasonsMax { get; set; } = 4_000;

    /// <summary>
    /// Most report verifications (the CPU-heavy recomputation of opened leaves) running at once
    /// over all providers; each provider has at most one of them, and the others wait for a slot.
    /// </summary>
    public int VerificationsConcurrentMax { get; set; } = 2;

    public void Validate()
    {
        Require(NonceTtl >= TimeSpan.FromMinutes(1) && NonceTtl <= TimeSpan.FromDays(1), nameof(NonceTtl), "between 1 minute and 1 day");
        Require(ValidationValidity >= TimeSpan.FromDays(1) && ValidationValidity <= TimeSpan.FromDays(3 * 366), nameof(ValidationValidity), "between 1 day and 3 years");
        Require(InventoryRedeclarationInterval >= TimeSpan.FromMinutes(1) && InventoryRedeclarationInterval <= TimeSpan.FromDays(366), nameof(InventoryRedeclarationInterval),
            "between 1 minute and 366 days");
        Require(ConfidencePercent is >= 50 and <= 99, nameof(ConfidencePercent), "between 50 and 99");
        Require(ConformingPercent is >= 50 and <= 99, nameof(ConformingPercent), "between 50 and 99");
        Require(NodesMax is >= 1 and <= 100_000, nameof(NodesMax), "between 1 and 100000");
        Require(NoncesOutstandingPerNodeMax is >= 1 and <= 64, nameof(NoncesOutstandingPerNodeMax), "between 1 and 64");
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
