using Grpc.Core;
using Metering.Engine.Access;
using Metering.Engine.Capacity;
using Metering.Engine.Registry;
using Metering.Protocol.V1;
using Metering.Server.Access;
using Microsoft.Extensions.Logging;

namespace Metering.Server.Capacity;

/// <summary>
/// The capacity service over gRPC. The access policy has already checked the caller's role;
/// this service keeps providers to their own entries: naming another organisation is refused
/// with OTHER_PROVIDER, and another provider's validation reads as unknown.
/// </summary>
internal sealed partial class CapacityGrpcService(FleetValidationService validations, NodeKeyService nodeKeys, ILogger<CapacityGrpcService> logger)
    : CapacityService.CapacityServiceBase
{
    public override Task<NodeKey> RegisterNodeKey(RegisterNodeKeyRequest request, ServerCallContext context) =>
        Run(context, "RegisterNodeKey", request.CreditCode, async (actor, ct) => CapacityMapping.ToMessage(
            await nodeKeys.RegisterAsync(actor, request.CreditCode, request.NodeId, request.PublicKeyDer.Memory, request.PublicKeyPem, request.DeviceUuids, ct)));

    public override Task<NodeKey> ApproveNodeKey(ApproveNodeKeyRequest request, ServerCallContext context) =>
        Run(context, "ApproveNodeKey", request.CreditCode, async (actor, ct) =>
        {
            RegisteredNodeKey key = await nodeKeys.ApproveAsync(actor, request.CreditCode, request.NodeId, (int)Math.Min(request.KeyVersion, (uint)int.MaxValue),
                request.KeySha256, request.Reasons, ct);
            LogKeyApproved(logger, key.ProviderId, key.NodeId, key.KeyVersion, Convert.ToHexStringLower(key.KeySha256), key.Approval!.ApprovedBy);
            return CapacityMapping.ToMessage(key);
        });

    public override Task<FleetValidation> DeclareInventory(DeclareInventoryRequest request, ServerCallContext context) =>
        Run(context, "DeclareInventory", request.CreditCode, async (actor, ct) =>
        {
            FleetValidation validation = CapacityMapping.ToMessage(await validations.DeclareInventoryAsync(actor, CapacityMapping.ToDeclaration(request), ct));
            LogSampleDrawn(logger, validation.CreditCode, validation.ValidationId, validation.InventoryVersion, validation.NodeCount, validation.SampleSize, validation.SampleSeedHex);
            return validation;
        });

    public override Task<ChallengeSet> StartChallenges(StartChallengesRequest request, ServerCallContext context) =>
        Run(context, "StartChallenges", request.CreditCode, async (actor, ct) =>
        {
            ChallengeRound round = await validations.StartChallengesAsync(actor, request.CreditCode, ct);
            if (round.StartedNow)
            {
                LogChallengesStarted(logger, round.CreditCode, round.ValidationId, round.Nodes.Count, round.IssuedAt.ToUnixTimeMilliseconds());
            }

            return CapacityMapping.ToMessage(round);
        });

    public override Task<CommitmentReceipt> CommitResults(CommitResultsRequest request, ServerCallContext context) =>
        Run(context, "CommitResults", request.CreditCode, async (actor, ct) =>
        {
            CommitmentRecord record = await validations.CommitResultsAsync(actor, request.CreditCode, request.NodeId, request.Commitment.ToByteArray(), request.Signature.ToByteArray(), ct);
            LogCommitted(logger, request.CreditCode, record.NodeId, record.ElapsedMs, (long)(record.Deadline - record.IssuedAt).TotalMilliseconds);
            return CapacityMapping.ToMessage(record);
        });

    public override Task<AttestationResult> SubmitAttestation(SubmitAttestationRequest request, ServerCallContext context) =>
        Run(context, "SubmitAttestation", request.CreditCode, async (actor, ct) =>
        {
            AttestationResult result = CapacityMapping.ToMessage(await validations.SubmitAttestationAsync(actor, CapacityMapping.ToSubmission(request), ct));
            LogAttested(logger, result.Validation.CreditCode, result.Node.NodeId, result.AttestationId, result.Node.Outcome.ToString(), result.Validation.State.ToString());
            return result;
        });

    public override Task<FleetValidation> GetFleetValidation(GetFleetValidationRequest request, ServerCallContext context) =>
        Run(context, "GetFleetValidation", request.CreditCode, async (actor, ct) =>
            await validations.GetAsync(request.CreditCode, request.ValidationId, ct) is { } validation
                ? CapacityMapping.ToMessage(validation)
                : throw new CapacityRefusedException(CapacityRefusalReason.ValidationUnknown,
                request.ValidationId == 0 ? $"{request.CreditCode} has no fleet validation" : $"{request.CreditCode} has no fleet validation {request.ValidationId}"));

    public override Task<FleetValidation> ReviewUnknownModel(ReviewUnknownModelRequest request, ServerCallContext context) =>
        Run(context, "ReviewUnknownModel", request.CreditCode, async (actor, ct) =>
            CapacityMapping.ToMessage(await validations.ReviewUnknownModelAsync(actor, CapacityMapping.ToReview(request), ct)));

    public override Task<NodeKeyList> ListNodeKeys(ListNodeKeysRequest request, ServerCallContext context) =>
        Run(context, "ListNodeKeys", request.CreditCode, async (actor, ct) =>
        {
            var (keys, next) = await nodeKeys.ListAsync(request.CreditCode, request.PendingOnly, request.AfterNodeId, (int)Math.Min(request.Limit, (uint)int.MaxValue), ct);
            return new NodeKeyList { Keys = { keys.Select(CapacityMapping.ToMessage) }, NextAfterNodeId = next ?? "" };
        });

    /// <summary>
    /// Runs a call as its authenticated caller, keeping a provider to its own credit code.
    /// RefusalInterceptor turns capacity and registry refusals into statuses and logs them with
    /// the gRPC method, which <paramref name="method"/> names where the call is written.
    /// </summary>
    private Task<T> Run<T>(ServerCallContext context, string method, string creditCode, Func<Actor, CancellationToken, Task<T>> call)
    {
        Actor actor = AuthenticationInterceptor.Caller(context);
        if (actor.Role == Role.Provider && creditCode != actor.Subject)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.OtherProvider,
                $"a provider reads and writes only its own capacity entries; {actor.Subject} named '{creditCode}'");
        }

        return call(actor, context.CancellationToken);
    }

    [LoggerMessage(EventId = 4002, Level = LogLevel.Information, Message = "Fleet validation {ValidationId} of {ProviderId} (inventory {InventoryVersion}, {Nodes} nodes): sample of {SampleSize} drawn from seed {Seed}")]
    private static partial void LogSampleDrawn(ILogger logger, string providerId, long validationId, uint inventoryVersion, uint nodes, uint sampleSize, string seed);

    [LoggerMessage(EventId = 4004, Level = LogLevel.Information, Message = "Fleet validation {ValidationId} of {ProviderId}: challenges of {Nodes} sampled nodes issued at {IssuedUnixMs}")]
    private static partial void LogChallengesStarted(ILogger logger, string providerId, long validationId, int nodes, long issuedUnixMs);

    [LoggerMessage(EventId = 4005, Level = LogLevel.Information, Message = "Commitment of {ProviderId} node {NodeId}: {ElapsedMs} ms after issue, deadline {DeadlineMs} ms")]
    private static partial void LogCommitted(ILogger logger, string providerId, string nodeId, long elapsedMs, long deadlineMs);

    [LoggerMessage(EventId = 4003, Level = LogLevel.Information, Message = "Attestation {AttestationId} of {ProviderId} node {NodeId}: {Outcome}; validation {State}")]
    private static partial void LogAttested(ILogger logger, string providerId, string nodeId, long attestationId, string outcome, string state);

    [LoggerMessage(EventId = 4006, Level = LogLevel.Information, Message = "Node key {KeyVersion} of {ProviderId} node {NodeId} (sha256 {KeySha256}) approved by {Operator}")]
    private static partial void LogKeyApproved(ILogger logger, string providerId, string nodeId, int keyVersion, string keySha256, string @operator);
}
