using System.Text;
using Metering.Engine.Catalog;
using Metering.Engine.Ingest;
using Metering.Engine.RawLogs;
using Metering.Fixtures;

namespace Metering.Engine.Tests.RawLogs;

public sealed class JsonLinesParserTests
{
    private static readonly JsonLinesParser Parser = new(LogMappingRules.Create(EngineRecords.Of(RawLogSamples.Mapping()), DeviceCatalog.LoadEmbedded(), out _));

    [Fact]
    public void A_full_line_becomes_a_record()
    {
        const string line = """{"job_id":"j-1","holder_code":"9144030071526726XG","device_model":"A100-SXM","device_count":1,"share_numerator":3,"share_denominator":7,"start":"2026-11-20T08:00:00+08:00","end":"2026-11-20T00:30:00Z","site":"sz-qianhai-dc2","device_uuids":["GPU-1"],"energy_mwh":150000}""";
        Assert.Equal(LineOutcome.Record, Parser.Parse(Encoding.UTF8.GetBytes(line), out IngestRecord record, out _));
        Assert.Equal("j-1", record.JobId);
        Assert.Equal((3u, 7u), (record.ShareNumerator, record.ShareDenominator));
        Assert.Equal(1_800_000, record.EndUnixMs - record.StartUnixMs);
        Assert.Equal("sz-qianhai-dc2", record.Site);
        Assert.Equal(["GPU-1"], record.DeviceUuids);
        Assert.Equal(150_000ul, record.EnergyMwh);
    }

    [Fact]
    public void Account_and_gres_go_through_the_mapping_and_defaults_fill_the_rest()
    {
        const string line = """{"job_id":"j-2","account":"lab-speech","gres":"h100","device_count":8,"start":"2026-11-20T08:00:00+08:00","end":"2026-11-20T09:00:00+08:00"}""";
        Assert.Equal(LineOutcome.Record, Parser.Parse(Encoding.UTF8.GetBytes(line), out IngestRecord record, out _));
        Assert.Equal(("914403001922038216", "H100-SXM", "sz-nanshan-dc1", 1u, 1u), (record.HolderCode, record.DeviceModel, record.Site, record.ShareNumerator, record.ShareDenominator));
        Assert.Null(record.EnergyMwh);
    }

    [Theory]
    [InlineData("""{"job_id":"j","holder_code":"9144030071526726XG","device_model":"H100-SXM","device_count":8,"start":"2026-11-20T08:00:00+08:00","end":"2026-11-20T09:00:00+08:00","colour":"red"}""", "MALFORMED_LINE", "unknown property")]
    [InlineData("""{"job_id":"j","holder_code":"9144030071526726XG","device_model":"H100-SXM","start":"2026-11-20T08:00:00+08:00","end":"2026-11-20T09:00:00+08:00"}""", "MALFORMED_LINE", "required")]
    [InlineData("""{"job_id":"j","holder_code":"9144030071526726XG","device_model":"H100-SXM","device_count":8,"start":"2026-11-20T08:00:00","end":"2026-11-20T09:00:00+08:00"}""", "MALFORMED_LINE", "zone")]
    [InlineData("""{"job_id":"j","holder_code":"9144030071526726XG","account":"lab-vision","device_model":"H100-SXM","device_count":8,"start":"2026-11-20T08:00:00Z","end":"2026-11-20T09:00:00Z"}""", "MALFORMED_LINE", "exactly one")]
    [InlineData("""{"job_id":"j","holder_code":"9144030071526726XG","device_model":"H100-SXM","device_count":-8,"start":"2026-11-20T08:00:00Z","end":"2026-11-20T09:00:00Z"}""", "MALFORMED_LINE", "whole number")]
    [InlineData("""{"job_id":"j","account":"nobody","device_model":"H100-SXM","device_count":8,"start":"2026-11-20T08:00:00Z","end":"2026-11-20T09:00:00Z"}""", "UNMAPPED_ACCOUNT", "nobody")]
    [InlineData("""{"job_id":"j","account":"lab-vision","gres":"v100","device_count":8,"start":"2026-11-20T08:00:00Z","end":"2026-11-20T09:00:00Z"}""", "UNMAPPED_DEVICE", "v100")]
    [InlineData("""{"job_id":"j","holder_code":"9144030071526726XG","device_model":"H100-SXM","device_count":8,"start":"2026-11-20","end":"2026-11-21T00:00:00Z"}""", "MALFORMED_LINE", "zone")]
    [InlineData("""{"job_id":"j","holder_code":"9144030071526726XG","device_model":"H100-SXM","device_count":8,"start":"2026-11-20T08:00:00+0800","end":"2026-11-21T00:00:00Z"}""", "MALFORMED_LINE", "zone")]
    [InlineData("""[1,2,3]""", "MALFORMED_LINE", "not a JSON object")]
    [InlineData("""{"job_id":"j" """, "MALFORMED_LINE", "")]
    [InlineData("""{"job_id":"j"} {"job_id":"k"}""", "MALFORMED_LINE", "more than one")]
    public void Bad_lines_are_refused_with_their_reason(string line, string reason, string detail)
    {
        Assert.Equal(LineOutcome.Refused, Parser.Parse(Encoding.UTF8.GetBytes(line), out IngestRecord record, out LineRefusal refusal));
        Assert.Equal(default, record);
        Assert.Equal(reason, refusal.Reason);
        Assert.Contains(detail, refusal.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Blank_lines_are_skipped()
    {
        Assert.Equal(LineOutcome.Skipped, Parser.Parse("   "u8, out _, out _));
        Assert.Equal(LineOutcome.Skipped, Parser.Parse(""u8, out _, out _));
    }

    private static JsonLinesParser SmActiveParser(SmActiveScale scale) =>
        new(LogMappingRules.Create(EngineRecords.Of(RawLogSamples.Mapping()) with { SmActiveProperty = "sm_active", SmActiveScale = scale }, DeviceCatalog.LoadEmbedded(), out _));

    private static string WithSmActive(string value) =>
        """{"job_id":"j","account":"lab-vision","gres":"h100","device_count":8,"start":"2026-11-20T08:00:00Z","end":"2026-11-20T09:00:00Z","sm_active":""" + value + "}";

    [Theory]
    [InlineData(SmActiveScale.Fraction, "0.7315", 7_315u)]
    [InlineData(SmActiveScale.Fraction, "\"0.7315\"", 7_315u)]
    [InlineData(SmActiveScale.Fraction, "7.315e-1", 7_315u)]
    [InlineData(SmActiveScale.Fraction, "0.00005", 1u)]
    [InlineData(SmActiveScale.Fraction, "0.000049999", 0u)]
    [InlineData(SmActiveScale.Fraction, "0.99995", 10_000u)]
    [InlineData(SmActiveScale.Fraction, "1", 10_000u)]
    [InlineData(SmActiveScale.Fraction, "0", 0u)]
    [InlineData(SmActiveScale.Fraction, "0.1", 1_000u)]
    [InlineData(SmActiveScale.Percent, "73.155", 7_316u)]
    [InlineData(SmActiveScale.Percent, "\"12.5\"", 1_250u)]
    [InlineData(SmActiveScale.Percent, "100", 10_000u)]
    [InlineData(SmActiveScale.BasisPoints, "4200", 4_200u)]
    [InlineData(SmActiveScale.BasisPoints, "\"10000\"", 10_000u)]
    [InlineData(SmActiveScale.BasisPoints, "42.0", 42u)]
    public void A_named_sm_activity_property_becomes_basis_points_rounded_half_away_from_zero(SmActiveScale scale, string value, uint expectedBp)
    {
        LineOutcome outcome = SmActiveParser(scale).Parse(Encoding.UTF8.GetBytes(WithSmActive(value)), out IngestRecord record, out LineRefusal refusal);
        Assert.True(outcome == LineOutcome.Record, refusal.Message);
        Assert.Equal(expectedBp, record.SmActiveBp);
    }

    [Fact]
    public void A_null_or_missing_figure_leaves_the_record_without_one()
    {
        JsonLinesParser parser = SmActiveParser(SmActiveScale.Fraction);
        Assert.Equal(LineOutcome.Record, parser.Parse(Encoding.UTF8.GetBytes(WithSmActive("null")), out IngestRecord nulled, out _));
        Assert.Null(nulled.SmActiveBp);
        const string without = """{"job_id":"j","account":"lab-vision","gres":"h100","device_count":8,"start":"2026-11-20T08:00:00Z","end":"2026-11-20T09:00:00Z"}""";
        Assert.Equal(LineOutcome.Record, parser.Parse(Encoding.UTF8.GetBytes(without), out IngestRecord missing, out _));
        Assert.Null(missing.SmActiveBp);
    }

    [Theory]
    [InlineData(SmActiveScale.BasisPoints, "10001", "SM_ACTIVE_OUT_OF_RANGE")]
    [InlineData(SmActiveScale.BasisPoints, "-1", "SM_ACTIVE_OUT_OF_RANGE")]
    [InlineData(SmActiveScale.BasisPoints, "42.5", "MALFORMED_LINE")]
    [InlineData(SmActiveScale.Fraction, "1.00001", "SM_ACTIVE_OUT_OF_RANGE")]
    [InlineData(SmActiveScale.Fraction, "-0.01", "SM_ACTIVE_OUT_OF_RANGE")]
    [InlineData(SmActiveScale.Fraction, "\"-0.5\"", "SM_ACTIVE_OUT_OF_RANGE")]
    [InlineData(SmActiveScale.Percent, "100.01", "SM_ACTIVE_OUT_OF_RANGE")]
    [InlineData(SmActiveScale.Fraction, "\"busy\"", "MALFORMED_LINE")]
    [InlineData(SmActiveScale.Fraction, "\"NaN\"", "MALFORMED_LINE")]
    [InlineData(SmActiveScale.Fraction, "\" 0.5\"", "MALFORMED_LINE")]
    [InlineData(SmActiveScale.Fraction, "\"0,5\"", "MALFORMED_LINE")]
    [InlineData(SmActiveScale.Fraction, "true", "MALFORMED_LINE")]
    [InlineData(SmActiveScale.Fraction, "[0.5]", "MALFORMED_LINE")]
    [InlineData(SmActiveScale.Fraction, "1e400", "MALFORMED_LINE")]
    public void A_figure_out_of_range_or_not_a_number_refuses_the_line(SmActiveScale scale, string value, string reason)
    {
        Assert.Equal(LineOutcome.Refused, SmActiveParser(scale).Parse(Encoding.UTF8.GetBytes(WithSmActive(value)), out IngestRecord record, out LineRefusal refusal));
        Assert.Equal(default, record);
        Assert.Equal(reason, refusal.Reason);
    }

    [Fact]
    public void Without_a_named_property_an_sm_activity_figure_is_an_unknown_property()
    {
        Assert.Equal(LineOutcome.Refused, Parser.Parse(Encoding.UTF8.GetBytes(WithSmActive("0.5")), out _, out LineRefusal refusal));
        Assert.Equal("MALFORMED_LINE", refusal.Reason);
        Assert.Contains("unknown property 'sm_active'", refusal.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("sm_active", SmActiveScale.Unspecified)]
    [InlineData("", SmActiveScale.Fraction)]
    [InlineData("device_count", SmActiveScale.BasisPoints)]
    [InlineData("sm_active", (SmActiveScale)7)]
    public void A_mapping_with_a_half_named_or_clashing_sm_activity_property_is_refused(string property, SmActiveScale scale)
    {
        LogMappingRules.Create(EngineRecords.Of(RawLogSamples.Mapping()) with { SmActiveProperty = property, SmActiveScale = scale }, DeviceCatalog.LoadEmbedded(), out string? problem);
        Assert.Contains("sm_active", problem, StringComparison.Ordinal);
    }

    [Fact]
    public void The_sm_activity_property_and_scale_are_part_of_the_mapping_fingerprint_only_when_named()
    {
        LogMappingSpec plain = EngineRecords.Of(RawLogSamples.Mapping());
        string fraction = LogMappingRules.Fingerprint(plain with { SmActiveProperty = "sm_active", SmActiveScale = SmActiveScale.Fraction });
        string percent = LogMappingRules.Fingerprint(plain with { SmActiveProperty = "sm_active", SmActiveScale = SmActiveScale.Percent });
        Assert.Equal(LogMappingRules.Fingerprint(plain), LogMappingRules.Fingerprint(plain with { SmActiveProperty = "" }));
        Assert.Equal(3, new[] { LogMappingRules.Fingerprint(plain), fraction, percent }.Distinct().Count());
    }
}
