using System.Security.Cryptography;
using Google.Protobuf;
using Grpc.Core;
using Metering.Probe.Attestation.Checksums;
using Metering.Probe.Attestation.Results;
using Metering.Protocol.V1;

namespace Metering.Probe.Submission;

/// <summary>What the server sets for one node's run: the nonce, and the work of each kernel where it sets it.</summary>
internal sealed record NodeChallenge(byte[] Nonce, long ValidationId, long ExpiresUnixMs, IReadOnlyDictionary<KernelKind, WorkSize> Work);

/// <summary>
/// The provider's side of CapacityService for one node, every protocol step in this one class so
/// that a change of the protocol changes only it: ask for the challenge, then submit the signed
/// report. Today's flow (capacity.proto) is IssueNonce, the probe run, SubmitAttestation; the
/// server does not set the work yet, so <see cref="NodeChallenge.Work"/> is empty and the probe
/// sizes it for the device, at or above the floor the server checks.
/// </summary>
internal sealed class AttestationProtocol(CapacityService.CapacityServiceClient client, Metadata headers, string creditCode, string nodeId)
{
    public async Task<NodeChallenge> BeginAsync(CancellationToken cancellationToken)
    {
        ProbeNonce nonce = await client.IssueNonceAsync(new IssueNonceRequest { CreditCode = creditCode, NodeId = nodeId }, headers, cancellationToken: cancellationToken);
        if (!HexBytes.TryParse(nonce.NonceHex, out byte[] bytes) || bytes.Length != InputKey.NonceBytes)
        {
            throw new InvalidDataException($"the server's nonce '{nonce.NonceHex}' is not {InputKey.NonceBytes} bytes of hex");
        }

        return new NodeChallenge(bytes, nonce.ValidationId, nonce.ExpiresUnixMs, new Dictionary<KernelKind, WorkSize>());
    }

    /// <summary>Signs the report's canonical bytes with the node's key (ECDSA P-256, SHA-256, DER) and submits it.</summary>
    public async Task<AttestationResult> SubmitAsync(ProbeReport report, ECDsa nodeKey, CancellationToken cancellationToken)
    {
        byte[] signature = nodeKey.SignData(ProbeReportEncoding.Encode(report), HashAlgorithmName.SHA256, DSASignatureFormat.Rfc3279DerSequence);
        return await client.SubmitAttestationAsync(new SubmitAttestationRequest
        {
            CreditCode = creditCode,
            NodeId = nodeId,
            ReportJson = ProbeReportJson.Serialize(report),
            Signature = ByteString.CopyFrom(signature),
        }, headers, cancellationToken: cancellationToken);
    }
}
