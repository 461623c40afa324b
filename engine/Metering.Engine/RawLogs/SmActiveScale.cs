namespace Metering.Engine.RawLogs;

/// <summary>
/// How a JSON Lines line writes its SM-activity figure (rawlog.proto's <c>SmActiveScale</c>; a test
/// keeps the two with the same names and numbers).
/// </summary>
public enum SmActiveScale
{
    /// <summary>Not set: the mapping names no SM-activity property.</summary>
    Unspecified = 0,

    /// <summary>Whole basis points, 0 to 10,000.</summary>
    BasisPoints = 1,

    /// <summary>A fraction, 0 to 1 (DCGM_FI_PROF_SM_ACTIVE).</summary>
    Fraction = 2,

    /// <summary>A percentage, 0 to 100 (nvidia-smi utilization.gpu).</summary>
    Percent = 3,
}
