using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Unicode;
using Metering.Engine.Ingest;

namespace Metering.Engine.RawLogs;

/// <summary>
/// Parses JSON Lines usage logs: one object per line in the schema of
/// proto/metering/v1/rawlog-formats.md. Unknown properties are refused, so a typo cannot silently
/// drop a field; the mapping may name one more property, which carries SM activity.
/// </summary>
internal sealed class JsonLinesParser(LogMappingRules rules) : ILogLineParser
{
    private const int UuidsMax = 64;

    private static readonly string[] FixedProperties =
    [
        "job_id", "holder_code", "account", "device_model", "gres", "device_count", "share_numerator", "share_denominator",
        "start", "end", "site", "energy_mwh", "device_uuids",
    ];

    /// <summary>Whether the format itself defines a property of this name, so that a mapping cannot take it for SM activity.</summary>
    public static bool IsFixedProperty(string name) => FixedProperties.Contains(name, StringComparer.Ordinal);

    public LineOutcome Parse(ReadOnlySpan<byte> line, out IngestRecord record, out LineRefusal refusal)
    {
        record = default;
        refusal = default;
        if (line.IsEmpty || line.IndexOfAnyExcept((byte)' ', (byte)'\t') < 0)
        {
            return LineOutcome.Skipped;
        }

        if (!Utf8.IsValid(line))
        {
            refusal = LineRefusal.Of(RawLogRefusalReason.InvalidUtf8, "the line is not valid UTF-8");
            return LineOutcome.Refused;
        }

        string jobId = "", holderCode = "", deviceModel = "", site = rules.Site;
        uint deviceCount = 0, shareNumerator = 1, shareDenominator = 1;
        long startUnixMs = 0, endUnixMs = 0;
        ulong? energyMwh = null;
        uint? smActiveBp = null;
        List<string>? uuids = null;
        bool hasStart = false, hasEnd = false, hasCount = false;
        string? account = null, gres = null;
        try
        {
            var reader = new Utf8JsonReader(line, new JsonReaderOptions { MaxDepth = 4, AllowMultipleValues = true });
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
            {
                return Malformed("the line is not a JSON object", out refusal);
            }

            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                if (reader.ValueTextEquals("job_id"u8)) { jobId = ReadString(ref reader); }
                else if (reader.ValueTextEquals("holder_code"u8)) { holderCode = ReadString(ref reader); }
                else if (reader.ValueTextEquals("account"u8)) { account = ReadString(ref reader); }
                else if (reader.ValueTextEquals("device_model"u8)) { deviceModel = ReadString(ref reader); }
                else if (reader.ValueTextEquals("gres"u8)) { gres = ReadString(ref reader); }
                else if (reader.ValueTextEquals("device_count"u8)) { deviceCount = ReadUInt32(ref reader); hasCount = true; }
                else if (reader.ValueTextEquals("share_numerator"u8)) { shareNumerator = ReadUInt32(ref reader); }
                else if (reader.ValueTextEquals("share_denominator"u8)) { shareDenominator = ReadUInt32(ref reader); }
                else if (reader.ValueTextEquals("start"u8)) { startUnixMs = ReadTime(ref reader); hasStart = true; }
                else if (reader.ValueTextEquals("end"u8)) { endUnixMs = ReadTime(ref reader); hasEnd = true; }
                else if (reader.ValueTextEquals("site"u8)) { site = ReadString(ref reader); }
                else if (reader.ValueTextEquals("energy_mwh"u8)) { energyMwh = ReadUInt64(ref reader); }
                else if (reader.ValueTextEquals("device_uuids"u8)) { ReadUuids(ref reader, uuids ??= []); }
                else if (rules.SmActiveProperty is byte[] smActiveProperty && reader.ValueTextEquals(smActiveProperty))
                {
                    if (!TryReadSmActive(ref reader, rules.SmActiveScale, out smActiveBp, out refusal))
                    {
                        return LineOutcome.Refused;
                    }
                }
                else
                {
                    return Malformed($"unknown property '{reader.GetString()}'", out refusal);
                }
            }

            if (reader.TokenType != JsonTokenType.EndObject || reader.Read())
            {
                return Malformed("the line holds more than one JSON object", out refusal);
            }
        }
        catch (Exception e) when (e is JsonException or FormatException or InvalidOperationException or OverflowException)
        {
            return Malformed(e.Message, out refusal);
        }

        if (string.IsNullOrEmpty(jobId) || !hasCount || !hasStart || !hasEnd)
        {
            return Malformed("job_id, device_count, start and end are required", out refusal);
        }

        if (string.IsNullOrEmpty(holderCode) == (account is null))
        {
            return Malformed("give exactly one of holder_code and account", out refusal);
        }

        if (account is not null)
        {
            if (!rules.TryHolder(Encoding.UTF8.GetBytes(account), out string holder))
            {
                refusal = LineRefusal.Of(RawLogRefusalReason.UnmappedAccount, $"account '{account}' has no holder in the mapping");
                return LineOutcome.Refused;
            }

            holderCode = holder;
        }

        if (string.IsNullOrEmpty(deviceModel) == (gres is null))
        {
            return Malformed("give exactly one of device_model and gres", out refusal);
        }

        if (gres is not null)
        {
            if (!rules.TryGresModel(Encoding.UTF8.GetBytes(gres), out string model))
            {
                refusal = LineRefusal.Of(RawLogRefusalReason.UnmappedDevice, $"GRES type '{gres}' has no device model in the mapping");
                return LineOutcome.Refused;
            }

            deviceModel = model;
        }

        // A record without UUIDs shares the one empty array instead of allocating a list.
        record = new IngestRecord(0, jobId, holderCode, deviceModel, deviceCount, shareNumerator, shareDenominator,
            startUnixMs, endUnixMs, site, uuids is null ? Array.Empty<string>() : uuids, energyMwh, smActiveBp);
        return LineOutcome.Record;
    }

    private static LineOutcome Malformed(string message, out LineRefusal refusal)
    {
        refusal = LineRefusal.Of(RawLogRefusalReason.MalformedLine, message);
        return LineOutcome.Refused;
    }

    private static string ReadString(ref Utf8JsonReader reader)
    {
        reader.Read();
        return reader.TokenType == JsonTokenType.String ? reader.GetString()! : throw new FormatException("expected a string");
    }

    private static uint ReadUInt32(ref Utf8JsonReader reader)
    {
        reader.Read();
        return reader.TokenType == JsonTokenType.Number && reader.TryGetUInt32(out uint value) ? value : throw new FormatException("expected a whole number");
    }

    private static ulong ReadUInt64(ref Utf8JsonReader reader)
    {
        reader.Read();
        return reader.TokenType == JsonTokenType.Number && reader.TryGetUInt64(out ulong value) ? value : throw new FormatException("expected a whole number");
    }

    /// <summary>
    /// Reads an SM-activity figure in <paramref name="scale"/> into whole basis points: a JSON number
    /// or decimal text, parsed as <see cref="decimal"/> (never binary floating point, whose 0.1 is
    /// not 0.1), checked against the scale's range as written, then scaled and rounded half away
    /// from zero. JSON null is no figure. Out of range is the ingest stream's own reason, so that a
    /// figure is refused alike on both paths.
    /// </summary>
    private static bool TryReadSmActive(ref Utf8JsonReader reader, SmActiveScale scale, out uint? smActiveBp, out LineRefusal refusal)
    {
        smActiveBp = null;
        refusal = default;
        reader.Read();
        decimal value = 0;
        if (reader.TokenType == JsonTokenType.Null)
        {
            return true;
        }

        const NumberStyles Style = NumberStyles.AllowLeadingSign | NumberStyles.AllowDecimalPoint | NumberStyles.AllowExponent;
        bool parsed = reader.TokenType switch
        {
            JsonTokenType.Number => reader.TryGetDecimal(out value),
            JsonTokenType.String => !reader.ValueIsEscaped && decimal.TryParse(reader.ValueSpan, Style, CultureInfo.InvariantCulture, out value),
            _ => false,
        };
        if (!parsed)
        {
            refusal = LineRefusal.Of(RawLogRefusalReason.MalformedLine, "the SM activity is not a number (a JSON number or decimal text like \"0.73\")");
            return false;
        }

        (decimal max, decimal basisPointsPerUnit, string unit) = scale switch
        {
            SmActiveScale.Fraction => (1m, 10_000m, "a fraction from 0 to 1"),
            SmActiveScale.Percent => (100m, 100m, "a percentage from 0 to 100"),
            _ => ((decimal)RecordValidator.SmActiveBpMax, 1m, $"basis points from 0 to {RecordValidator.SmActiveBpMax}"),
        };
        if (value < 0 || value > max)
        {
            refusal = new LineRefusal(IngestRefusalReason.SmActiveOutOfRange.ContractName(),
                $"the SM activity {value.ToString(CultureInfo.InvariantCulture)} is outside {unit}");
            return false;
        }

        if (scale == SmActiveScale.BasisPoints && value != decimal.Truncate(value))
        {
            refusal = LineRefusal.Of(RawLogRefusalReason.MalformedLine, "SM activity in basis points must be a whole number");
            return false;
        }

        smActiveBp = (uint)decimal.Round(value * basisPointsPerUnit, 0, MidpointRounding.AwayFromZero);
        return true;
    }

    private static long ReadTime(ref Utf8JsonReader reader)
    {
        reader.Read();
        // RFC 3339 date and time with an explicit zone: anything less would be read in the
        // server's own zone, and the stored time (and so the chain) would depend on the host.
        if (reader.TokenType != JsonTokenType.String || reader.ValueIsEscaped || !HasTimeAndZone(reader.ValueSpan)
            || !reader.TryGetDateTimeOffset(out DateTimeOffset time))
        {
            throw new FormatException("times must be RFC 3339 with a zone, like 2026-11-20T08:00:00+08:00");
        }

        return time.ToUnixTimeMilliseconds();
    }

    private static bool HasTimeAndZone(ReadOnlySpan<byte> text) =>
        text.Length >= 20 && text[10] is (byte)'T' or (byte)'t'
        && (text[^1] is (byte)'Z' or (byte)'z' || (text[^6] is (byte)'+' or (byte)'-' && text[^3] == (byte)':'));

    private static void ReadUuids(ref Utf8JsonReader reader, List<string> uuids)
    {
        reader.Read();
        if (reader.TokenType != JsonTokenType.StartArray)
        {
            throw new FormatException("device_uuids must be an array of strings");
        }

        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            if (reader.TokenType != JsonTokenType.String || uuids.Count >= UuidsMax)
            {
                throw new FormatException($"device_uuids must be at most {UuidsMax} strings");
            }

            uuids.Add(reader.GetString()!);
        }
    }
}
