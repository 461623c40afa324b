namespace Metering.Engine.Registry;

/// <summary>
/// Shenzhen's districts (including the new districts and 深汕特别合作区), by key and by Chinese name.
/// The guide admits only organisations registered in Shenzhen, 深汕 included.
/// </summary>
public static class Districts
{
    private static readonly (string Key, string Name)[] All =
    [
        ("futian", "福田区"),
        ("luohu", "罗湖区"),
        ("yantian", "盐田区"),
        ("nanshan", "南山区"),
        ("baoan", "宝安区"),
        ("longgang", "龙岗区"),
        ("longhua", "龙华区"),
        ("pingshan", "坪山区"),
        ("guangming", "光明区"),
        ("dapeng", "大鹏新区"),
        ("shenshan", "深汕特别合作区"),
    ];

    public static IEnumerable<string> Keys => All.Select(d => d.Key);

    /// <summary>The district key for a key or a Chinese name, or null when it is not in Shenzhen.</summary>
    public static string? Normalise(string? text)
    {
        string value = (text ?? "").Trim();
        foreach (var (key, name) in All)
        {
            if (string.Equals(value, key, StringComparison.OrdinalIgnoreCase) || value == name)
            {
                return key;
            }
        }

        return null;
    }

    public static string NameOf(string key) => All.FirstOrDefault(d => d.Key == key).Name ?? key;

    /// <summary>
    /// True when the credit code's registration-authority region (characters 3 to 8) is in
    /// Shenzhen (4403xx). 深汕特别合作区 lies in Shanwei's territory, so organisations there may
    /// also carry a Shanwei (4415xx) region.
    /// </summary>
    public static bool CodeRegionMatches(string creditCode, string districtKey) =>
        creditCode.Length == 18
        && (creditCode.AsSpan(2, 4).SequenceEqual("4403") || (districtKey == "shenshan" && creditCode.AsSpan(2, 4).SequenceEqual("4415")));
}
