using System.CommandLine;
using Grpc.Core;
using Grpc.Net.Client;
using Metering.Client.Channels;

namespace Metering.Cli.Commands;

/// <summary>What a client command's action gets: the open channel and the caller's key as call headers.</summary>
internal sealed record ServerCall(GrpcChannel Channel, Metadata Headers, ServerList Server);

/// <summary>
/// A command that works through a running server, as the caller its key names, like `kubectl` or
/// `psql`: the server's role policy decides, and the audit query log records the real caller.
/// Exit codes are <see cref="ExitCodes"/>'s, printed in every such command's help: 2 bad usage found
/// before any call (a missing key, an unreadable file); 4 the server refused (printed as status,
/// ErrorInfo reason and message); 5 no server answers.
/// </summary>
internal static class ClientCommand
{
    /// <summary>
    /// A command with <paramref name="symbols"/> and the server options. Its action runs with an
    /// open channel; <see cref="UsageException"/> from it exits with 2, an <see cref="RpcException"/> with 4 (5 when no server answers).
    /// </summary>
    public static Command Create(string name, string description, IEnumerable<Symbol> symbols,
        Func<ParseResult, ServerCall, CancellationToken, Task<int>> action, bool anonymous = false)
    {
        Command command = Define(name, description, symbols);
        SetAction(command, action, anonymous);
        return command;
    }

    /// <summary>A command holding <paramref name="symbols"/> (arguments, options, subcommands), with no action yet.</summary>
    public static Command Define(string name, string description, IEnumerable<Symbol> symbols)
    {
        var command = new Command(name, description);
        foreach (Symbol symbol in symbols)
        {
            Add(command, symbol);
        }

        return command;
    }

    /// <summary>
    /// Adds the server options to <paramref name="command"/> and runs <paramref name="action"/> as a
    /// client call; an <paramref name="anonymous"/> one (a published list) needs no key.
    /// </summary>
    public static void SetAction(Command command, Func<ParseResult, ServerCall, CancellationToken, Task<int>> action, bool anonymous = false)
    {
        var connection = new ServerConnection();
        connection.AddTo(command);
        command.Description = $"{command.Description?.TrimEnd()}\n\n{ExitCodes.Table}";
        command.SetAction((parse, cancellationToken) => RunAsync(connection, parse, action, cancellationToken, anonymous));
    }

    public static async Task<int> RunAsync(ServerConnection connection, ParseResult parse,
        Func<ParseResult, ServerCall, CancellationToken, Task<int>> action, CancellationToken cancellationToken, bool anonymous = false)
    {
        string? key = connection.ResolveApiKey(parse);
        if (key is null && !anonymous)
        {
            return Usage($"give --api-key or set {ServerConnection.ApiKeyVariable} (an operator issues keys with `metering key issue`; the first operator key comes from `metering key bootstrap`)");
        }

        if (!connection.TryOpen(parse, out GrpcChannel? opened, out string? error))
        {
            return Usage(error);
        }

        using GrpcChannel channel = opened;
        ServerList server = parse.GetValue(connection.Server)!;
        try
        {
            return await action(parse, new ServerCall(channel, key is null ? [] : ServerConnection.Bearer(key), server), cancellationToken);
        }
        catch (UsageException bad)
        {
            return Usage(bad.Message);
        }
        catch (RpcException e)
        {
            return Refused(e, server);
        }
    }

    /// <summary>
    /// Prints what became of a call the server did not answer with a result: one line saying no
    /// server answers (exit 5), or the refusal's status, reason and message (exit 4).
    /// </summary>
    public static int Refused(RpcException e, ServerList server)
    {
        if (ExitCodes.IsUnreachable(e))
        {
            // A server whose certificate is not trusted is as unreachable as none, but the remedy differs.
            if (ExitCodes.IsDatabaseUnavailable(e))
            {
                Console.Error.WriteLine($"error: the server at {server} cannot reach its database ({e.Status.Detail}); nothing was changed, retry later.");
                return ExitCodes.Unreachable;
            }

            Console.Error.WriteLine(e.InnerException?.InnerException is System.Security.Authentication.AuthenticationException
                ? $"error: cannot reach {server} securely ({e.InnerException.Message}: {e.InnerException.InnerException.Message}). Name the CA that issued its certificate with --ca or METERING_CA."
                : $"error: no Metering server answers at {server} ({e.InnerException?.Message ?? e.Status.Detail}). Start one with `metering serve`, or name it with --server or METERING_SERVER.");
            return ExitCodes.Unreachable;
        }

        Console.Error.WriteLine($"refused: {ServerConnection.Describe(e)}");
        return ExitCodes.Refused;
    }

    /// <summary>Prints a usage error and returns its exit code, 2.</summary>
    public static int Usage(string message)
    {
        Console.Error.WriteLine($"error: {message}");
        return ExitCodes.Usage;
    }

    private static void Add(Command command, Symbol symbol)
    {
        switch (symbol)
        {
            case Argument argument:
                command.Arguments.Add(argument);
                break;
            case Option option:
                command.Options.Add(option);
                break;
            case Command subcommand:
                command.Subcommands.Add(subcommand);
                break;
            default:
                throw new ArgumentException($"{symbol.Name} is neither an argument, an option nor a command", nameof(symbol));
        }
    }
}
