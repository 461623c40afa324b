using Metering.Engine.Capacity;
using Metering.Protocol.V1;

namespace Metering.Server.Capacity;

/// <summary>
/// The edge between the capacity service's wire messages and the engine's records (fleet
/// validations, attestations, challenges, commitments and node keys). Requests come
/// in as the engine's inputs unchanged (numbers widened, never clamped, so the engine's checks see
/// what was sent); records go out as messages, an absent instant or id as 0 and digests as
/// lowercase hex. The three outcome enums map by value: the engine's and the wire's share names
/// and numbers, which a test holds.
/// </summary>
internal static class CapacityMapping
{
    public static InventoryDeclaration ToDeclaration(DeclareInventoryRequest request) =>
        new(request.CreditCode, request.Nodes.Select(n => new InventoryNode(n.NodeId, n.Site, n.DeviceModel, n.DeviceCount)).ToList());

    public static AttestationSubmission ToSubmission(SubmitAttestationRequest request) =>
        new(request.CreditCode, request.NodeId, request.ReportJson, request.Signature.ToByteArray());

    public static UnknownModelReview ToReview(ReviewUnknownModelRequest request) =>
        new(request.CreditCode, request.ValidationId, request.NodeId, request.DeviceIndex, request.DeviceModel, request.Reasons);

    public static FleetValidationState ToWire(ValidationState state) => (FleetValidationState)(int)state;

    public static NodeOutcome ToWire(SampledNodeOutcome outcome) => (NodeOutcome)(int)outcome;

    public static DeviceOutcome ToWire(DeviceResultOutcome outcome) => (DeviceOutcome)(int)outcome;

    public static FleetValidation ToMessage(FleetValidationRecord validation)
    {
        var message = new FleetValidation
        {
            CreditCode = validation.CreditCode,
            ValidationId = validation.ValidationId,
            InventoryVersion = (uint)validation.InventoryVersion,
            State = ToWire(validation.State),
            DrawnUnixMs = validation.DrawnAt.ToUnixTimeMilliseconds(),
            NodeCount = (uint)validation.NodeCount,
            DeviceCount = (ulong)validation.DeviceCount,
            DeclaredFp16Gflops = validation.DeclaredFp16Gflops,
            SampleSize = (uint)validation.SampleSize,
            SampleSeedHex = Convert.ToHexStringLower(validation.SampleSeed),
            PassedNodes = (uint)validation.PassedNodes,
            FailedNodes = (uint)validation.FailedNodes,
            NonconformingNodesBound = (uint)validation.NonconformingNodesBound,
            PassRateLowerBoundPpm = (uint)validation.PassRateLowerBoundPpm,
            VerifiedFp16Gflops = validation.VerifiedFp16Gflops,
            CompletedUnixMs = UnixMs(validation.CompletedAt),
            ExpiresUnixMs = UnixMs(validation.ExpiresAt),
            CatalogVersion = validation.CatalogVersion,
            ChallengesIssuedUnixMs = UnixMs(validation.ChallengesIssuedAt),
            AbandonedNodes = (uint)validation.AbandonedNodes,
        };
        message.Models.Add(validation.Models.Select(m => new ModelFleet { DeviceModel = m.DeviceModel, DeviceCount = (ulong)m.DeviceCount }));
        message.Sample.Add(validation.Sample.Select(ToMessage));
        return message;
    }

    public static SampledNode ToMessage(SampledNodeRecord node)
    {
        var message = new SampledNode
        {
            NodeId = node.NodeId,
            Site = node.Site,
            DeviceModel = node.DeviceModel,
            DeviceCount = (uint)node.DeviceCount,
            Outcome = ToWire(node.Outcome),
            AttestationId = node.AttestationId ?? 0,
            DeadlineUnixMs = UnixMs(node.DeadlineAt),
            CommittedUnixMs = UnixMs(node.CommittedAt),
            ElapsedMs = node.ElapsedMs ?? 0,
            Detail = node.Detail,
        };
        message.Devices.Add(node.Devices.Select(ToMessage));
        return message;
    }

    public static AttestationResult ToMessage(AttestationRecord attestation) => new()
    {
        AttestationId = attestation.AttestationId,
        ReportSha256 = Convert.ToHexStringLower(attestation.ReportSha256),
        Node = ToMessage(attestation.Node),
        Validation = ToMessage(attestation.Validation),
    };

    private static DeviceResult ToMessage(DeviceResultRecord device)
    {
        var message = new DeviceResult
        {
            DeviceIndex = (uint)device.DeviceIndex,
            ReportedName = device.ReportedName,
            // The wire's field is unsigned: a count below zero goes out as 0, never as a wrapped large number.
            Multiprocessors = (uint)Math.Max(0, device.Multiprocessors),
            DeviceModel = device.DeviceModel ?? "",
            Outcome = ToWire(device.Outcome),
            Detail = device.Detail,
        };
        message.Kernels.Add(device.Kernels.Select(k => new KernelResult
        {
            Kernel = k.Kernel,
            ArithmeticPath = k.Path,
            Rate = k.Rate,
            Unit = k.Unit,
            Reference = k.Reference,
            Peak = k.Peak,
            Judged = k.Judged,
            ReportedRate = k.ReportedRate,
        }));
        return message;
    }

    public static NodeKey ToMessage(RegisteredNodeKey key) => new()
    {
        CreditCode = key.ProviderId,
        NodeId = key.NodeId,
        KeyVersion = (uint)key.KeyVersion,
        KeySha256 = Convert.ToHexStringLower(key.KeySha256),
        RegisteredUnixMs = key.RegisteredAt.ToUnixTimeMilliseconds(),
        DeviceUuids = { key.DeviceUuids },
        Approved = key.Approval is not null,
        ApprovedBy = key.Approval?.ApprovedBy ?? "",
        ApprovedUnixMs = key.Approval?.ApprovedAt.ToUnixTimeMilliseconds() ?? 0,
        ApprovalReasons = key.Approval?.Reasons ?? "",
    };

    public static ChallengeSet ToMessage(ChallengeRound round)
    {
        var set = new ChallengeSet
        {
            CreditCode = round.CreditCode,
            ValidationId = round.ValidationId,
            IssuedUnixMs = round.IssuedAt.ToUnixTimeMilliseconds(),
            AllowanceMs = (long)round.Allowance.TotalMilliseconds,
            StartedNow = round.StartedNow,
        };
        foreach (NodeChallengeIssue node in round.Nodes)
        {
            var challenge = new NodeChallenge
            {
                NodeId = node.NodeId,
                NonceHex = Convert.ToHexStringLower(node.Nonce),
                DeviceModel = node.DeviceModel,
                DeviceCount = (uint)node.DeviceCount,
                RunsPerKernel = (uint)node.Plan.Runs,
                ExpectedMs = node.Plan.ExpectedMs,
                DeadlineUnixMs = node.Deadline.ToUnixTimeMilliseconds(),
                ExpiresUnixMs = node.Expires.ToUnixTimeMilliseconds(),
            };
            challenge.Work.Add(node.Plan.Kernels.Select(k => new KernelWork
            {
                Kernel = k.Kernel,
                Items = (uint)k.Size.Items,
                Iterations = (uint)k.Size.Iterations,
                WorkPerRun = k.WorkPerRun,
                DurationFloorNs = k.DurationFloorNs,
            }));
            set.Challenges.Add(challenge);
        }

        return set;
    }

    public static CommitmentReceipt ToMessage(CommitmentRecord record) => new()
    {
        NodeId = record.NodeId,
        ValidationId = record.ValidationId,
        IssuedUnixMs = record.IssuedAt.ToUnixTimeMilliseconds(),
        ReceivedUnixMs = record.ReceivedAt.ToUnixTimeMilliseconds(),
        ElapsedMs = record.ElapsedMs,
        DeadlineUnixMs = record.Deadline.ToUnixTimeMilliseconds(),
        CommitmentSha256 = Convert.ToHexStringLower(record.Sha256),
    };

    private static long UnixMs(DateTimeOffset? instant) => instant?.ToUnixTimeMilliseconds() ?? 0;
}
