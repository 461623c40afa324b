using System.Collections.Frozen;
using System.Reflection;
using System.Text;

namespace Metering.Server.Localization;

/// <summary>
/// The Chinese message of each refusal reason (refusals.zh-CN.tsv, embedded), which every refusal
/// carries as a google.rpc.LocalizedMessage beside its ErrorInfo. The machine reason stays the
/// contract; the message is for the person reading it.
/// </summary>
internal static class RefusalMessages
{
    /// <summary>The locale of the messages, as BCP 47 names it.</summary>
    public const string Locale = "zh-CN";

    private static readonly Lazy<FrozenDictionary<string, string>> Chinese = new(Load);

    /// <summary>Every reason that has a Chinese message.</summary>
    public static IReadOnlyCollection<string> Reasons => Chinese.Value.Keys;

    /// <summary>The Chinese message for <paramref name="reason"/>, or null when the table has none.</summary>
    public static string? ChineseFor(string reason) => Chinese.Value.GetValueOrDefault(reason);

    private static FrozenDictionary<string, string> Load()
    {
        Assembly assembly = typeof(RefusalMessages).Assembly;
        using Stream stream = assembly.GetManifestResourceStream("Metering.Server.Localization.refusals.zh-CN.tsv")
            ?? throw new InvalidOperationException("the refusal messages (refusals.zh-CN.tsv) are not embedded in the server assembly");
        using var reader = new StreamReader(stream, Encoding.UTF8);
        var messages = new Dictionary<string, string>(StringComparer.Ordinal);
        int number = 0;
        while (reader.ReadLine() is { } line)
        {
            number++;
            if (line.Length == 0 || line.StartsWith('#'))
            {
                continue;
            }

            string[] fields = line.Split('\t');
            if (fields.Length != 2 || fields[0].Length == 0 || fields[1].Length == 0 || !messages.TryAdd(fields[0], fields[1]))
            {
                throw new InvalidOperationException($"refusals.zh-CN.tsv line {number} is not one new REASON<TAB>message pair");
            }
        }

        return messages.ToFrozenDictionary(StringComparer.Ordinal);
    }
}
