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

        if (device.Fp16DenseGflops is <= 0 or > Fp16DenseGflopsMax)
        {
            throw new InvalidDataException($"{origin}: device {device.Key} has fp16DenseGflops {device.Fp16DenseGflops}; it must be positive and at most {Fp16DenseGflopsMax} (100 PFLOPS per device).");
        }

        if (string.IsNullOrWhiteSpace(device.Source))
        {
            throw new InvalidDataException($"{origin}: device {device.Key} cites no source.");
        }

        return new DeviceModel(device.Key, device.Vendor ?? "", device.Name ?? device.Key, device.Fp16DenseGflops, device.Source, version)
        {
            Probe = device.Probe is null ? null : ProbeProfile.Parse(device.Probe, device.Key, device.Fp16DenseGflops, origin),
            Fixture = fixture,
        };
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
}

internal sealed class CatalogProbe
{
    public List<string>? DeviceNames { get; set; }

    public int? Multiprocessors { get; set; }

    public string? ReferencePath { get; set; }

    public CatalogKernelFigures? Peak { get; set; }

    public CatalogKernelFigures? Reference { get; set; }

    public string? Source { get; set; }
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
