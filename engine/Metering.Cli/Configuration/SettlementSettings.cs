using Metering.Engine.Settlement;

namespace Metering.Cli.Configuration;

/// <summary>
/// The settings area `Settlement`: how the server's settlement runs read and commit a day. None of
/// them changes a run's result; the defaults are the engine's own (<see cref="SettlementOptions"/>).
/// </summary>
internal sealed class SettlementSettings
{
    private static readonly SettlementOptions Engine = new();

    /// <summary>The longest statement timeout a run may be given: a day's run that needs more is a fault, not a setting.</summary>
    public static readonly TimeSpan StatementTimeoutMax = TimeSpan.FromHours(24);

    /// <summary>The longest fault-drill pause: long enough to kill a run by hand, short enough not to hold a day's lock for long.</summary>
    public static readonly TimeSpan PauseBeforeCommitMax = TimeSpan.FromMinutes(10);

    /// <summary>Connections that read one day side by side, 1 to <see cref="SettlementOptions.DaySegmentsMax"/>.</summary>
    public int DaySegments { get; set; } = Engine.DaySegments;

    /// <summary>Longest a run may take before PostgreSQL cancels its statements, 1 s to <see cref="StatementTimeoutMax"/>.</summary>
    public TimeSpan StatementTimeout { get; set; } = Engine.StatementTimeout;

    /// <summary>For fault drills: how long a run waits, its work done and checked, before it commits; zero in normal runs.</summary>
    public TimeSpan PauseBeforeCommit { get; set; } = Engine.PauseBeforeCommit;

    public void Validate()
    {
        Require(DaySegments is >= 1 and <= SettlementOptions.DaySegmentsMax, nameof(DaySegments), $"between 1 and {SettlementOptions.DaySegmentsMax}");
        Require(StatementTimeout >= TimeSpan.FromSeconds(1) && StatementTimeout <= StatementTimeoutMax, nameof(StatementTimeout), "between 1 second and 24 hours");
        Require(PauseBeforeCommit >= TimeSpan.Zero && PauseBeforeCommit <= PauseBeforeCommitMax, nameof(PauseBeforeCommit), "between 0 and 10 minutes");
    }

    public SettlementOptions ToOptions() => new() { DaySegments = DaySegments, StatementTimeout = StatementTimeout, PauseBeforeCommit = PauseBeforeCommit };

    private static void Require(bool condition, string name, string range)
    {
        if (!condition)
        {
            throw new ArgumentOutOfRangeException(name, $"Settlement setting {name} must be {range}.");
        }
    }
}
