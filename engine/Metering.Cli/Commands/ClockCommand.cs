using System.CommandLine;
using System.Globalization;
using System.Text.RegularExpressions;
using Metering.Engine.Registry;
using Metering.Engine.Time;
using Metering.Protocol.V1;

namespace Metering.Cli.Commands;

/// <summary>`metering clock show|advance`: the server's clock, and a sandbox's moved forward (sandbox.proto).</summary>
internal static partial class ClockCommand
{
    public static Command Create()
    {
        var date = new Option<bool>("--date")
        {
            Description = "Print only the server's date in Asia/Shanghai, yyyy-MM-dd, for scripts: in a sandbox it is not this machine's date.",
        };
        var output = OutputOption.Create();
        var show = ClientCommand.Create("show", "Print the server's time (Asia/Shanghai and UTC), and on a sandbox how far it runs ahead of real time; "
            + "--output json|csv gives now (ISO 8601, +08:00), nowUnixMs, simulated and offsetMs.", [date, output],
            async (parse, call, ct) =>
            {
                Clock clock = await new SandboxService.SandboxServiceClient(call.Channel).GetClockAsync(new GetClockRequest(), call.Headers, cancellationToken: ct);
                if (parse.GetValue(output) is not OutputFormat.Table and var format)
                {
                    // The table is the two lines people read; programs get the same facts as values.
                    var rows = new Rows(Column.DataOnly("now"), Column.DataOnly("nowUnixMs"), Column.DataOnly("simulated"), Column.DataOnly("offsetMs"));
                    rows.Add(Cell.Instant(clock.NowUnixMs), Cell.Data(clock.NowUnixMs), Cell.Data(clock.Simulated), Cell.Data(clock.OffsetMs));
                    rows.WriteOne(format, Console.Out);
                }
                else if (parse.GetValue(date))
                {
                    Console.WriteLine(ShanghaiTime.DateOf(DateTimeOffset.FromUnixTimeMilliseconds(clock.NowUnixMs)).ToString("yyyy-MM-dd", CultureInfo.InvariantCulture));
                }
                else
                {
                    Print(clock);
                }

                return 0;
            });

        var by = new Option<long?>("--by")
        {
            Description = "How far to move, as days, hours, minutes and seconds: 5d, 12h, 1d6h30m, 90s.",
            CustomParser = result => ParseDuration(result.Tokens.Single().Value) is long ms ? ms : Error<long?>(result, $"--by '{result.Tokens.Single().Value}' is not a duration such as 5d, 12h, 1d6h30m or 90s."),
        };
        var to = new Option<DateTimeOffset?>("--to")
        {
            Description = "Move to this time, yyyy-MM-ddTHH:mm in Asia/Shanghai (for example 2027-01-01T00:30); it must lie ahead of the server's time.",
            CustomParser = result => DateTime.TryParseExact(result.Tokens.Single().Value, "yyyy-MM-dd'T'HH:mm", CultureInfo.InvariantCulture, DateTimeStyles.None, out DateTime local)
                ? new DateTimeOffset(local, ShanghaiTime.Offset)
                : Error<DateTimeOffset?>(result, $"--to '{result.Tokens.Single().Value}' is not yyyy-MM-ddTHH:mm (Asia/Shanghai), for example 2027-01-01T00:30."),
        };
        var advance = ClientCommand.Create("advance", "Move a sandbox's clock forward (an operator key; the server must run with --clock simulated). Time never goes back.", [by, to],
            async (parse, call, ct) =>
            {
                long? byMs = parse.GetValue(by);
                DateTimeOffset? target = parse.GetValue(to);
                if (byMs is null == target is null)
                {
                    throw new UsageException("give one of --by or --to");
                }

                var client = new SandboxService.SandboxServiceClient(call.Channel);
                if (target is { } until)
                {
                    Clock now = await client.GetClockAsync(new GetClockRequest(), call.Headers, cancellationToken: ct);
                    byMs = until.ToUnixTimeMilliseconds() - now.NowUnixMs;
                    if (byMs <= 0)
                    {
                        throw new UsageException($"the server's clock is at {LocalTime.Minutes(now.NowUnixMs)} already; --to must lie ahead of it, since time never goes back");
                    }
                }

                Print(await client.AdvanceClockAsync(new AdvanceClockRequest { ByMs = byMs!.Value }, call.Headers, cancellationToken: ct));
                return 0;
            });

        return new Command("clock", "The server's clock; in a sandbox (metering db migrate --sandbox, serve --clock simulated) operators move it forward to run a trial year in an afternoon.")
        {
            show, advance,
        };
    }

    /// <summary>Milliseconds of a duration written as 5d, 12h, 1d6h30m or 90s; null when it is not one, or is zero.</summary>
    public static long? ParseDuration(string text)
    {
        Match match = Duration().Match(text);
        if (!match.Success || match.Length == 0)
        {
            return null;
        }

        long Part(string group, long unitMs) => match.Groups[group].Success ? checked(long.Parse(match.Groups[group].Value, CultureInfo.InvariantCulture) * unitMs) : 0;
        try
        {
            long ms = checked(Part("d", 86_400_000) + Part("h", 3_600_000) + Part("m", 60_000) + Part("s", 1_000));
            return ms > 0 ? ms : null;
        }
        catch (OverflowException)
        {
            return null;
        }
    }

    private static T? Error<T>(System.CommandLine.Parsing.ArgumentResult result, string message)
    {
        result.AddError(message);
        return default;
    }

    private static void Print(Clock clock)
    {
        DateTimeOffset now = DateTimeOffset.FromUnixTimeMilliseconds(clock.NowUnixMs);
        Console.WriteLine(Labels.Format("now:      {0} Asia/Shanghai ({1})", LocalTime.Minutes(now), now.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", CultureInfo.InvariantCulture)));
        Console.WriteLine(clock.Simulated
            ? Labels.Format("clock:    simulated (sandbox), {0} ahead of real time", TimeSpan.FromMilliseconds(clock.OffsetMs).ToString("d'd 'hh'h 'mm'm'", CultureInfo.InvariantCulture))
            : Labels.Of("clock:    real time"));
    }

    [GeneratedRegex(@"^(?:(?<d>\d{1,4})d)?(?:(?<h>\d{1,6})h)?(?:(?<m>\d{1,8})m)?(?:(?<s>\d{1,10})s)?$", RegexOptions.CultureInvariant)]
    private static partial Regex Duration();
}
