using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Metering.Probe.Attestation.Results;

/// <summary>Reads and writes a <see cref="ProbeReport"/> as JSON (camelCase, byte strings as lowercase hex).</summary>
public static class ProbeReportJson
{
    /// <summary>A report with 64 devices and every opening is far below this; anything larger is refused unread.</summary>
    public const int JsonBytesMax = 16 * 1024 * 1024;

    public static string Serialize(ProbeReport report) => JsonSerializer.Serialize(report, ProbeReportJsonContext.Default.ProbeReport);

    /// <exception cref="FormatException">The text is too long, not JSON, or not a report.</exception>
    public static ProbeReport Deserialize(string json)
    {
        ArgumentNullException.ThrowIfNull(json);
        if (Encoding.UTF8.GetByteCount(json) > JsonBytesMax)
        {
            throw new FormatException($"A probe report is at most {JsonBytesMax} bytes of JSON.");
        }

        try
        {
            return JsonSerializer.Deserialize(json, ProbeReportJsonContext.Default.ProbeReport)
                ?? throw new FormatException("The JSON holds null, not a probe report.");
        }
        catch (JsonException exception)
        {
            throw new FormatException($"The JSON is not a probe report: {exception.Message}", exception);
        }
    }
}

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, WriteIndented = true, MaxDepth = 16)]
[JsonSerializable(typeof(ProbeReport))]
internal sealed partial class ProbeReportJsonContext : JsonSerializerContext;

/// <summary>Byte strings as lowercase hex rather than base64, so they read the same as in the README and the logs.</summary>
internal sealed class HexBytesConverter : JsonConverter<byte[]>
{
    public override byte[] Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) =>
        reader.TokenType == JsonTokenType.String
            ? HexBytes.Parse(reader.GetString()!)
            : throw new JsonException("Expected a hex string.");

    public override void Write(Utf8JsonWriter writer, byte[] value, JsonSerializerOptions options) =>
        writer.WriteStringValue(Convert.ToHexStringLower(value));
}

/// <summary>A list of byte strings as a JSON array of lowercase hex strings.</summary>
internal sealed class HexBytesListConverter : JsonConverter<IReadOnlyList<byte[]>>
{
    /// <summary>A Merkle path over at most 2^24 leaves has at most 24 siblings.</summary>
    private const int ItemsMax = 64;

    public override IReadOnlyList<byte[]> Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        if (reader.TokenType != JsonTokenType.StartArray)
        {
            throw new JsonException("Expected an array of hex strings.");
        }

        var items = new List<byte[]>();
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            if (reader.TokenType != JsonTokenType.String || items.Count == ItemsMax)
            {
                throw new JsonException($"Expected at most {ItemsMax} hex strings.");
            }

            items.Add(HexBytes.Parse(reader.GetString()!));
        }

        return items;
    }

    public override void Write(Utf8JsonWriter writer, IReadOnlyList<byte[]> value, JsonSerializerOptions options)
    {
        writer.WriteStartArray();
        foreach (byte[] item in value)
        {
            writer.WriteStringValue(Convert.ToHexStringLower(item));
        }

        writer.WriteEndArray();
    }
}

/// <summary>Strict hex parsing: even length, hex digits only.</summary>
public static class HexBytes
{
    /// <exception cref="JsonException">The text is not hex.</exception>
    public static byte[] Parse(string text) =>
        TryParse(text, out byte[] bytes) ? bytes : throw new JsonException($"'{Shorten(text)}' is not a hex string.");

    public static bool TryParse(string? text, out byte[] bytes)
    {
        bytes = [];
        if (text is null || text.Length % 2 != 0 || !text.All(char.IsAsciiHexDigit))
        {
            return false;
        }

        bytes = Convert.FromHexString(text);
        return true;
    }

    private static string Shorten(string text) => text.Length <= 80 ? text : text[..80] + "...";
}
