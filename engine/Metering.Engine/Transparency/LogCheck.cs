using Metering.Engine.Signing;

namespace Metering.Engine.Transparency;

/// <summary>
/// What an outsider checks with a tree head saved earlier and the server's published public key,
/// in the order transparency-log.md lists: the current head's signature, the saved head's, that
/// the log did not shrink, and the consistency proof between them. Each check returns null when
/// it holds and otherwise the first difference, as a sentence. The CLI and the tests share these.
/// </summary>
public static class LogCheck
{
    /// <summary>Whether <paramref name="current"/> extends <paramref name="saved"/>, both signed by <paramref name="key"/>, with <paramref name="proof"/> (PROOF(saved size, current size); empty when no proof is needed).</summary>
    public static string? Extends(SignedTreeHead saved, SignedTreeHead current, IReadOnlyList<byte[]> proof, ServerPublicKey key)
    {
        if (current.SignatureProblem(key) is { } currentProblem)
        {
            return $"the server's current tree head (size {current.TreeSize}) is not signed by the published key: {currentProblem}";
        }

        if (saved.SignatureProblem(key) is { } savedProblem)
        {
            return $"the saved tree head (size {saved.TreeSize}) is not signed by the published key: {savedProblem}";
        }

        if (current.TreeSize < saved.TreeSize)
        {
            return $"the log shrank: the saved head has {saved.TreeSize} leaves, the current head {current.TreeSize}";
        }

        if (current.TreeSize == saved.TreeSize)
        {
            return current.Root.AsSpan().SequenceEqual(saved.Root)
                ? null
                : $"the log of size {saved.TreeSize} changed: the saved head's root is {saved.RootHex}, the current head's {current.RootHex}";
        }

        if (saved.TreeSize == 0)
        {
            return null;
        }

        return LogTree.VerifyConsistency(saved.TreeSize, current.TreeSize, saved.Root, current.Root, proof)
            ? null
            : $"the current log (size {current.TreeSize}, root {current.RootHex}) does not extend the saved head (size {saved.TreeSize}, root {saved.RootHex}): "
              + $"the server's consistency proof ({proof.Count} hashes) does not lead from the saved root to the current one, so at least one of the first {saved.TreeSize} leaves was rewritten";
    }

    /// <summary>Whether <paramref name="path"/> proves <paramref name="leaf"/> at <paramref name="index"/> under <paramref name="head"/>, signed by <paramref name="key"/>.</summary>
    public static string? Includes(SignedTreeHead head, long index, LogLeaf leaf, IReadOnlyList<byte[]> path, ServerPublicKey key)
    {
        if (head.SignatureProblem(key) is { } problem)
        {
            return $"the tree head (size {head.TreeSize}) is not signed by the published key: {problem}";
        }

        return LogTree.VerifyInclusion(index, head.TreeSize, leaf.Hash(), path, head.Root)
            ? null
            : $"the inclusion proof of leaf {index} ({leaf.ProviderId} {leaf.Day:yyyy-MM-dd}) does not lead to the root {head.RootHex} of the head of size {head.TreeSize}";
    }
}
