using Metering.Probe.Attestation.Results;

namespace Metering.Probe.Attestation.Checksums;

/// <summary>Why a checksum or a report was refused. Stable names: servers log and return them.</summary>
public enum VerificationFailure
{
    None = 0,

    /// <summary>The report's format is not one this verifier knows.</summary>
    UnsupportedFormat,

    /// <summary>The report ran on a locally drawn nonce.</summary>
    Unattested,

    /// <summary>The report names a nonce other than the one the server issued.</summary>
    NonceMismatch,

    /// <summary>A measurement names no known kernel, or a kernel twice.</summary>
    UnknownKernel,

    /// <summary>The work size is outside the limits of its kernel.</summary>
    InvalidWorkSize,

    /// <summary>Durations, median, work or rate do not agree with each other or with the work size.</summary>
    MeasurementInconsistent,

    /// <summary>Bytes of the wrong length, an index out of range, or a report too large to check.</summary>
    MalformedChecksum,

    /// <summary>The number of openings is not the number the challenge asks for.</summary>
    WrongOpeningCount,

    /// <summary>An opening's path has the wrong number of siblings for its index.</summary>
    PathLengthMismatch,

    /// <summary>A leaf the server recomputed differs from the leaf the probe committed: the arithmetic was not done, or done wrong.</summary>
    LeafMismatch,

    /// <summary>An opening's path does not lead to the claimed root, while its leaf is right.</summary>
    PathMismatch,

    /// <summary>Every opening leads to the same root, but not to the claimed one.</summary>
    RootMismatch,

    /// <summary>The openings are not the leaves the challenge drew from the nonce and the root.</summary>
    UnexpectedLeafIndex,
}

/// <summary>The outcome of a verification, with a sentence that says where it failed.</summary>
public sealed record VerificationResult(VerificationFailure Failure, string Detail)
{
    public static VerificationResult Valid { get; } = new(VerificationFailure.None, "valid");

    public bool IsValid => Failure == VerificationFailure.None;

    public override string ToString() => IsValid ? "valid" : $"{Failure}: {Detail}";
}

/// <summary>
/// The server's check of a probe's checksums: exact, and cheap because it recomputes only the
/// opened leaves (32 per kernel at most), each bounded by <see cref="WorkShape"/>'s limits.
/// </summary>
public static class ProbeVerifier
{
    /// <summary>
    /// Checks one kernel's commitment. Order: shape, then each path against the claimed root (all
    /// paths agreeing on another root means the root is wrong; one path disagreeing means that path
    /// or its leaf is wrong, told apart by recomputing that leaf), then the challenge indices, then
    /// every opened leaf recomputed from the nonce.
    /// </summary>
    public static VerificationResult VerifyChecksum(
        ReadOnlySpan<byte> nonce, KernelKind kind, WorkSize size, ReadOnlySpan<byte> claimedRoot, IReadOnlyList<LeafOpening> openings)
    {
        ArgumentNullException.ThrowIfNull(openings);
        if (!KernelKinds.IsDefined(kind))
        {
            return Fail(VerificationFailure.UnknownKernel, $"kernel kind {(int)kind} is unknown");
        }

        string name = KernelKinds.Name(kind);
        if (WorkShape.Validate(kind, size) is string sizeError)
        {
            return Fail(VerificationFailure.InvalidWorkSize, sizeError);
        }

        if (nonce.Length != InputKey.NonceBytes || claimedRoot.Length != MerkleTree.HashBytes)
        {
            return Fail(VerificationFailure.MalformedChecksum, $"{name}: the nonce and the root are 32 bytes each");
        }

        int expectedOpenings = Math.Min(WorkShape.OpeningsPerKernel, size.Items);
        if (openings.Count != expectedOpenings)
        {
            return Fail(VerificationFailure.WrongOpeningCount, $"{name}: {openings.Count} openings, the challenge asks for {expectedOpenings}");
        }

        foreach (LeafOpening opening in openings)
        {
            if ((uint)opening.Index >= (uint)size.Items || opening.LeafHash.Length != MerkleTree.HashBytes || opening.Path.Any(p => p.Length != MerkleTree.HashBytes))
            {
                return Fail(VerificationFailure.MalformedChecksum, $"{name}: opening of leaf {opening.Index} has an index outside [0, {size.Items}) or a hash that is not 32 bytes");
            }

            int pathLength = MerkleTree.PathLength(opening.Index, size.Items);
            if (opening.Path.Count != pathLength)
            {
                return Fail(VerificationFailure.PathLengthMismatch, $"{name}: leaf {opening.Index} has {opening.Path.Count} siblings, a tree of {size.Items} leaves needs {pathLength}");
            }
        }

        InputKey key = InputKey.Derive(nonce, kind, size);
        byte[][] roots = new byte[openings.Count][];
        for (int i = 0; i < openings.Count; i++)
        {
            roots[i] = new byte[MerkleTree.HashBytes];
            MerkleTree.FoldPath(openings[i].LeafHash, openings[i].Index, size.Items, openings[i].Path, roots[i]);
        }

        int firstOff = -1;
        for (int i = 0; i < roots.Length && firstOff < 0; i++)
        {
            if (!roots[i].AsSpan().SequenceEqual(claimedRoot))
            {
                firstOff = i;
            }
        }

        if (firstOff >= 0)
        {
            bool allAgree = roots.Length >= 2 && roots.All(r => r.AsSpan().SequenceEqual(roots[0]));
            if (allAgree)
            {
                return Fail(VerificationFailure.RootMismatch, $"{name}: all {roots.Length} openings lead to root {Convert.ToHexStringLower(roots[0])}, not the claimed {Convert.ToHexStringLower(claimedRoot)}");
            }

            LeafOpening off = openings[firstOff];
            return RecomputedLeafHash(kind, key, size, off.Index).AsSpan().SequenceEqual(off.LeafHash)
                ? Fail(VerificationFailure.PathMismatch, $"{name}: the path of leaf {off.Index} does not lead to the claimed root")
                : Fail(VerificationFailure.LeafMismatch, $"{name}: leaf {off.Index} is not the leaf the nonce gives, and its path does not lead to the claimed root");
        }

        int[] challenged = Challenge.Indices(nonce, kind, size, claimedRoot);
        for (int i = 0; i < challenged.Length; i++)
        {
            if (openings[i].Index != challenged[i])
            {
                return Fail(VerificationFailure.UnexpectedLeafIndex, $"{name}: opening {i} is leaf {openings[i].Index}, the challenge drew leaf {challenged[i]}");
            }
        }

        // The recomputation is the expensive part (up to a few million scalar operations per leaf), so it runs last and in parallel.
        var recomputed = new byte[openings.Count][];
        Parallel.For(0, openings.Count, i => recomputed[i] = RecomputedLeafHash(kind, key, size, openings[i].Index));
        for (int i = 0; i < openings.Count; i++)
        {
            if (!recomputed[i].AsSpan().SequenceEqual(openings[i].LeafHash))
            {
                return Fail(VerificationFailure.LeafMismatch, $"{name}: leaf {openings[i].Index} is not the leaf the nonce gives");
            }
        }

        return VerificationResult.Valid;
    }

    /// <summary>
    /// Checks a whole report against the nonce the server issued: format, attestation, nonce, the
    /// integer arithmetic of every measurement, then every kernel's checksum on the device's own
    /// nonce (<see cref="DeviceNonce"/>). Whether a rate is
    /// plausible for the device model is the catalog's question, not this one.
    /// </summary>
    public static VerificationResult VerifyReport(ReadOnlySpan<byte> issuedNonce, ProbeReport report)
    {
        ArgumentNullException.ThrowIfNull(report);
        if (report.Format != ProbeReport.CurrentFormat)
        {
            return Fail(VerificationFailure.UnsupportedFormat, $"format '{report.Format}' is not '{ProbeReport.CurrentFormat}'");
        }

        if (!report.Attested)
        {
            return Fail(VerificationFailure.Unattested, "the probe ran on a locally drawn nonce");
        }

        if (!report.Nonce.AsSpan().SequenceEqual(issuedNonce))
        {
            return Fail(VerificationFailure.NonceMismatch, "the report was made for another nonce than the one issued");
        }

        if (report.Devices.Count == 0 || report.Devices.Count > ProbeReport.DevicesMax || report.RunsPerKernel < 1 || report.RunsPerKernel > RunsMax)
        {
            return Fail(VerificationFailure.MalformedChecksum, $"a report has 1 to {ProbeReport.DevicesMax} devices and 1 to {RunsMax} runs per kernel");
        }

        foreach (DeviceReport device in report.Devices)
        {
            if (device.Index < 0 || device.Uuid is null || System.Text.Encoding.UTF8.GetByteCount(device.Uuid) > DeviceNonce.UuidBytesMax)
            {
                return Fail(VerificationFailure.MalformedChecksum, $"device {device.Index}: an index is not negative and a UUID is at most {DeviceNonce.UuidBytesMax} bytes");
            }

            // Each device's inputs come from its own nonce (the server's, its index and its UUID).
            byte[] deviceNonce = DeviceNonce.Derive(issuedNonce, device.Index, device.Uuid);
            var seen = new HashSet<KernelKind>();
            foreach (KernelMeasurement measurement in device.Measurements)
            {
                if (!KernelKinds.TryParse(measurement.Kernel, out KernelKind kind) || KernelKinds.Name(kind) != measurement.Kernel || !seen.Add(kind))
                {
                    return Fail(VerificationFailure.UnknownKernel, $"device {device.Index}: kernel '{measurement.Kernel}' is unknown or repeated");
                }

                string where = $"device {device.Index} {measurement.Kernel}";
                var size = new WorkSize(measurement.Items, measurement.Iterations);
                if (WorkShape.Validate(kind, size) is string sizeError)
                {
                    return Fail(VerificationFailure.InvalidWorkSize, $"device {device.Index}: {sizeError}");
                }

                if (MeasurementError(kind, size, measurement, report.RunsPerKernel) is string inconsistency)
                {
                    return Fail(VerificationFailure.MeasurementInconsistent, $"{where}: {inconsistency}");
                }

                VerificationResult checksum = VerifyChecksum(deviceNonce, kind, size, measurement.Checksum.Root, measurement.Checksum.Openings);
                if (!checksum.IsValid)
                {
                    return checksum with { Detail = $"device {device.Index}: {checksum.Detail}" };
                }
            }
        }

        return VerificationResult.Valid;
    }

    /// <summary>More timed runs than this would be a report padded to slow the server down.</summary>
    public const int RunsMax = 100;

    /// <summary>No single timed run of a probe kernel takes an hour.</summary>
    public const long DurationNsMax = 3_600_000_000_000;

    private static string? MeasurementError(KernelKind kind, WorkSize size, KernelMeasurement measurement, int runs)
    {
        if (measurement.RateUnit != KernelKinds.RateUnit(kind))
        {
            return $"rate unit '{measurement.RateUnit}' is not '{KernelKinds.RateUnit(kind)}'";
        }

        if (measurement.ArithmeticPath is not ("ptx" or "portable"))
        {
            return $"arithmetic path '{measurement.ArithmeticPath}' is neither 'ptx' nor 'portable'";
        }

        if (measurement.Checksum.LeafCount != size.Items)
        {
            return $"{measurement.Checksum.LeafCount} leaves for {size.Items} items";
        }

        if (measurement.WorkPerRun != WorkShape.WorkPerRun(kind, size))
        {
            return $"work per run {measurement.WorkPerRun} is not the {WorkShape.WorkPerRun(kind, size)} of {size}";
        }

        if (measurement.DurationsNs.Count != runs || measurement.DurationsNs.Any(d => d <= 0 || d > DurationNsMax))
        {
            return $"there must be {runs} durations between 1 ns and one hour";
        }

        long median = MeasurementMath.MedianNs(measurement.DurationsNs);
        if (measurement.MedianDurationNs != median)
        {
            return $"median {measurement.MedianDurationNs} ns is not the median {median} ns of the durations";
        }

        long rate = MeasurementMath.Rate(kind, measurement.WorkPerRun, median);
        return measurement.MedianRate != rate ? $"rate {measurement.MedianRate} is not {rate} {measurement.RateUnit}" : null;
    }

    private static byte[] RecomputedLeafHash(KernelKind kind, InputKey key, WorkSize size, int index)
    {
        byte[] payload = new byte[WorkShape.LeafPayloadBytes(kind)];
        ReferenceLeaves.Compute(kind, key, size, index, payload);
        byte[] hash = new byte[MerkleTree.HashBytes];
        MerkleTree.LeafHash(kind, index, payload, hash);
        return hash;
    }

    private static VerificationResult Fail(VerificationFailure failure, string detail) => new(failure, detail);
}
