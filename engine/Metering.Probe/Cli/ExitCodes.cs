namespace Metering.Probe.Cli;

/// <summary>
/// The probe's exit codes, the same for every subcommand so that a script can tell a typo from a
/// missing GPU from a refusal. Documented in the help text and in the README.
/// </summary>
internal static class ExitCodes
{
    public const int Success = 0;

    /// <summary>A run failed: a kernel, a driver, a file that could not be written.</summary>
    public const int RunFailed = 1;

    /// <summary>Bad options, or a file in the way; nothing was run and nothing changed.</summary>
    public const int Usage = 2;

    /// <summary>No accelerator of the asked kind; for `--device auto`, no GPU at all.</summary>
    public const int NoAccelerator = 3;

    /// <summary>The probe's own check of its checksums failed: the device computed wrong results.</summary>
    public const int SelfCheckFailed = 4;

    /// <summary>`run`: the server refused a call, or could not be reached.</summary>
    public const int Refused = 5;

    /// <summary>`run`: the report was accepted and the node failed (a device missing, unhealthy or of another model).</summary>
    public const int NodeFailed = 6;

    /// <summary>`run`: the report was accepted and a device awaits an operator's review.</summary>
    public const int AwaitingReview = 7;
}
