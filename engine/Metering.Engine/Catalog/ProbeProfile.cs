using Metering.Probe.Attestation.Checksums;

namespace Metering.Engine.Catalog;

/// <summary>
/// One figure per probe kernel, in the unit the probe reports it: MFLOP/s (10^6 FLOP/s) for the
/// three arithmetic kernels, MB/s (10^6 bytes/s) for memory bandwidth. Integers, because a
/// capacity that goes into admission is never computed in floating point.
/// </summary>
public readonly record struct KernelFigures(long TensorFp16Mflops, long PackedFp16Mflops, long Fp32Mflops, long MemoryMbps)
{
    public long Of(KernelKind kind) => kind switch
    {
        KernelKind.TensorFp16 => TensorFp16Mflops,
        KernelKind.PackedFp16 => PackedFp16Mflops,
        KernelKind.Fp32Fma => Fp32Mflops,
        KernelKind.MemoryBandwidth => MemoryMbps,
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "Unknown kernel kind."),
    };
}

/// <summary>
/// What the capacity probe expects of one device model: the names the probe reports for it, its
/// multiprocessor count, the physical peak of each kernel (a rate above 1.10 × peak is forged)
/// and the probe reference (what a healthy device of the model reaches with this probe; below
/// 0.90 × reference the device fails). See Capacity/README.md for the sources and the rule.
/// </summary>
public sealed record ProbeProfile(
    IReadOnlyList<string> DeviceNames,
    int? Multiprocessors,
    string ReferencePath,
    KernelFigures Peak,
    KernelFigures Reference,
    string Source)
{
    /// <summary>
    /// The challenge work the catalog sets explicitly for each kernel (the CPU test fixture's tiny
    /// sizes); null when the server sizes the work from the reference (Capacity/ChallengeWork.cs).
    /// </summary>
    public IReadOnlyDictionary<KernelKind, WorkSize>? Work { get; init; }

    /// <summary>Rates the probe measured with inline PTX on CUDA: hardware rates.</summary>
    public const string PtxPath = "ptx";

    /// <summary>Rates of the exact emulated path of the CPU and OpenCL: not hardware peaks.</summary>
    public const string PortablePath = "portable";

    /// <summary>No kernel of any device reaches 10^12 MFLOP/s (an exaFLOP/s) or 10^9 MB/s (a petabyte/s); a larger figure is a typo.</summary>
    public const long FigureMax = 1_000_000_000_000;

    public const int DeviceNamesMax = 16;

    public const int DeviceNameLengthMax = 128;

    /// <summary>Whether a device the probe reported is this model: one of its names, and its multiprocessor count when the catalog gives one.</summary>
    public bool Matches(string reportedName, int reportedMultiprocessors) =>
        DeviceNames.Contains(reportedName, StringComparer.Ordinal) && (Multiprocessors is null || Multiprocessors == reportedMultiprocessors);

    internal static ProbeProfile Parse(CatalogProbe probe, string key, long fp16DenseGflops, string origin)
    {
        string where = $"{origin}: device {key} probe";
        List<string> names = probe.DeviceNames ?? [];
        if (names.Count is 0 or > DeviceNamesMax || names.Any(n => string.IsNullOrWhiteSpace(n) || n.Length > DeviceNameLengthMax) || names.Distinct(StringComparer.Ordinal).Count() != names.Count)
        {
            throw new InvalidDataException($"{where}: deviceNames lists 1 to {DeviceNamesMax} distinct names of 1 to {DeviceNameLengthMax} characters.");
        }

        if (probe.Multiprocessors is <= 0 or > 100_000)
        {
            throw new InvalidDataException($"{where}: multiprocessors must be positive.");
        }

        string path = probe.ReferencePath ?? PtxPath;
        if (path is not (PtxPath or PortablePath))
        {
            throw new InvalidDataException($"{where}: referencePath must be '{PtxPath}' or '{PortablePath}', not '{path}'.");
        }

        if (string.IsNullOrWhiteSpace(probe.Source))
        {
            throw new InvalidDataException($"{where} cites no source for its peaks.");
        }

        KernelFigures peak = Figures(probe.Peak, where, "peak");
        KernelFigures reference = Figures(probe.Reference, where, "reference");
        foreach (KernelKind kind in KernelKinds.All)
        {
            if (reference.Of(kind) > peak.Of(kind))
            {
                throw new InvalidDataException($"{where}: the {KernelKinds.Name(kind)} reference {reference.Of(kind)} is above its peak {peak.Of(kind)}.");
            }
        }

        // The tensor peak is the catalog's dense FP16 figure in another unit; two figures for one
        // quantity would drift apart.
        if (peak.TensorFp16Mflops != checked(fp16DenseGflops * 1_000))
        {
            throw new InvalidDataException($"{where}: the tensor-fp16 peak {peak.TensorFp16Mflops} MFLOP/s is not fp16DenseGflops {fp16DenseGflops} × 1000.");
        }

        return new ProbeProfile(names, probe.Multiprocessors, path, peak, reference, probe.Source) { Work = ParseWork(probe.Work, where) };
    }

    private static Dictionary<KernelKind, WorkSize>? ParseWork(CatalogKernelWork? work, string where)
    {
        if (work is null)
        {
            return null;
        }

        var sizes = new Dictionary<KernelKind, WorkSize>();
        foreach ((KernelKind kind, string? text) in new[]
        {
            (KernelKind.TensorFp16, work.TensorFp16), (KernelKind.PackedFp16, work.PackedFp16), (KernelKind.Fp32Fma, work.Fp32), (KernelKind.MemoryBandwidth, work.Memory),
        })
        {
            string[] parts = (text ?? "").Split(':');
            if (parts.Length != 2 || !int.TryParse(parts[0], System.Globalization.NumberStyles.None, null, out int items)
                || !int.TryParse(parts[1], System.Globalization.NumberStyles.None, null, out int iterations))
            {
                throw new InvalidDataException($"{where}: work gives every kernel as \"ITEMS:ITERATIONS\"; {KernelKinds.Name(kind)} is '{text}'.");
            }

            var size = new WorkSize(items, iterations);
            if (WorkShape.Validate(kind, size) is string error)
            {
                throw new InvalidDataException($"{where}: work: {error}.");
            }

            sizes[kind] = size;
        }

        return sizes;
    }

    private static KernelFigures Figures(CatalogKernelFigures? figures, string where, string what)
    {
        if (figures is null)
        {
            throw new InvalidDataException($"{where}: {what} is missing.");
        }

        var result = new KernelFigures(figures.TensorFp16Mflops, figures.PackedFp16Mflops, figures.Fp32Mflops, figures.MemoryMbps);
        foreach (KernelKind kind in KernelKinds.All)
        {
            if (result.Of(kind) is <= 0 or > FigureMax)
            {
                throw new InvalidDataException($"{where}: the {what} of {KernelKinds.Name(kind)} is {result.Of(kind)}; it must be positive and at most {FigureMax}.");
            }
        }

        return result;
    }
}
