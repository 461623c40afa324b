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
}
