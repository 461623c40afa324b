namespace Metering.Engine.RawLogs;

/// <summary>The formats a raw log may have; the same names and numbers as rawlog.proto's <c>LogFormat</c>.</summary>
public enum RawLogFormat
{
    /// <summary>Not used.</summary>
    Unspecified = 0,

    /// <summary><c>sacct --parsable2</c> output with its header line.</summary>
    SacctParsable2 = 1,

    /// <summary>One JSON object per line, in the schema of rawlog-formats.md.</summary>
    JsonLines = 2,
}
