using System.CommandLine;
using System.CommandLine.Parsing;
using Metering.Cli;
using Metering.Cli.Commands;

var root = new RootCommand("""
    Metering: meters GPU usage of admitted compute providers for the Shenzhen training-compute
    voucher programme (训力券). Usage streams in over gRPC, is validated, normalised to FP16
    PFLOPS·h, hash-chained per stream and committed to PostgreSQL before it is acknowledged.

    Only serve, db migrate, demo and key bootstrap open the database: without --connection (or
    METERING_CONNECTION) the embedded default, a private PostgreSQL started from the machine's
    installed server binaries in ./.metering/pg. Every other command is a client of a running
    server (--server, default http://127.0.0.1:7390) and acts as the caller its key names
    (--api-key or METERING_API_KEY; --ca for a private CA).

    """ + ExitCodes.Table);
Option<bool> verboseOption = CommonOptions.Verbose();
root.Options.Add(verboseOption);
root.Subcommands.Add(ServeCommand.Create());
root.Subcommands.Add(DbCommand.Create());
root.Subcommands.Add(KeyCommand.Create());
root.Subcommands.Add(RegistryCommand.Create());
root.Subcommands.Add(CapacityCommand.Create());
root.Subcommands.Add(DemoCommand.Create());
root.Subcommands.Add(IngestFileCommand.Create());
root.Subcommands.Add(AgentCommand.Create());
root.Subcommands.Add(VoucherCommand.Create());
root.Subcommands.Add(SettleCommand.Create());
root.Subcommands.Add(AuditCommand.Create());
root.Subcommands.Add(ClockCommand.Create());
root.Subcommands.Add(ConfigCommand.Create());
ParseResult parsed = root.Parse(args);
if (parsed.Errors.Count > 0)
{
    // Bad usage exits with 2, as the commands' own input checks do, and says what is wrong with a
    // pointer to the help rather than the whole help, which buries the one line that matters.
    foreach (ParseError error in parsed.Errors)
    {
        Console.Error.WriteLine($"error: {error.Message}");
    }

    Console.Error.WriteLine($"Run `{CommandPath(parsed.CommandResult)} --help` for usage.");
    return ExitCodes.Usage;
}

bool verbose = parsed.GetValue(verboseOption);
try
{
    return await parsed.InvokeAsync(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
}
catch (Exception e) when (ExitCodes.IsUnreachable(e))
{
    Console.Error.WriteLine($"error: cannot reach {(e is Npgsql.NpgsqlException ? "the database" : "the server")}: {Innermost(e).Message}{(verbose ? "\n" + e : " (--verbose prints the stack trace)")}");
    return ExitCodes.Unreachable;
}
catch (Exception e) when (e is not OperationCanceledException)
{
    Console.Error.WriteLine($"error: unexpected {e.GetType().Name}: {e.Message}{(verbose ? "\n" + e : " (--verbose prints the stack trace)")}");
    return ExitCodes.Unexpected;
}

static string CommandPath(CommandResult command) =>
    command.Parent is CommandResult parent ? $"{CommandPath(parent)} {command.Command.Name}" : command.Command.Name;

static Exception Innermost(Exception e) => e.InnerException is { } inner ? Innermost(inner) : e;
