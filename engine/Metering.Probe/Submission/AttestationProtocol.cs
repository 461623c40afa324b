using System.Security.Cryptography;
using Google.Protobuf;
using Grpc.Core;
using Metering.Probe.Attestation.Checksums;
using Metering.Probe.Attestation.Results;
using Metering.Protocol.V1;

namespace Metering.Probe.Submission;

/// <summary>What the server set for this node's run: the nonce, the runs, the work of each kernel in order, and the clock.</summary>
internal sealed record NodeAssignment(
    byte[] Nonce,
    long ValidationId,
    long IssuedUnixMs,
    long DeadlineUnixMs,
    long ExpiresUnixMs,
    long AllowanceMs,
    bool StartedNow,
    int RunsPerKernel,
    IReadOnlyList<(KernelKind Kind, WorkSize Size)> Work);

/// <summary>
/// The provider's side of CapacityService for one node, every protocol step in this one class so
/// that a change of the protocol changes only it (capacity.proto; the probe's README, "Attesting"):
/// StartChallenges (idempotent: the first call of any node starts every sampled node's clock),
/// the probe run on exactly the set nonce, runs and work, CommitResults with the signed result
/// commitment before the deadline, then SubmitAttestation with the signed report.
/// </summary>
internal sealed class AttestationProtocol(CapacityService.CapacityServiceClient client, Metadata headers, string creditCode, string nodeId)
{
    /// <summary>How often a report refused with VERIFICATION_BUSY (another node of the provider being verified) is sent again.</summary>
    public const int BusyRetriesMax = 60;

    /// <summary>The wait between those tries: a verification takes seconds.</summary>
    public static readonly TimeSpan BusyRetryDelay = TimeSpan.FromSeconds(2);

    /// <summary>
    /// The node's keys as the server lists them (ListNodeKeys, the provider's own): its latest
    /// registered key and, where that is not approved, its key in force. Read before the
    /// challenges start, so that a node whose key awaits approval does not start every sampled
    /// node's clock for a commitment the server must refuse.
    /// </summary>
    public async Task<IReadOnlyList<NodeKey>> NodeKeysAsync(CancellationToken cancellationToken)
    {
        var keys = new List<NodeKey>();
        string after = "";
        do
        {
            NodeKeyList page = await client.ListNodeKeysAsync(new ListNodeKeysRequest { CreditCode = creditCode, AfterNodeId = after }, headers, cancellationToken: cancellationToken);
            keys.AddRange(page.Keys.Where(k => k.NodeId == nodeId));
            // Pages come in node id order: once a later node is listed, this node has no more keys.
            if (page.Keys.Any(k => string.CompareOrdinal(k.NodeId, nodeId) > 0))
            {
                break;
            }

            after = page.NextAfterNodeId;
        }
        while (after.Length > 0);

        return keys;
    }

    /// <summary>This node's challenge, starting the challenges if no node has; null when the node is not in the sample.</summary>
    public async Task<NodeAssignment?> BeginAsync(CancellationToken cancellationToken)
    {
        ChallengeSet set = await client.StartChallengesAsync(new StartChallengesRequest { CreditCode = creditCode }, headers, cancellationToken: cancellationToken);
        NodeChallenge? challenge = set.Challenges.FirstOrDefault(c => c.NodeId == nodeId);
        if (challenge is null)
        {
            return null;
        }

        if (!HexBytes.TryParse(challenge.NonceHex, out byte[] nonce) || nonce.Length != InputKey.NonceBytes)
        {
            throw new InvalidDataException($"the server's nonce '{challenge.NonceHex}' is not {InputKey.NonceBytes} bytes of hex");
        }

        var work = new List<(KernelKind, WorkSize)>();
        foreach (KernelWork kernel in challenge.Work)
        {
            if (!KernelKinds.TryParse(kernel.Kernel, out KernelKind kind) || kernel.Items > int.MaxValue || kernel.Iterations > int.MaxValue)
            {
                throw new InvalidDataException($"the server set work this probe cannot run: {kernel.Kernel} {kernel.Items}x{kernel.Iterations}");
            }

            work.Add((kind, new WorkSize((int)kernel.Items, (int)kernel.Iterations)));
        }

        return new NodeAssignment(nonce, set.ValidationId, set.IssuedUnixMs, challenge.DeadlineUnixMs, challenge.ExpiresUnixMs, set.AllowanceMs, set.StartedNow,
            (int)Math.Min(challenge.RunsPerKernel, int.MaxValue), work);
    }

    /// <summary>Commits to the results (every device's roots and work) with the node's key; the server times this call.</summary>
    public async Task<CommitmentReceipt> CommitAsync(ProbeReport report, ECDsa nodeKey, CancellationToken cancellationToken)
    {
        byte[] commitment = ResultCommitment.Encode(nodeId, report);
        return await client.CommitResultsAsync(new CommitResultsRequest
        {
            CreditCode = creditCode,
            NodeId = nodeId,
            Commitment = ByteString.CopyFrom(commitment),
            Signature = ByteString.CopyFrom(ResultCommitment.Sign(nodeKey, commitment)),
        }, headers, cancellationToken: cancellationToken);
    }

    /// <summary>
    /// Signs the report's canonical bytes with the node's key (ECDSA P-256, SHA-256, DER) and
    /// submits it; sent again while another of the provider's reports is being verified, which the
    /// server refuses before it spends the nonce.
    /// </summary>
    public async Task<AttestationResult> SubmitAsync(ProbeReport report, ECDsa nodeKey, Action<int> waiting, CancellationToken cancellationToken)
    {
        byte[] signature = nodeKey.SignData(ProbeReportEncoding.Encode(report), HashAlgorithmName.SHA256, DSASignatureFormat.Rfc3279DerSequence);
        var request = new SubmitAttestationRequest
        {
            CreditCode = creditCode,
            NodeId = nodeId,
            ReportJson = ProbeReportJson.Serialize(report),
            Signature = ByteString.CopyFrom(signature),
        };
        for (int attempt = 1; ; attempt++)
        {
            try
            {
                return await client.SubmitAttestationAsync(request, headers, cancellationToken: cancellationToken);
            }
            catch (RpcException busy) when (attempt < BusyRetriesMax && Reason(busy) == "VERIFICATION_BUSY")
            {
                waiting(attempt);
                await Task.Delay(BusyRetryDelay, cancellationToken);
            }
        }
    }

    /// <summary>The node as the validation records it now: after a refusal, whether the server failed it (a late or missing commitment).</summary>
    public async Task<SampledNode?> NodeAsync(long validationId, CancellationToken cancellationToken)
    {
        FleetValidation validation = await client.GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = creditCode, ValidationId = validationId }, headers, cancellationToken: cancellationToken);
        return validation.Sample.FirstOrDefault(n => n.NodeId == nodeId);
    }

    public static string? Reason(RpcException e) => e.GetRpcStatus()?.GetDetail<Google.Rpc.ErrorInfo>()?.Reason;
}
