using System.Text;
using Metering.Engine.Catalog;
using Metering.Engine.Identity;

namespace Metering.Engine.RawLogs;

/// <summary>
/// A checked <see cref="LogMappingSpec"/>: every holder is a valid credit code and every model a catalog
/// key, so a line can only fail on its own content. Lookups take UTF-8 bytes straight from the line
/// and allocate nothing.
/// </summary>
public sealed class LogMappingRules
{
    private const int KeyCharsMax = 256;

    private readonly Dictionary<string, string>.AlternateLookup<ReadOnlySpan<char>> _holders;
    private readonly Dictionary<string, string>.AlternateLookup<ReadOnlySpan<char>> _gresModels;
    private readonly Dictionary<string, string>.AlternateLookup<ReadOnlySpan<char>> _partitionModels;

    private LogMappingRules(LogMappingSpec mapping)
    {
        _holders = new Dictionary<string, string>(mapping.AccountHolders, StringComparer.Ordinal).GetAlternateLookup<ReadOnlySpan<char>>();
        _gresModels = new Dictionary<string, string>(mapping.GresModels, StringComparer.Ordinal).GetAlternateLookup<ReadOnlySpan<char>>();
        _partitionModels = new Dictionary<string, string>(mapping.PartitionModels, StringComparer.Ordinal).GetAlternateLookup<ReadOnlySpan<char>>();
        Site = mapping.Site;
        UtcOffset = TimeSpan.FromMinutes(mapping.UtcOffsetMinutes ?? 480);
        MeterSteps = mapping.MeterSteps;
        SmActiveProperty = string.IsNullOrEmpty(mapping.SmActiveProperty) ? null : Encoding.UTF8.GetBytes(mapping.SmActiveProperty);
        SmActiveScale = mapping.SmActiveScale;
        Zone = string.IsNullOrEmpty(mapping.TimeZone) || !TimeZoneInfo.TryFindSystemTimeZoneById(mapping.TimeZone, out TimeZoneInfo? zone) ? null : zone;
    }

    public string Site { get; }

    public TimeSpan UtcOffset { get; }

    public bool MeterSteps { get; }

    /// <summary>The cluster's IANA zone, when the mapping names one; otherwise <see cref="UtcOffset"/> applies.</summary>
    public TimeZoneInfo? Zone { get; }

    /// <summary>The UTF-8 name of the JSON Lines property that carries SM activity; null when lines carry none.</summary>
    public byte[]? SmActiveProperty { get; }

    /// <summary>The scale of <see cref="SmActiveProperty"/>'s values.</summary>
    public SmActiveScale SmActiveScale { get; }

    /// <summary>Checks a mapping; returns the rules, or the first problem as a sentence.</summary>
    public static LogMappingRules Create(LogMappingSpec mapping, DeviceCatalog catalog, out string? problem, int siteBytesMax = 64)
    {
        problem = null;
        int siteBytes = Encoding.UTF8.GetByteCount(mapping.Site);
        if (siteBytes == 0 || siteBytes > siteBytesMax || mapping.Site.Contains('\0', StringComparison.Ordinal))
        {
            problem = $"mapping site must be 1 to {siteBytesMax} bytes of UTF-8 without NUL";
        }

        foreach (var (account, holder) in mapping.AccountHolders)
        {
            if (!CreditCode.IsValid(holder))
            {
                problem = $"mapping account_holders['{account}'] = '{holder}' is not a valid unified social credit code";
            }
        }

        foreach (var (name, model) in mapping.GresModels.Concat(mapping.PartitionModels))
        {
            if (!catalog.Latest.TryGet(model, out _))
            {
                problem = $"mapping names device model '{model}' for '{name}', which is not in device catalog {catalog.Latest.Version}";
            }
        }

        if (mapping.UtcOffsetMinutes is int offsetMinutes && Math.Abs(offsetMinutes) > 14 * 60)
        {
            problem = $"mapping utc_offset_minutes {offsetMinutes} is outside ±840";
        }

        if (!string.IsNullOrEmpty(mapping.TimeZone))
        {
            if (mapping.UtcOffsetMinutes is not null)
            {
                problem = "mapping names both time_zone and utc_offset_minutes; give one";
            }
            else if (mapping.TimeZone.Length > KeyCharsMax || !TimeZoneInfo.TryFindSystemTimeZoneById(mapping.TimeZone, out _))
            {
                problem = $"mapping time_zone '{mapping.TimeZone}' is not an IANA time zone this server knows (like Asia/Shanghai or America/New_York)";
            }
        }

        if (string.IsNullOrEmpty(mapping.SmActiveProperty) != (mapping.SmActiveScale == SmActiveScale.Unspecified))
        {
            problem = "mapping sm_active_property and sm_active_scale go together: name the property and its scale (basis points, fraction or percent), or neither";
        }
        else if (!string.IsNullOrEmpty(mapping.SmActiveProperty)
            && (mapping.SmActiveProperty.Length > KeyCharsMax || !Enum.IsDefined(mapping.SmActiveScale) || JsonLinesParser.IsFixedProperty(mapping.SmActiveProperty)))
        {
            problem = $"mapping sm_active_property '{mapping.SmActiveProperty}' must be 1 to {KeyCharsMax} characters, not a property the format already defines, with a known sm_active_scale";
        }

        if (mapping.AccountHolders.Keys.Concat(mapping.GresModels.Keys).Concat(mapping.PartitionModels.Keys).Any(k => k.Length is 0 or > KeyCharsMax))
        {
            problem = $"mapping keys must be 1 to {KeyCharsMax} characters";
        }

        return new LogMappingRules(mapping);
    }

    /// <summary>
    /// SHA-256 of the mapping's canonical text (each map sorted by key, then site, offset and the
    /// steps switch): two mappings that map every line alike have the same fingerprint.
    /// </summary>
    public static string Fingerprint(LogMappingSpec mapping)
    {
        var text = new StringBuilder();
        foreach (var (name, map) in new[] { ("holder", mapping.AccountHolders), ("gres", mapping.GresModels), ("partition", mapping.PartitionModels) })
        {
            foreach (var (key, value) in map.OrderBy(entry => entry.Key, StringComparer.Ordinal))
            {
                text.Append(name).Append('\t').Append(key).Append('\t').Append(value).Append('\n');
            }
        }

        text.Append("site\t").Append(mapping.Site).Append('\n');
        text.Append("utc_offset_minutes\t").Append(mapping.UtcOffsetMinutes ?? 480).Append('\n');
        text.Append("meter_steps\t").Append(mapping.MeterSteps ? 1 : 0).Append('\n');

        // Only when given, so that the fingerprints of mappings without a zone stay as they were.
        if (!string.IsNullOrEmpty(mapping.TimeZone))
        {
            text.Append("time_zone\t").Append(mapping.TimeZone).Append('\n');
        }

        if (!string.IsNullOrEmpty(mapping.SmActiveProperty))
        {
            text.Append("sm_active\t").Append(mapping.SmActiveProperty).Append('\t').Append((int)mapping.SmActiveScale).Append('\n');
        }

        return Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString())));
    }

    public bool TryHolder(ReadOnlySpan<byte> account, out string holder) => TryLookup(_holders, account, out holder);

    public bool TryGresModel(ReadOnlySpan<byte> gresType, out string model) => TryLookup(_gresModels, gresType, out model);

    public bool TryPartitionModel(ReadOnlySpan<byte> partition, out string model) => TryLookup(_partitionModels, partition, out model);

    private static bool TryLookup(Dictionary<string, string>.AlternateLookup<ReadOnlySpan<char>> map, ReadOnlySpan<byte> utf8, out string value)
    {
        value = "";
        if (utf8.Length > KeyCharsMax)
        {
            return false;
        }

        Span<char> chars = stackalloc char[KeyCharsMax];
        if (!Encoding.UTF8.TryGetChars(utf8, chars, out int written))
        {
            return false;
        }

        return map.TryGetValue(chars[..written], out value!);
    }
}
