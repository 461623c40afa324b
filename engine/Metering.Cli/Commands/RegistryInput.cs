using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using Grpc.Core;
using Metering.Engine.Registry;
using Metering.Engine.Time;
using Metering.Protocol.V1;
using ApplicationState = Metering.Protocol.V1.ApplicationState;

namespace Metering.Cli.Commands;

/// <summary>Bad input the parser cannot see (an unreadable application file): exit code 2, nothing changed.</summary>
internal sealed class UsageException(string message) : Exception(message);

/// <summary>The registry of the running server, called as the key's holder.</summary>
internal sealed record RegistryCall(RegistryService.RegistryServiceClient Registry, CallOptions Options);

/// <summary>What a registry subcommand does once its input has been checked: its calls to the server.</summary>
internal delegate Task RegistryWork(RegistryCall call);

/// <summary>
/// The typed options `registry` subcommands parse strictly, and how a subcommand runs: as a
/// client of the running server (ClientCommand's --server, --api-key, --ca), recorded in the
/// registry history under the key's subject. Malformed input is a parse error or a
/// <see cref="UsageException"/> (exit code 2) found before the server is called; the server's
/// refusals exit with 4.
/// </summary>
internal static class RegistryInput
{
    public const int ListLimitMax = ProviderRegistry.ListLimitMax;

    /// <summary>A subcommand with <paramref name="symbols"/>; <see cref="SetAction"/> adds the server options.</summary>
    public static Command Subcommand(string name, string description, params Symbol[] symbols) =>
        ClientCommand.Define(name, description, symbols);

    /// <summary>
    /// Runs the subcommand: <paramref name="prepare"/> checks what the parser could not and
    /// returns the work; only then is the key looked for and the server called, so that bad
    /// input never reaches it.
    /// </summary>
    public static void SetAction(Command command, Func<ParseResult, RegistryWork> prepare)
    {
        var connection = new ServerConnection();
        connection.AddTo(command);
        command.SetAction(async (parse, cancellationToken) =>
        {
            RegistryWork work;
            try
            {
                work = prepare(parse);
            }
            catch (UsageException bad)
            {
                return ClientCommand.Usage(bad.Message);
            }

            return await ClientCommand.RunAsync(connection, parse, async (_, server, token) =>
            {
                await work(new RegistryCall(new RegistryService.RegistryServiceClient(server.Channel), new CallOptions(server.Headers, cancellationToken: token)));
                return 0;
            }, cancellationToken);
        });
    }

    // ---------------------------------------------------------------- typed options

    public static Argument<long> ApplicationId() => new("application-id")
    {
        Description = "The application's id, as `registry applications` lists it.",
    };

    /// <summary>
    /// A text option. A required one has no default: System.CommandLine counts a default as the
    /// option given, and would let a missing one through.
    /// </summary>
    public static Option<string> Text(string name, string description, bool required = true)
    {
        var option = new Option<string>(name) { Description = description, Required = required };
        if (!required)
        {
            option.DefaultValueFactory = _ => "";
        }

        return option;
    }

    public static Option<string> CreditCode(string description, bool required = true) => Text("--code", description, required);

    /// <summary>A calendar date given as yyyy-MM-dd; nothing else is accepted.</summary>
    public static Option<DateOnly?> Date(string name, string description, bool required = true) => new(name)
    {
        Description = $"{description}. Given as yyyy-MM-dd.",
        Required = required,
        CustomParser = result =>
        {
            string text = Token(result);
            if (DateOnly.TryParseExact(text, "yyyy-MM-dd", CultureInfo.InvariantCulture, DateTimeStyles.None, out DateOnly date))
            {
                return date;
            }

            result.AddError($"{name} must be a date as yyyy-MM-dd, not '{text}'.");
            return null;
        },
    };

    /// <summary>A local time in Asia/Shanghai given as "yyyy-MM-dd HH:mm", parsed to its instant.</summary>
    public static Option<DateTimeOffset?> LocalTime(string name, string description) => new(name)
    {
        Description = $"{description}. Given as \"yyyy-MM-dd HH:mm\" in Asia/Shanghai.",
        Required = true,
        CustomParser = result =>
        {
            string text = Token(result);
            if (DateTime.TryParseExact(text, "yyyy-MM-dd HH:mm", CultureInfo.InvariantCulture, DateTimeStyles.None, out DateTime local))
            {
                return new DateTimeOffset(local, ShanghaiTime.Offset);
            }

            result.AddError($"{name} must be a time in Asia/Shanghai as \"yyyy-MM-dd HH:mm\", not '{text}'.");
            return null;
        },
    };

    /// <summary>A whole number within [minimum, maximum].</summary>
    public static Option<int> Number(string name, string description, int minimum, int maximum, int defaultValue)
    {
        var option = new Option<int>(name) { Description = description, DefaultValueFactory = _ => defaultValue };
        option.Validators.Add(result =>
        {
            int value = result.GetValueOrDefault<int>();
            if (value < minimum || value > maximum)
            {
                result.AddError($"{name} must be from {minimum} to {maximum}, not {value}.");
            }
        });
        return option;
    }

    public static Option<int> Limit(string what) =>
        Number("--limit", $"Show at most this many {what}, newest first (1 to {ListLimitMax}).", 1, ListLimitMax, ProviderRegistry.ListLimitDefault);

    /// <summary>
    /// Capacity in PFLOPS with up to six decimals, parsed exactly (decimal, never double) to whole
    /// GFLOPS: 316.608 is 316,608,000 GFLOPS.
    /// </summary>
    public static Option<long?> Pflops(string name, string description) => new(name)
    {
        Description = description,
        CustomParser = result =>
        {
            string text = Token(result);
            if (decimal.TryParse(text, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out decimal pflops)
                && pflops <= long.MaxValue / 1_000_000 && decimal.Truncate(pflops * 1_000_000) == pflops * 1_000_000)
            {
                return (long)(pflops * 1_000_000);
            }

            result.AddError($"{name} must be a non-negative number of PFLOPS with at most six decimals (whole GFLOPS), not '{text}'.");
            return null;
        },
    };

    /// <summary>Exactly one of two flags: both or neither is a usage error.</summary>
    public static void ExactlyOne(Command command, Option<bool> first, Option<bool> second)
    {
        command.Validators.Add(result =>
        {
            bool hasFirst = result.GetValue(first);
            bool hasSecond = result.GetValue(second);
            if (hasFirst && hasSecond)
            {
                result.AddError($"give either {first.Name} or {second.Name}, not both.");
            }
            else if (!hasFirst && !hasSecond)
            {
                result.AddError($"give {first.Name} or {second.Name}.");
            }
        });
    }

    /// <summary>An application state by its proto name, in any case, with `-` or `_`: `admitted`, `AWAITING_VERIFICATION`, `in-public-notice`.</summary>
    public static Option<ApplicationState> State() => new("--state")
    {
        Description = $"Only applications in this state: {string.Join(", ", States().Select(s => RegistryOutput.Name(s)))}.",
        CustomParser = result =>
        {
            string text = Token(result);
            string wanted = text.Replace('-', '_');
            foreach (ApplicationState state in States())
            {
                if (string.Equals(RegistryOutput.Name(state), wanted, StringComparison.OrdinalIgnoreCase))
                {
                    return state;
                }
            }

            result.AddError($"--state '{text}' is not one of: {string.Join(", ", States().Select(s => RegistryOutput.Name(s)))}.");
            return ApplicationState.Unspecified;
        },
    };

    public static string Date(DateOnly date) => date.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture);

    private static IEnumerable<ApplicationState> States() => Enum.GetValues<ApplicationState>().Where(s => s != ApplicationState.Unspecified);

    private static string Token(ArgumentResult result) => result.Tokens.Count == 0 ? "" : result.Tokens[^1].Value;
}
