namespace Metering.Client.Utilisation;

/// <summary>Why no SM-activity figures could be read.</summary>
public enum GpuActivityProblem
{
    /// <summary>The source did not answer: connection refused, a timeout, an HTTP error status, a program that failed.</summary>
    Unreachable,

    /// <summary>The source answered with something that is not the figures: garbage, a missing metric, a value outside 0 to 1.</summary>
    BadOutput,
}

/// <summary>A source of GPU activity (dcgm-exporter, nvidia-smi) that gave no usable figures, and why, as a sentence.</summary>
public sealed class GpuActivityException(GpuActivityProblem problem, string message, Exception? inner = null) : Exception(message, inner)
{
    public GpuActivityProblem Problem { get; } = problem;
}
