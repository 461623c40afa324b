using System.Globalization;
using Google.Protobuf;
using Grpc.Core;
using Metering.Engine.Access;
using Metering.Engine.Transparency;
using Metering.Protocol.V1;
using Metering.Server.Access;
using EngineLogLeaf = Metering.Engine.Transparency.LogLeaf;
using EngineTreeHead = Metering.Engine.Transparency.SignedTreeHead;

namespace Metering.Server.Transparency;

/// <summary>
/// The transparency log over gRPC: signed tree heads, inclusion proofs and consistency proofs.
/// The access policy lets every role in; this service keeps a provider to its own leaves.
/// </summary>
internal sealed class TransparencyGrpcService(TransparencyLog log) : TransparencyService.TransparencyServiceBase
{
    public override Task<Protocol.V1.SignedTreeHead> GetTreeHead(GetTreeHeadRequest request, ServerCallContext context) =>
        Run(context, "GetTreeHead", async (actor, ct) => ToMessage(request.TreeSize == 0
            ? await log.LatestHeadAsync(ct)
            : await log.HeadAsync(Size(request.TreeSize, "tree_size"), ct)));

    public override Task<LogInclusionProof> GetLogInclusionProof(GetLogInclusionProofRequest request, ServerCallContext context) =>
        Run(context, "GetLogInclusionProof", async (actor, ct) =>
        {
            string? provider = request.CreditCode.Length == 0 ? null : request.CreditCode;
            DateOnly? day = request.Day.Length == 0 ? null : Day(request.Day);
            long? index = request.HasLeafIndex ? Size(request.LeafIndex, "leaf_index") : null;
            if (actor.Role == Role.Provider && provider is not null && provider != actor.Subject)
            {
                throw OtherProvider(actor, provider);
            }

            LogInclusion inclusion = await log.InclusionAsync(index, provider, day, Size(request.TreeSize, "tree_size"), ct);
            if (actor.Role == Role.Provider && inclusion.Leaf.ProviderId != actor.Subject)
            {
                throw OtherProvider(actor, $"the provider of leaf {inclusion.LeafIndex}");
            }

            return new LogInclusionProof
            {
                LeafIndex = (ulong)inclusion.LeafIndex,
                TreeSize = (ulong)inclusion.TreeSize,
                Leaf = ToMessage(inclusion.Leaf),
                LeafHash = ByteString.CopyFrom(inclusion.Leaf.Hash()),
                AuditPath = { inclusion.Path.Select(ByteString.CopyFrom) },
            };
        });

    public override Task<ConsistencyProof> GetConsistencyProof(GetConsistencyProofRequest request, ServerCallContext context) =>
        Run(context, "GetConsistencyProof", async (actor, ct) => new ConsistencyProof
        {
            FromSize = request.FromSize,
            ToSize = request.ToSize,
            Path = { (await log.ConsistencyAsync(Size(request.FromSize, "from_size"), Size(request.ToSize, "to_size"), ct)).Select(ByteString.CopyFrom) },
        });

    public static Protocol.V1.SignedTreeHead ToMessage(EngineTreeHead head) => new()
    {
        TreeSize = (ulong)head.TreeSize,
        Root = ByteString.CopyFrom(head.Root),
        TimestampUnixMs = head.TimestampUnixMs,
        KeyId = head.KeyId,
        Signature = ByteString.CopyFrom(head.Signature),
    };

    private static TransparencyLogLeaf ToMessage(EngineLogLeaf leaf) => new()
    {
        Day = leaf.Day.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture),
        CreditCode = leaf.ProviderId,
        LeafCount = (ulong)leaf.LeafCount,
        DailyRoot = ByteString.CopyFrom(leaf.DailyRoot),
        SettlementSha256 = ByteString.CopyFrom(leaf.SettlementSha256),
        Encoded = ByteString.CopyFrom(leaf.Encode()),
    };

    private static long Size(ulong value, string field) => value <= long.MaxValue
        ? (long)value
        : throw new TransparencyLogException(LogProblem.ArgumentInvalid, $"{field} {value} is past any log");

    private static DateOnly Day(string text) =>
        DateOnly.TryParseExact(text, "yyyy-MM-dd", CultureInfo.InvariantCulture, DateTimeStyles.None, out DateOnly day)
            ? day
            : throw new TransparencyLogException(LogProblem.ArgumentInvalid, $"day must be a date as yyyy-MM-dd, not '{text}'");

    private static RpcException OtherProvider(Actor actor, string named) =>
        Errors.Refused(StatusCode.PermissionDenied, ProtocolNames.Of(RegistryRefusal.OtherProvider),
            $"a provider reads only its own leaves of the transparency log; {actor.Subject} asked for {named}");

    /// <summary>
    /// Runs a call as its authenticated caller. RefusalInterceptor turns the log's refusals into statuses and
    /// logs them with the gRPC method, which <paramref name="method"/> names where the call is written.
    /// </summary>
    private Task<T> Run<T>(ServerCallContext context, string method, Func<Actor, CancellationToken, Task<T>> call) =>
        call(AuthenticationInterceptor.Caller(context), context.CancellationToken);
}
