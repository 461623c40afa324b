using System.Globalization;
using Metering.Engine.Catalog;
using Metering.Probe.Attestation.Checksums;
using Metering.Probe.Attestation.Results;

namespace Metering.Engine.Capacity;

/// <summary>What the server found for one reported device (the proto's DeviceOutcome).</summary>
internal enum DeviceVerdict
{
    Healthy,
    Unhealthy,
    ModelMismatch,
    AwaitingReview,
    Rejected,
    Undeclared,
}

/// <summary>What became of a sampled node (the proto's NodeOutcome, less "pending").</summary>
internal enum NodeVerdict
{
    Passed,
    Failed,
    AwaitingReview,
}

/// <summary>One kernel's rate (the server's, when the node was timed) beside the catalog figures it was judged by, and the rate the probe reported as information.</summary>
public sealed record KernelJudgement(string Kernel, string Path, long Rate, string Unit, long Reference, long Peak, bool Judged, long ReportedRate = 0);

/// <summary>One device's verdict.</summary>
internal sealed record DeviceJudgement(int Index, string ReportedName, int Multiprocessors, string? Model, DeviceVerdict Verdict, string Detail, IReadOnlyList<KernelJudgement> Kernels);

/// <summary>A rate no healthy device of the model reaches: the whole attestation is refused.</summary>
internal sealed record Forgery(int DeviceIndex, string Kernel, long Rate, long Peak, string Model);

/// <summary>
/// Judges a report whose checksums already verified against the catalog and the node it claims
/// to describe. Pure: the same report, catalog and aliases give the same verdicts.
///
/// Per device: the model is the catalog model whose probe names include the reported name (and
/// whose multiprocessor count, when the catalog gives one, matches), else an operator's earlier
/// decision for that name, else unknown (review). A rate above 1.10 × the model's peak is forged
/// and refuses the attestation. A model other than the declared one is a mismatch. Only rates on
/// the model's reference path ("ptx" for GPUs; the CPU fixture's "portable") count for health: a
/// counted rate below 0.90 × the reference fails the device; a device with no counted rate goes
/// to review; every kernel must have been measured.
/// </summary>
internal static class AttestationJudge
{
    /// <summary>Forged above peak × 11 / 10.</summary>
    public const int ForgedAbovePeakTenths = 11;

    /// <summary>Unhealthy below reference × 9 / 10.</summary>
    public const int HealthyFromReferenceTenths = 9;

    /// <summary>Resolves the model of a reported device: the catalog's probe names first, then the operators' aliases.</summary>
    public static DeviceModel? Resolve(CatalogVersion catalog, IReadOnlyDictionary<(string Name, int Multiprocessors), string> aliases, string reportedName, int multiprocessors)
    {
        foreach (DeviceModel model in catalog.Models)
        {
            if (model.Probe is { } probe && probe.Matches(reportedName, multiprocessors))
            {
                return model;
            }
        }

        return aliases.TryGetValue((reportedName, multiprocessors), out string? key) && catalog.TryGet(key, out DeviceModel aliased) && aliased.Probe is not null
            ? aliased
            : null;
    }

    /// <summary>
    /// The verdicts of a report's devices for a node declared as <paramref name="declaredCount"/>
    /// devices of <paramref name="declaredModel"/>; or the first forged rate. With
    /// <paramref name="serverRates"/> (by kernel), those are the rates judged, and the probe's own
    /// rates are kept beside them as information; a forged rate is still looked for among the
    /// probe's own, since no honest probe reports one.
    /// </summary>
    public static (IReadOnlyList<DeviceJudgement> Devices, Forgery? Forgery) Judge(
        ProbeReport report, string declaredModel, int declaredCount, CatalogVersion catalog, IReadOnlyDictionary<(string Name, int Multiprocessors), string> aliases,
        IReadOnlyDictionary<string, long>? serverRates = null)
    {
        var devices = new List<DeviceJudgement>(report.Devices.Count);
        for (int i = 0; i < report.Devices.Count; i++)
        {
            DeviceReport device = report.Devices[i];
            IReadOnlyList<(string Kernel, string Path, long Rate, string Unit)> reported =
                device.Measurements.Select(m => (m.Kernel, m.ArithmeticPath, m.MedianRate, m.RateUnit)).ToList();
            IReadOnlyList<(string Kernel, string Path, long Rate, string Unit)> kernels = serverRates is null ? reported
                : reported.Select(k => (k.Kernel, k.Path, serverRates.TryGetValue(k.Kernel, out long rate) ? rate : 0, k.Unit)).ToList();
            DeviceModel? model = Resolve(catalog, aliases, device.ModelName, device.Multiprocessors);
            DeviceJudgement judged = JudgeDevice(i, device.ModelName, device.Multiprocessors, kernels, model, declaredModel, reviewedBy: null);
            judged = judged with { Kernels = judged.Kernels.Select((k, j) => k with { ReportedRate = reported[j].Rate }).ToList() };
            if (FirstForged(i, reported, model) is { } forgery)
            {
                return (devices, forgery);
            }

            if (i >= declaredCount)
            {
                judged = judged with { Verdict = DeviceVerdict.Undeclared, Detail = $"device {i} is beyond the {declaredCount} device(s) the node declares" };
            }

            devices.Add(judged);
        }

        return (devices, null);
    }

    /// <summary>
    /// One device's verdict from its kernel rates. With <paramref name="reviewedBy"/> set, an
    /// operator has named the model, and a device with no rate on the reference path is taken
    /// on the operator's word instead of going to review again.
    /// </summary>
    public static DeviceJudgement JudgeDevice(
        int index, string reportedName, int multiprocessors, IReadOnlyList<(string Kernel, string Path, long Rate, string Unit)> kernels,
        DeviceModel? model, string declaredModel, string? reviewedBy)
    {
        if (model?.Probe is not { } probe)
        {
            return new DeviceJudgement(index, reportedName, multiprocessors, null, DeviceVerdict.AwaitingReview,
                $"'{reportedName}' with {multiprocessors} multiprocessor(s) is not a model the catalog's probe figures know; an operator decides what it is",
                kernels.Select(k => new KernelJudgement(k.Kernel, k.Path, k.Rate, k.Unit, 0, 0, false)).ToList());
        }

        var judgements = new List<KernelJudgement>(kernels.Count);
        foreach (var (kernel, path, rate, unit) in kernels)
        {
            bool known = KernelKinds.TryParse(kernel, out KernelKind kind);
            judgements.Add(new KernelJudgement(kernel, path, rate, unit,
                known ? probe.Reference.Of(kind) : 0, known ? probe.Peak.Of(kind) : 0, known && path == probe.ReferencePath));
        }

        if (FirstForged(index, kernels, model) is { } forged)
        {
            // Only reachable in review: a fresh attestation with a forged rate is refused whole.
            return new DeviceJudgement(index, reportedName, multiprocessors, model.Key, DeviceVerdict.Rejected,
                $"{forged.Kernel} rate {forged.Rate} is above 1.10 × the {model.Key} peak {forged.Peak}", judgements);
        }

        if (model.Key != declaredModel)
        {
            return new DeviceJudgement(index, reportedName, multiprocessors, model.Key, DeviceVerdict.ModelMismatch,
                $"the device is a {model.Key}; the node declares {declaredModel}", judgements);
        }

        string? missing = KernelKinds.All.Select(KernelKinds.Name).FirstOrDefault(name => !kernels.Any(k => k.Kernel == name));
        if (missing is not null)
        {
            return new DeviceJudgement(index, reportedName, multiprocessors, model.Key, DeviceVerdict.Unhealthy,
                $"kernel {missing} was not measured; a validation needs all four", judgements);
        }

        foreach (KernelJudgement kernel in judgements.Where(k => k.Judged))
        {
            // rate < 0.90 × reference, in integers: rate × 10 < reference × 9.
            if ((Int128)kernel.Rate * 10 < (Int128)kernel.Reference * HealthyFromReferenceTenths)
            {
                return new DeviceJudgement(index, reportedName, multiprocessors, model.Key, DeviceVerdict.Unhealthy,
                    string.Create(CultureInfo.InvariantCulture, $"{kernel.Kernel} ran at {kernel.Rate} {kernel.Unit}, below 0.90 × the {model.Key} reference {kernel.Reference}"), judgements);
            }
        }

        if (!judgements.Any(k => k.Judged))
        {
            return reviewedBy is null
                ? new DeviceJudgement(index, reportedName, multiprocessors, model.Key, DeviceVerdict.AwaitingReview,
                    $"no rate on the {model.Key} reference path '{probe.ReferencePath}' (the probe ran the {string.Join("/", kernels.Select(k => k.Path).Distinct())} path); an operator decides", judgements)
                : new DeviceJudgement(index, reportedName, multiprocessors, model.Key, DeviceVerdict.Healthy,
                    $"accepted in review by {reviewedBy} as {model.Key}, with no rate on its reference path to judge", judgements);
        }

        return new DeviceJudgement(index, reportedName, multiprocessors, model.Key, DeviceVerdict.Healthy,
            reviewedBy is null ? $"a healthy {model.Key}" : $"accepted in review by {reviewedBy} as {model.Key}; every judged rate at least 0.90 × its reference", judgements);
    }

    /// <summary>A node passes when it reports exactly its declared devices and every one is healthy.</summary>
    public static (NodeVerdict Verdict, string Detail) NodeOf(IReadOnlyList<DeviceJudgement> devices, int declaredCount)
    {
        if (devices.Count < declaredCount)
        {
            return (NodeVerdict.Failed, $"the report has {devices.Count} device(s); the node declares {declaredCount}");
        }

        if (devices.FirstOrDefault(d => d.Verdict is DeviceVerdict.Unhealthy or DeviceVerdict.ModelMismatch or DeviceVerdict.Rejected or DeviceVerdict.Undeclared) is { } failed)
        {
            return (NodeVerdict.Failed, $"device {failed.Index}: {failed.Detail}");
        }

        return devices.Any(d => d.Verdict == DeviceVerdict.AwaitingReview)
            ? (NodeVerdict.AwaitingReview, "a device awaits an operator's review")
            : (NodeVerdict.Passed, $"{devices.Count} healthy device(s) as declared");
    }

    private static Forgery? FirstForged(int index, IReadOnlyList<(string Kernel, string Path, long Rate, string Unit)> kernels, DeviceModel? model)
    {
        if (model?.Probe is not { } probe)
        {
            return null;
        }

        foreach (var (kernel, _, rate, _) in kernels)
        {
            // Any path: no emulation outruns the hardware either. rate > 1.10 × peak ⇔ rate × 10 > peak × 11.
            if (KernelKinds.TryParse(kernel, out KernelKind kind) && (Int128)rate * 10 > (Int128)probe.Peak.Of(kind) * ForgedAbovePeakTenths)
            {
                return new Forgery(index, kernel, rate, probe.Peak.Of(kind), model.Key);
            }
        }

        return null;
    }
}
