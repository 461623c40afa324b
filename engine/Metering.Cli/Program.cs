using System.CommandLine;
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
    """);
root.Subcommands.Add(ServeCommand.Create());
root.Subcommands.Add(DbCommand.Create());
root.Subcommands.Add(KeyCommand.Create());
root.Subcommands.Add(RegistryCommand.Create());
root.Subcommands.Add(CapacityCommand.Create());
root.Subcommands.Add(DemoCommand.Create());
root.Subcommands.Add(IngestFileCommand.Create());
root.Subcommands.Add(VoucherCommand.Create());
root.Subcommands.Add(SettleCommand.Create());
root.Subcommands.Add(AuditCommand.Create());
root.Subcommands.Add(ClockCommand.Create());
ParseResult parsed = root.Parse(args);
int exitCode = await parsed.InvokeAsync();
// Bad usage (a missing, malformed or conflicting option) exits with 2, as the commands' own
// input checks do; 1 stays for refusals, so scripts can tell a typo from a rule.
return parsed.Errors.Count > 0 ? 2 : exitCode;
