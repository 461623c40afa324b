using Metering.Engine.Ingest;
using Metering.Protocol.V1;

namespace Metering.Engine.RawLogs;

/// <summary>What became of one line.</summary>
public enum LineOutcome
{
    /// <summary>The line is a usage record.</summary>
    Record,

    /// <summary>The line is not metered: a header, a blank line, a CPU-only or unfinished job, a step of a metered allocation.</summary>
    Skipped,

    /// <summary>The line is refused; the reason says why.</summary>
    Refused,
}

/// <summary>Why a line was refused: a RawLogRefusalReason or IngestRefusalReason name and a sentence.</summary>
public readonly record struct LineRefusal(string Reason, string Message)
{
    public static LineRefusal Of(RawLogRefusalReason reason, string message) => new(reason.ContractName(), message);
}

/// <summary>Parses one line of a log format into a usage record (without its sequence number).</summary>
internal interface ILogLineParser
{
    /// <summary>Parses a line. Allocates only for a record or a refusal, never for a skipped line.</summary>
    LineOutcome Parse(ReadOnlySpan<byte> line, out UsageRecord? record, out LineRefusal refusal);
}
