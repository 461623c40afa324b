using Microsoft.Extensions.Logging;

namespace Metering.Probe.Reporting;

/// <summary>
/// Progress lines on standard error, one per message, so standard output keeps only the result
/// table. A provider's node has no logging stack to configure; this is all the probe needs.
/// </summary>
internal sealed class StderrLogger(TextWriter output, LogLevel minimum) : ILogger
{
    private readonly Lock _gate = new();

    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel >= minimum && logLevel != LogLevel.None;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (!IsEnabled(logLevel))
        {
            return;
        }

        string level = logLevel switch
        {
            LogLevel.Warning => "warning: ",
            LogLevel.Error or LogLevel.Critical => "error: ",
            _ => string.Empty,
        };
        string line = $"[{DateTime.UtcNow:HH:mm:ss.fff}] {level}{formatter(state, exception)}";
        lock (_gate)
        {
            output.WriteLine(line);
            if (exception is not null)
            {
                output.WriteLine(exception.ToString());
            }
        }
    }
}
