using System.Collections.Frozen;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Metering.Engine.Catalog;

/// <summary>One device model of one catalog version.</summary>
/// <param name="Key">The catalog key clients send, for example "H100-SXM".</param>
/// <param name="Fp16DenseGflops">Dense FP16 tensor peak per device, in GFLOPS (never the sparse figure).</param>
public sealed record DeviceModel(string Key, string Vendor, string Name, long Fp16DenseGflops, string Source, string CatalogVersion)
{
    /// <summary>What the capacity probe measures on this model; null for a model the probe cannot reach.</summary>
    public ProbeProfile? Probe { get; init; }

    /// <summary>True for a model that only a test or bench overlay adds (never in the shipped catalog).</summary>
    public bool Fixture { get; init; }

    /// <summary>The model's MIG profiles; null for a model this catalog version lists none for.</summary>
    public MigLayout? Mig { get; init; }

    /// <summary>
    /// True when the model's capacity rests on the commissioned verifier's figure (委托核查): ILGPU
    /// cannot reach it (Ascend, AMD Instinct) or the probe cannot yet name it (no probe section).
    /// </summary>
    public bool CapacityFromVerifier { get; init; }

    /// <summary>Where the model's capacity figure comes from, as outputs state it.</summary>
    public string CapacityFigureSource => CapacityFromVerifier ? VerifierFigure : ProbeFigure;

    public const string ProbeFigure = "probe";

    public const string VerifierFigure = "verifier";

    /// <summary>
    /// The share of one device that a record's share stands for, as a fraction to normalise with.
    /// A share whose denominator is the model's MIG slice count names MIG slices and becomes the
    /// profile's multiprocessor fraction; any other share is taken as it is. False when the share
    /// names a slice count that no MIG profile of the model has (5/7 on an A100).
    /// </summary>
    public bool TryComputeShare(uint shareNumerator, uint shareDenominator, out uint numerator, out uint denominator)
    {
        if (Mig is { } mig && shareDenominator == mig.Slices)
        {
            numerator = mig.MultiprocessorsOf(shareNumerator);
            denominator = mig.Multiprocessors;
            return numerator != 0;
        }

        numerator = shareNumerator;
        denominator = shareDenominator;
        return true;
    }
}

/// <summary>One version of the device catalog, effective from a date (UTC) until the next version.</summary>
public sealed class CatalogVersion
{
    private readonly FrozenDictionary<string, DeviceModel> _models;

    internal CatalogVersion(string version, DateTimeOffset effectiveFrom, IEnumerable<DeviceModel> models)
    {
        Version = version;
        EffectiveFrom = effectiveFrom;
        _models = models.ToFrozenDictionary(m => m.Key, StringComparer.Ordinal);
    }

    public string Version { get; }

    public DateTimeOffset EffectiveFrom { get; }

    public long EffectiveFromUnixMs => EffectiveFrom.ToUnixTimeMilliseconds();

    public IEnumerable<DeviceModel> Models => _models.Values.OrderBy(m => m.Key, StringComparer.Ordinal);

    public bool TryGet(string key, out DeviceModel model) => _models.TryGetValue(key, out model!);
}

/// <summary>
/// The versioned, effective-dated device catalog. A record is normalised with the version in
/// force at its start time, and that version's name is stored with the record.
/// </summary>
public sealed class DeviceCatalog
{
    /// <summary>No single device comes near 100 PFLOPS dense FP16; a larger figure is a typo, and it would overflow usage bounds.</summary>
    public const long Fp16DenseGflopsMax = 100_000_000;

    private readonly CatalogVersion[] _versionsByEffectiveDate;

    public DeviceCatalog(IEnumerable<CatalogVersion> versions)
    {
        _versionsByEffectiveDate = versions.OrderBy(v => v.EffectiveFrom).ToArray();
        if (_versionsByEffectiveDate.Length == 0)
        {
            throw new ArgumentException("A device catalog needs at least one version.", nameof(versions));
        }
    }

    public IReadOnlyList<CatalogVersion> Versions => _versionsByEffectiveDate;

    public CatalogVersion Latest => _versionsByEffectiveDate[^1];

    /// <summary>A model of the latest version, or null: what declarations and fee schedules are checked against.</summary>
    public DeviceModel? Find(string key) => Latest.TryGet(key, out DeviceModel model) ? model : null;

    /// <summary>The version in force at a moment; the earliest version also covers anything before it.</summary>
    public CatalogVersion VersionAt(long unixMs)
    {
        var versions = _versionsByEffectiveDate;
        for (int i = versions.Length - 1; i > 0; i--)
        {
            if (versions[i].EffectiveFromUnixMs <= unixMs)
            {
                return versions[i];
            }
        }

        return versions[0];
    }

    /// <summary>The catalog files shipped inside the engine (Catalog/Data/*.json).</summary>
    public static DeviceCatalog LoadEmbedded()
    {
        var assembly = typeof(DeviceCatalog).Assembly;
        var versions = new List<CatalogVersion>();
        foreach (string name in assembly.GetManifestResourceNames().Where(n => n.StartsWith("catalog/", StringComparison.Ordinal)))
        {
            using Stream stream = assembly.GetManifestResourceStream(name)
                ?? throw new InvalidOperationException($"Catalog resource {name} is missing.");
            versions.Add(Parse(stream, name));
        }

        return new DeviceCatalog(versions);
    }

    /// <summary>Reads one catalog file, refusing duplicates, non-positive peaks and missing sources.</summary>
    public static CatalogVersion Parse(Stream json, string origin)
    {
        CatalogFile file = JsonSerializer.Deserialize(json, CatalogJsonContext.Default.CatalogFile)
            ?? throw new InvalidDataException($"{origin}: empty catalog file.");
        if (string.IsNullOrWhiteSpace(file.Version))
        {
            throw new InvalidDataException($"{origin}: the catalog has no version.");
        }

        if (!DateOnly.TryParseExact(file.EffectiveFrom, "yyyy-MM-dd", out DateOnly effective))
        {
            throw new InvalidDataException($"{origin}: effectiveFrom '{file.EffectiveFrom}' is not a yyyy-MM-dd date.");
        }

        var models = new List<DeviceModel>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (CatalogDevice device in file.Devices ?? [])
        {
            if (string.IsNullOrWhiteSpace(device.Key) || !seen.Add(device.Key))
            {
                throw new InvalidDataException($"{origin}: device key '{device.Key}' is empty or repeated.");
            }

            models.Add(ToModel(device, file.Version, origin, fixture: false));
        }

        var start = new DateTimeOffset(effective.ToDateTime(TimeOnly.MinValue), TimeSpan.Zero);
        return new CatalogVersion(file.Version, start, models);
    }

    /// <summary>
    /// This catalog with the models of an overlay file added to every version: how tests and the
    /// CPU bench add ILGPU's CPU accelerator, which the shipped catalog never lists. An overlay
    /// must say why it exists (<c>"overlay"</c>) and may not redefine a shipped model.
    /// </summary>
    public DeviceCatalog WithOverlay(Stream json, string origin)
    {
        CatalogFile file = JsonSerializer.Deserialize(json, CatalogJsonContext.Default.CatalogFile)
            ?? throw new InvalidDataException($"{origin}: empty overlay file.");
        if (string.IsNullOrWhiteSpace(file.Overlay))
        {
            throw new InvalidDataException($"{origin}: an overlay states what it is for in \"overlay\".");
        }

        var versions = new List<CatalogVersion>();
        foreach (CatalogVersion version in _versionsByEffectiveDate)
        {
            var models = version.Models.ToList();
            foreach (CatalogDevice device in file.Devices ?? [])
            {
                if (string.IsNullOrWhiteSpace(device.Key) || models.Any(m => m.Key == device.Key))
                {
                    throw new InvalidDataException($"{origin}: device key '{device.Key}' is empty, repeated or already in catalog {version.Version}.");
                }

                models.Add(ToModel(device, version.Version, origin, fixture: true));
            }

            versions.Add(new CatalogVersion(version.Version, version.EffectiveFrom, models));
        }

        return new DeviceCatalog(versions);
    }

    private static DeviceModel ToModel(CatalogDevice device, string version, string origin, bool fixture)
    {
        if (string.IsNullOrWhiteSpace(device.Key))
        {
            throw new InvalidDataException($"{origin}: a device has no key.");
        }

        // Keys travel as names in text: the settlement's day read joins a run's models by line
        // feeds (DayTotals), and outputs print them in columns.
        if (device.Key.Any(char.IsControl))
        {
            throw new InvalidDataException($"{origin}: device key '{device.Key.ReplaceLineEndings(" ")}' holds a control character.");
        }

        if (device.Fp16DenseGflops is <= 0 or > Fp16DenseGflopsMax)
        {
            throw new InvalidDataException($"{origin}: device {device.Key} has fp16DenseGflops {device.Fp16DenseGflops}; it must be positive and at most {Fp16DenseGflopsMax} (100 PFLOPS per device).");
        }

        if (string.IsNullOrWhiteSpace(device.Source))
        {
            throw new InvalidDataException($"{origin}: device {device.Key} cites no source.");
        }

        ProbeProfile? probe = device.Probe is null ? null : ProbeProfile.Parse(device.Probe, device.Key, device.Fp16DenseGflops, origin);
        bool fromVerifier = device.CapacityFigure switch
        {
            null => probe is null,
            DeviceModel.VerifierFigure => true,
            DeviceModel.ProbeFigure when probe is not null => false,
            _ => throw new InvalidDataException($"{origin}: device {device.Key} has capacityFigure '{device.CapacityFigure}'; it is '{DeviceModel.ProbeFigure}' (which needs a probe section) or '{DeviceModel.VerifierFigure}'."),
        };

        return new DeviceModel(device.Key, device.Vendor ?? "", device.Name ?? device.Key, device.Fp16DenseGflops, device.Source, version)
        {
            Probe = probe,
            Fixture = fixture,
            Mig = device.Mig is null ? null : ParseMig(device.Mig, device.Key, probe, origin),
            CapacityFromVerifier = fromVerifier,
        };
    }

    /// <summary>Largest compute-slice count of a MIG layout; NVIDIA's GPUs have at most seven.</summary>
    private const uint MigSlicesMax = 16;

    private static MigLayout ParseMig(CatalogMig mig, string key, ProbeProfile? probe, string origin)
    {
        string where = $"{origin}: device {key} mig";
        if (mig.Multiprocessors == 0 || (probe?.Multiprocessors is int probed && probed != mig.Multiprocessors))
        {
            throw new InvalidDataException($"{where}: multiprocessors {mig.Multiprocessors} must be positive and match the probe section's.");
        }

        if (mig.Slices is < 2 or > MigSlicesMax)
        {
            throw new InvalidDataException($"{where}: slices {mig.Slices} must be 2 to {MigSlicesMax}.");
        }

        if (string.IsNullOrWhiteSpace(mig.Source) || mig.Profiles is not { Count: > 0 })
        {
            throw new InvalidDataException($"{where}: needs profiles and a source.");
        }

        var profiles = new List<MigProfile>();
        foreach (CatalogMigProfile profile in mig.Profiles)
        {
            // Two profiles with one slice count differ only in memory; the share names slices, so they must agree on SMs.
            MigProfile? sameSlices = profiles.FirstOrDefault(p => p.Slices == profile.Slices);
            if (string.IsNullOrWhiteSpace(profile.Name) || profile.Slices == 0 || profile.Slices > mig.Slices
                || profile.Multiprocessors == 0 || profile.Multiprocessors > mig.Multiprocessors
                || (sameSlices is not null && sameSlices.Multiprocessors != profile.Multiprocessors))
            {
                throw new InvalidDataException($"{where}: profile '{profile.Name}' ({profile.Slices} slices, {profile.Multiprocessors} SMs) needs a name, 1 to {mig.Slices} slices, 1 to {mig.Multiprocessors} SMs, and the SMs of any other profile of the same slices.");
            }

            profiles.Add(new MigProfile(profile.Name, profile.Slices, profile.Multiprocessors));
        }

        return new MigLayout(mig.Multiprocessors, mig.Slices, profiles, mig.Source);
    }
}

internal sealed class CatalogFile
{
    public string Version { get; set; } = "";

    public string EffectiveFrom { get; set; } = "";

    public string? Unit { get; set; }

    /// <summary>Set only in an overlay file: what it is for (tests, the CPU bench).</summary>
    public string? Overlay { get; set; }

    public string? ProbeReferenceRule { get; set; }

    /// <summary>What changed against the previous version, in words (a version never edits figures already used).</summary>
    public string? Changes { get; set; }

    public string? CapacityFigureRule { get; set; }

    public string? MigRule { get; set; }

    public List<CatalogDevice>? Devices { get; set; }
}

internal sealed class CatalogDevice
{
    public string Key { get; set; } = "";

    public string? Vendor { get; set; }

    public string? Name { get; set; }

    public long Fp16DenseGflops { get; set; }

    public string Source { get; set; } = "";

    public string? Note { get; set; }

    public CatalogProbe? Probe { get; set; }

    /// <summary>"probe" or "verifier"; absent means "verifier" exactly when there is no probe section.</summary>
    public string? CapacityFigure { get; set; }

    public CatalogMig? Mig { get; set; }
}

internal sealed class CatalogMig
{
    public uint Multiprocessors { get; set; }

    public uint Slices { get; set; }

    public List<CatalogMigProfile>? Profiles { get; set; }

    public string? Source { get; set; }
}

internal sealed class CatalogMigProfile
{
    public string Name { get; set; } = "";

    public uint Slices { get; set; }

    public uint Multiprocessors { get; set; }
}

internal sealed class CatalogProbe
{
    public List<string>? DeviceNames { get; set; }

    public int? Multiprocessors { get; set; }

    public string? ReferencePath { get; set; }

    public CatalogKernelFigures? Peak { get; set; }

    public CatalogKernelFigures? Reference { get; set; }

    public CatalogKernelWork? Work { get; set; }

    public string? Source { get; set; }
}

/// <summary>Explicit challenge work per kernel, "ITEMS:ITERATIONS"; absent, the server sizes the work from the reference.</summary>
internal sealed class CatalogKernelWork
{
    public string? TensorFp16 { get; set; }

    public string? PackedFp16 { get; set; }

    public string? Fp32 { get; set; }

    public string? Memory { get; set; }
}

internal sealed class CatalogKernelFigures
{
    public long TensorFp16Mflops { get; set; }

    public long PackedFp16Mflops { get; set; }

    public long Fp32Mflops { get; set; }

    public long MemoryMbps { get; set; }
}

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, ReadCommentHandling = JsonCommentHandling.Skip)]
[JsonSerializable(typeof(CatalogFile))]
internal sealed partial class CatalogJsonContext : JsonSerializerContext;
