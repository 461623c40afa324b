using System.CommandLine;

namespace Metering.Cli.Commands;

/// <summary>`metering agent`: long-running helpers a provider runs beside its scheduler.</summary>
internal static class AgentCommand
{
    public static Command Create() =>
        ClientCommand.Define("agent", "Provider-side agents that feed the server from a scheduler.", [FollowSacctCommand.Create()]);
}
