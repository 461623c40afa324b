using System.CommandLine;
using Metering.Cli.Commands;

var root = new RootCommand("""
    Metering: meters GPU usage of admitted compute providers for the Shenzhen training-compute
    voucher programme (训力券). Usage streams in over gRPC, is validated, normalised to FP16
    PFLOPS·h, hash-chained per stream and committed to PostgreSQL before it is acknowledged.

    Without --connection (or METERING_CONNECTION) commands use the embedded default: a private
    PostgreSQL started from the machine's installed server binaries in ./.metering/pg.
    """);
root.Subcommands.Add(ServeCommand.Create());
root.Subcommands.Add(DbCommand.Create());
root.Subcommands.Add(KeyCommand.Create());
root.Subcommands.Add(DemoCommand.Create());
root.Subcommands.Add(IngestFileCommand.Create());
root.Subcommands.Add(AuditCommand.Create());
return await root.Parse(args).InvokeAsync();
