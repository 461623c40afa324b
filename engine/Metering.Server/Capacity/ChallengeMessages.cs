using Metering.Engine.Capacity;
using Metering.Protocol.V1;

namespace Metering.Server.Capacity;

/// <summary>Maps the engine's challenge records to the wire messages.</summary>
internal static class ChallengeMessages
{
    public static ChallengeSet Of(ChallengeRound round)
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

    public static CommitmentReceipt Of(CommitmentRecord record) => new()
    {
        NodeId = record.NodeId,
        ValidationId = record.ValidationId,
        IssuedUnixMs = record.IssuedAt.ToUnixTimeMilliseconds(),
        ReceivedUnixMs = record.ReceivedAt.ToUnixTimeMilliseconds(),
        ElapsedMs = record.ElapsedMs,
        DeadlineUnixMs = record.Deadline.ToUnixTimeMilliseconds(),
        CommitmentSha256 = Convert.ToHexStringLower(record.Sha256),
    };
}
