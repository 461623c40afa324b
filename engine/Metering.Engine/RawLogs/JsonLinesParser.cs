using System.Text;
using System.Text.Json;
using System.Text.Unicode;
using Metering.Protocol.V1;

namespace Metering.Engine.RawLogs;

/// <summary>
/// Parses JSON Lines usage logs: one object per line in the schema of
/// proto/metering/v1/rawlog-formats.md. Unknown properties are refused, so a typo cannot silently
/// drop a field.
/// </summary>
internal sealed class JsonLinesParser(LogMappingRules rules) : ILogLineParser
{
    private const int UuidsMax = 64;

    public LineOutcome Parse(ReadOnlySpan<byte> line, out UsageRecord? record, out LineRefusal refusal)
    {
        record = null;
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

        var parsed = new UsageRecord { ShareNumerator = 1, ShareDenominator = 1, Site = rules.Site };
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
                if (reader.ValueTextEquals("job_id"u8)) { parsed.JobId = ReadString(ref reader); }
                else if (reader.ValueTextEquals("holder_code"u8)) { parsed.HolderCode = ReadString(ref reader); }
                else if (reader.ValueTextEquals("account"u8)) { account = ReadString(ref reader); }
                else if (reader.ValueTextEquals("device_model"u8)) { parsed.DeviceModel = ReadString(ref reader); }
                else if (reader.ValueTextEquals("gres"u8)) { gres = ReadString(ref reader); }
                else if (reader.ValueTextEquals("device_count"u8)) { parsed.DeviceCount = ReadUInt32(ref reader); hasCount = true; }
                else if (reader.ValueTextEquals("share_numerator"u8)) { parsed.ShareNumerator = ReadUInt32(ref reader); }
                else if (reader.ValueTextEquals("share_denominator"u8)) { parsed.ShareDenominator = ReadUInt32(ref reader); }
                else if (reader.ValueTextEquals("start"u8)) { parsed.StartUnixMs = ReadTime(ref reader); hasStart = true; }
                else if (reader.ValueTextEquals("end"u8)) { parsed.EndUnixMs = ReadTime(ref reader); hasEnd = true; }
                else if (reader.ValueTextEquals("site"u8)) { parsed.Site = ReadString(ref reader); }
                else if (reader.ValueTextEquals("energy_mwh"u8)) { parsed.EnergyMwh = ReadUInt64(ref reader); }
                else if (reader.ValueTextEquals("device_uuids"u8)) { ReadUuids(ref reader, parsed); }
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

        if (string.IsNullOrEmpty(parsed.JobId) || !hasCount || !hasStart || !hasEnd)
        {
            return Malformed("job_id, device_count, start and end are required", out refusal);
        }

        if (string.IsNullOrEmpty(parsed.HolderCode) == (account is null))
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

            parsed.HolderCode = holder;
        }

        if (string.IsNullOrEmpty(parsed.DeviceModel) == (gres is null))
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

            parsed.DeviceModel = model;
        }

        record = parsed;
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

    private static void ReadUuids(ref Utf8JsonReader reader, UsageRecord record)
    {
        reader.Read();
        if (reader.TokenType != JsonTokenType.StartArray)
        {
            throw new FormatException("device_uuids must be an array of strings");
        }

        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            if (reader.TokenType != JsonTokenType.String || record.DeviceUuids.Count >= UuidsMax)
            {
                throw new FormatException($"device_uuids must be at most {UuidsMax} strings");
            }

            record.DeviceUuids.Add(reader.GetString()!);
        }
    }
}
