using Metering.Probe.Cli;

// The first word picks the subcommand; without one the probe measures, as it always has, so
// scripts that call `metering-probe --nonce …` keep working.
return args switch
{
    ["keygen", ..] => KeygenCommand.Run(args[1..]),
    ["run", ..] => await RunCommand.RunAsync(args[1..]),
    _ => MeasureCommand.Run(args),
};
