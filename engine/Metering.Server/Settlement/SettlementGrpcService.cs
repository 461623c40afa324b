using System.Globalization;
using System.Threading.Channels;
using Grpc.Core;
using Metering.Engine.Access;
using Metering.Engine.Registry;
using Metering.Engine.Settlement;
using Metering.Engine.Time;
using Metering.Engine.Transparency;
using Metering.Protocol.V1;
using Metering.Server.Access;
using Microsoft.Extensions.Logging;

namespace Metering.Server.Settlement;

/// <summary>
/// Nightly settlement over gRPC. The settlement role runs days; operators, auditors and the batch
/// read them; a provider reads only its own statements, and any other statement reads as one it
/// may not see.
/// </summary>
internal sealed partial class SettlementGrpcService(DailySettlement settlement, PendingDays pending, StatementNames names, TransparencyLog log, Payouts payouts,
    TimeProvider time, ILogger<SettlementGrpcService> logger)
    : SettlementService.SettlementServiceBase
{
    /// <summary>
    /// Most progress steps held for a slow reader of SettleDayWithProgress; a run reports about a
    /// dozen. Past it the oldest is dropped rather than letting the run wait on its watcher.
    /// </summary>
    internal const int ProgressStepsBufferedMax = 256;

    public override Task<Protocol.V1.Settlement> SettleDay(SettleDayRequest request, ServerCallContext context) =>
        Run(context, "SettleDay", (actor, ct) => SettleAsync(request, actor, null, ct));

    public override Task SettleDayWithProgress(SettleDayRequest request, IServerStreamWriter<SettleDayProgress> responseStream, ServerCallContext context) =>
        Run(context, "SettleDayWithProgress", async (actor, ct) =>
        {
            var steps = Channel.CreateBounded<SettlementStep>(new BoundedChannelOptions(ProgressStepsBufferedMax)
            {
                FullMode = BoundedChannelFullMode.DropOldest,
                SingleReader = true,
                SingleWriter = true,
            });
            Task forwarding = ForwardStepsAsync(steps.Reader, responseStream, ct);
            Protocol.V1.Settlement settled;
            try
            {
                settled = await SettleAsync(request, actor, step => steps.Writer.TryWrite(new SettlementStep
                {
                    Stage = step.Stage,
                    Message = step.Message,
                    ElapsedMs = (long)step.Elapsed.TotalMilliseconds,
                }), ct);
            }
            catch
            {
                // The run's own failure is what the caller is told; a stream that broke as well adds nothing.
                steps.Writer.TryComplete();
                await forwarding.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
                throw;
            }

            steps.Writer.TryComplete();
            await forwarding;
            await responseStream.WriteAsync(new SettleDayProgress { Settlement = settled }, ct);
            return true;
        });

    private static async Task ForwardStepsAsync(ChannelReader<SettlementStep> steps, IServerStreamWriter<SettleDayProgress> responseStream, CancellationToken cancellationToken)
    {
        await foreach (SettlementStep step in steps.ReadAllAsync(cancellationToken))
        {
            await responseStream.WriteAsync(new SettleDayProgress { Step = step }, cancellationToken);
        }
    }

    private async Task<Protocol.V1.Settlement> SettleAsync(SettleDayRequest request, Actor actor, Action<SettlementProgress>? progress, CancellationToken cancellationToken)
    {
        DateOnly day = ParseDay(request.Day);
        // An ended, open day with nothing in it closes only when asked to: closed is for good.
        // (A day not ended is the engine's to refuse; a closed one returns its settlement.)
        if (!request.AllowEmpty && ShanghaiTime.StartOf(day.AddDays(1)) <= time.GetUtcNow()
            && !await pending.HasRecordsAsync(day, cancellationToken) && await settlement.GetAsync(day, cancellationToken) is null)
        {
            throw new SettlementRefusedException(SettlementRefusalReason.DayEmpty,
                $"no usage record starts in {day:yyyy-MM-dd}; a closed day is never settled again, so close an idle day with allow_empty (metering settle --allow-empty)");
        }

        SettlementOutcome outcome = await settlement.SettleAsync(day, actor, progress, cancellationToken);
        if (!outcome.AlreadyClosed)
        {
            await SignLogHeadAsync(cancellationToken);
        }

        return ToMessage(outcome);
    }

    /// <summary>
    /// Signs the transparency log's head of the size the run left, so that every size a run
    /// through the server makes has a signed head. The day is closed already: a failure here is
    /// logged, and the head is signed when it is next asked for.
    /// </summary>
    private async Task SignLogHeadAsync(CancellationToken cancellationToken)
    {
        try
        {
            await log.LatestHeadAsync(cancellationToken);
        }
        catch (Exception e) when (e is Npgsql.NpgsqlException or TransparencyLogException or InvalidOperationException)
        {
            LogHeadNotSigned(logger, e.Message);
        }
    }

    public override Task<ListPendingDaysResponse> ListPendingDays(ListPendingDaysRequest request, ServerCallContext context) =>
        Run(context, "ListPendingDays", async (actor, ct) => new ListPendingDaysResponse
        {
            Days = { (await pending.ListAsync(ct)).Select(d => new Protocol.V1.PendingDay { Day = d.Day.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture), Records = d.Records }) },
        });

    public override Task<Protocol.V1.Settlement> GetSettlement(GetSettlementRequest request, ServerCallContext context) =>
        Run(context, "GetSettlement", async (actor, ct) => ToMessage(await ClosedAsync(ParseDay(request.Day), ct)));

    public override Task<ListSettlementsResponse> ListSettlements(ListSettlementsRequest request, ServerCallContext context) =>
        Run(context, "ListSettlements", async (actor, ct) => new ListSettlementsResponse
        {
            Settlements = { (await settlement.ListAsync((int)Math.Min(request.Limit, int.MaxValue), ct)).Select(ToMessage) },
        });

    public override Task<Statement> GetStatement(GetStatementRequest request, ServerCallContext context) =>
        Run(context, "GetStatement", async (actor, ct) =>
        {
            DateOnly day = ParseDay(request.Day);
            string kind = request.PartyKind switch
            {
                PartyKind.PartyProgramme => StatementFormats.Programme,
                PartyKind.PartyProvider => StatementFormats.ProviderKind,
                PartyKind.PartyHolder => StatementFormats.HolderKind,
                _ => throw new SettlementRefusedException(SettlementRefusalReason.SettlementFieldInvalid, "party_kind must be PARTY_PROGRAMME, PARTY_PROVIDER or PARTY_HOLDER"),
            };
            string party = kind == StatementFormats.Programme ? StatementFormats.Programme : request.Party;
            if (actor.Role == Role.Provider && (kind != StatementFormats.ProviderKind || party != actor.Subject))
            {
                throw new SettlementRefusedException(SettlementRefusalReason.StatementOfOtherParty, $"a provider reads only its own statements; {actor.Subject} asked for the {kind} statement of '{party}'");
            }

            SettlementOutcome closed = await ClosedAsync(day, ct);
            StoredStatement stored = closed.Statements.FirstOrDefault(s => s.PartyKind == kind && s.Party == party)
                ?? throw new SettlementRefusedException(SettlementRefusalReason.StatementUnknown, $"the settlement of {request.Day} has no statement for {kind} {party}");
            StatementFormat format = request.Format == StatementFormat.Unspecified ? StatementFormat.StatementCsv : request.Format;
            // The renderings for people add the party's payee account from the ledger; the canonical CSV stays as hashed.
            PayeePosition? payable = format == StatementFormat.StatementCsv ? null : await payouts.PositionAsync(kind, party, day, ct);
            string content = format switch
            {
                StatementFormat.StatementCsv => System.Text.Encoding.UTF8.GetString(stored.CanonicalCsv),
                StatementFormat.StatementJson => StatementFormats.Json(stored.Parse(), stored.Sha256, payable),
                StatementFormat.StatementText => StatementRendering.Text(stored.Parse(), await ContextAsync(closed, stored, payable, ct)),
                StatementFormat.StatementHtml => StatementRendering.Html(stored.Parse(), await ContextAsync(closed, stored, payable, ct)),
                _ => throw new SettlementRefusedException(SettlementRefusalReason.SettlementFieldInvalid, "format must be STATEMENT_CSV, STATEMENT_JSON, STATEMENT_TEXT or STATEMENT_HTML"),
            };
            return new Statement
            {
                Day = request.Day,
                PartyKind = request.PartyKind,
                Party = party,
                Format = format,
                Content = content,
                Sha256 = Convert.ToHexStringLower(stored.Sha256),
            };
        });

    /// <summary>What the readable forms show beside the rows: the run's hashes and finish, and the parties' names as they are now.</summary>
    private async Task<StatementContext> ContextAsync(SettlementOutcome closed, StoredStatement stored, PayeePosition? payable, CancellationToken cancellationToken) =>
        new(stored.Sha256, closed.SettlementHex, closed.FinishedAt, await names.OfAsync(stored.Parse(), cancellationToken), payable);

    private async Task<SettlementOutcome> ClosedAsync(DateOnly day, CancellationToken cancellationToken) =>
        await settlement.GetAsync(day, cancellationToken)
        ?? throw new SettlementRefusedException(SettlementRefusalReason.DayNotSettled, $"{ShanghaiTime.IsoDate(day)} has not been settled");

    private static DateOnly ParseDay(string text) =>
        DateOnly.TryParseExact(text, "yyyy-MM-dd", CultureInfo.InvariantCulture, DateTimeStyles.None, out DateOnly day)
            ? day
            : throw new SettlementRefusedException(SettlementRefusalReason.SettlementFieldInvalid, $"day must be a date as yyyy-MM-dd, not '{text}'");

    private static Protocol.V1.Settlement ToMessage(SettlementOutcome outcome) => new()
    {
        Day = ShanghaiTime.IsoDate(outcome.Day),
        AlreadyClosed = outcome.AlreadyClosed,
        SettlementSha256 = outcome.SettlementHex,
        DayRecords = outcome.DayRecords,
        DayUsageNpfh = outcome.DayUsageNpfh,
        AdjustmentRecords = outcome.AdjustmentRecords,
        FeeFen = outcome.FeeFen,
        SubsidyFen = outcome.SubsidyFen,
        SettledBy = outcome.SettledBy,
        FinishedUnixMs = outcome.FinishedAt.ToUnixTimeMilliseconds(),
        Statements = { outcome.Statements.Select(ToSummary) },
    };

    private static StatementSummary ToSummary(StoredStatement stored)
    {
        PartyStatement statement = stored.Parse();
        StatementRow? root = statement.Rows.FirstOrDefault(r => r.Record == StatementFormats.MerkleRootRecord);
        return new StatementSummary
        {
            PartyKind = stored.PartyKind switch
            {
                StatementFormats.Programme => PartyKind.PartyProgramme,
                StatementFormats.ProviderKind => PartyKind.PartyProvider,
                _ => PartyKind.PartyHolder,
            },
            Party = stored.Party,
            Sha256 = Convert.ToHexStringLower(stored.Sha256),
            Rows = (uint)statement.Rows.Count,
            MerkleLeafCount = (uint)(root?.Records ?? 0),
            MerkleRoot = root?.Note ?? "",
        };
    }

    /// <summary>
    /// Runs a call as its authenticated caller. RefusalInterceptor turns settlement's refusals into statuses and
    /// logs them with the gRPC method, which <paramref name="method"/> names where the call is written.
    /// </summary>
    private Task<T> Run<T>(ServerCallContext context, string method, Func<Actor, CancellationToken, Task<T>> call) =>
        call(AuthenticationInterceptor.Caller(context), context.CancellationToken);

    [LoggerMessage(EventId = 6102, Level = LogLevel.Warning, Message = "Settlement: the transparency log's new head was not signed after the run ({Detail}); it is signed when next asked for")]
    private static partial void LogHeadNotSigned(ILogger logger, string detail);
}
