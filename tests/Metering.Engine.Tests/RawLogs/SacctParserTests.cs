using System.Text;
using Metering.Engine.Catalog;
using Metering.Engine.Ingest;
using Metering.Engine.RawLogs;
using Metering.Protocol.V1;
using Metering.Fixtures;

namespace Metering.Engine.Tests.RawLogs;

public sealed class SacctParserTests
{
    private static readonly DeviceCatalog Catalog = DeviceCatalog.LoadEmbedded();
    private static readonly long ShanghaiEightAmMs = new DateTimeOffset(2026, 11, 20, 0, 0, 0, TimeSpan.Zero).ToUnixTimeMilliseconds();

    [Fact]
    public void Sample_log_gives_its_known_records_skips_and_refusals()
    {
        SacctParser parser = Parser();
        string[] lines = RawLogSamples.Sacct.TrimEnd('\n').Split('\n');
        Assert.Null(parser.ReadHeader(Encoding.UTF8.GetBytes(lines[0])));
        var records = new List<IngestRecord>();
        var refused = new List<(long, string)>();
        int skipped = 1;
        for (int i = 1; i < lines.Length; i++)
        {
            switch (parser.Parse(Encoding.UTF8.GetBytes(lines[i]), out IngestRecord record, out LineRefusal refusal))
            {
                case LineOutcome.Record: records.Add(record); break;
                case LineOutcome.Skipped: skipped++; break;
                default: refused.Add((i + 1, refusal.Reason)); break;
            }
        }

        Assert.Equal(RawLogSamples.SacctRecords, records.Count);
        Assert.Equal(RawLogSamples.SacctSkipped, skipped);
        Assert.Equal(RawLogSamples.SacctRefusals, refused);
        Assert.Equal(["4201", "4202", "4205", "4207", "4209"], records.Select(r => r.JobId));
        Assert.Equal(["H100-SXM", "H20", "H100-SXM", "A100-SXM", "H20"], records.Select(r => r.DeviceModel));
        Assert.Equal([8u, 4u, 16u, 2u, 8u], records.Select(r => r.DeviceCount));
    }

    [Fact]
    public void Local_times_are_read_in_the_mapped_zone()
    {
        IngestRecord record = ParseOne("4201|lab-vision|gpu-h100|gres/gpu:h100=8|2026-11-20T08:00:00|2026-11-20T10:30:00|02:30:00|COMPLETED");
        Assert.Equal(ShanghaiEightAmMs, record.StartUnixMs);
        Assert.Equal(ShanghaiEightAmMs + 9_000_000, record.EndUnixMs);
        Assert.Equal(TestRecords.Holder, record.HolderCode);
        Assert.Equal("sz-nanshan-dc1", record.Site);
        Assert.Equal((1u, 1u), (record.ShareNumerator, record.ShareDenominator));

        var utc = RawLogSamples.Mapping();
        utc.UtcOffsetMinutes = 0;
        IngestRecord inUtc = ParseOne("4201|lab-vision|gpu-h100|gres/gpu:h100=8|2026-11-20T00:00:00|2026-11-20T01:00:00|01:00:00|COMPLETED", utc);
        Assert.Equal(ShanghaiEightAmMs, inUtc.StartUnixMs);
    }

    [Fact]
    public void Numbered_steps_are_metered_instead_of_allocations_when_asked()
    {
        var mapping = RawLogSamples.Mapping();
        mapping.MeterSteps = true;
        SacctParser parser = Parser(mapping);
        Assert.Equal(LineOutcome.Skipped, parser.Parse("4201|lab-vision|gpu-h100|gres/gpu:h100=8|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED"u8, out _, out _));
        Assert.Equal(LineOutcome.Skipped, parser.Parse("4201.batch|lab-vision||gres/gpu:h100=8|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED"u8, out _, out _));
        Assert.Equal(LineOutcome.Record, parser.Parse("4201.0|lab-vision||gres/gpu:h100=8|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED"u8, out IngestRecord step, out _));
        Assert.Equal("4201.0", step.JobId);
    }

    [Theory]
    [InlineData("4201|lab-vision|gpu-h100|gres/gpu:h100=8|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00", "MALFORMED_LINE")]
    [InlineData("|lab-vision|gpu-h100|gres/gpu:h100=8|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED", "MALFORMED_LINE")]
    [InlineData("4201|lab-vision|gpu-h100|gres/gpu:h100=8|2026-11-20 08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED", "MALFORMED_LINE")]
    [InlineData("4201|lab-vision|gpu-h100|gres/gpu:h100=8|2026-02-30T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED", "MALFORMED_LINE")]
    [InlineData("4201|lab-vision|gpu-h100|gres/gpu:h100=8|2026-11-20T08:00:00|2026-11-20T09:00:00|1:00:99|COMPLETED", "MALFORMED_LINE")]
    [InlineData("4201|lab-vision|gpu-h100|gres/gpu:h100=eight|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED", "MALFORMED_LINE")]
    [InlineData("4201|lab-vision|gpu-h100|gres/gpu:h100=8,gres/gpu:a100=8|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED", "MALFORMED_LINE")]
    [InlineData("4201|lab-vision|gpu-h100|gres/gpu:h100=8|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|EXPLODED", "MALFORMED_LINE")]
    [InlineData("4201|lab-other|gpu-h100|gres/gpu:h100=8|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED", "UNMAPPED_ACCOUNT")]
    [InlineData("4201|lab-vision|gpu-h100|gres/gpu:v100=8|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED", "UNMAPPED_DEVICE")]
    [InlineData("4201|lab-vision|gpu-x|gres/gpu=8|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED", "UNMAPPED_DEVICE")]
    [InlineData("4201|lab-vision|gpu-h100|gres/gpu:h100=8|2026-11-20T08:00:00|2026-11-20T09:00:00|00:59:00|COMPLETED", "ELAPSED_MISMATCH")]
    public void Bad_lines_are_refused_with_their_reason(string line, string reason)
    {
        SacctParser parser = Parser();
        Assert.Equal(LineOutcome.Refused, parser.Parse(Encoding.UTF8.GetBytes(line), out IngestRecord record, out LineRefusal refusal));
        Assert.Equal(default, record);
        Assert.Equal(reason, refusal.Reason);
        Assert.False(string.IsNullOrWhiteSpace(refusal.Message));
    }

    [Fact]
    public void Other_gres_sharing_the_gpu_prefix_are_not_gpus()
    {
        IngestRecord record = ParseOne("4201|lab-vision|gpu-h100|gres/gpumem=40G,gres/gpu:h100=8,gres/gpuutil=100|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED");
        Assert.Equal(("H100-SXM", 8u), (record.DeviceModel, record.DeviceCount));
    }

    [Fact]
    public void Invalid_utf8_is_refused_as_such()
    {
        byte[] line = [.. "4201|lab-vision|"u8, 0xC3, 0x28, .. "|gres/gpu:h100=8|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED"u8];
        Assert.Equal(LineOutcome.Refused, Parser().Parse(line, out _, out LineRefusal refusal));
        Assert.Equal("INVALID_UTF8", refusal.Reason);
    }

    [Theory]
    [InlineData("JobID|Account|Partition|Start|End|Elapsed|State", "AllocTRES")]
    [InlineData("", "JobID")]
    public void A_header_without_a_required_field_names_it(string header, string missing)
    {
        string? problem = new SacctParser(Rules()).ReadHeader(Encoding.UTF8.GetBytes(header));
        Assert.NotNull(problem);
        Assert.Contains(missing, problem, StringComparison.Ordinal);
    }

    [Fact]
    public void Columns_are_found_by_name_in_any_order()
    {
        var parser = new SacctParser(Rules());
        Assert.Null(parser.ReadHeader("State|Elapsed|End|Start|AllocTRES|Partition|Account|JobID|NodeList"u8));
        Assert.Equal(LineOutcome.Record, parser.Parse("COMPLETED|01:00:00|2026-11-20T09:00:00|2026-11-20T08:00:00|gres/gpu:h100=8|gpu-h100|lab-vision|4201|node[01-02]"u8, out IngestRecord record, out _));
        Assert.Equal(("4201", 8u), (record.JobId, record.DeviceCount));
    }

    private static IngestRecord ParseOne(string line, LogMapping? mapping = null)
    {
        Assert.Equal(LineOutcome.Record, Parser(mapping).Parse(Encoding.UTF8.GetBytes(line), out IngestRecord record, out LineRefusal refusal));
        Assert.Null(refusal.Reason);
        return record;
    }

    private static LogMappingRules Rules(LogMapping? mapping = null)
    {
        LogMappingRules rules = LogMappingRules.Create(EngineRecords.Of(mapping ?? RawLogSamples.Mapping()), Catalog, out string? problem);
        Assert.Null(problem);
        return rules;
    }

    private static SacctParser Parser(LogMapping? mapping = null)
    {
        var parser = new SacctParser(Rules(mapping));
        Assert.Null(parser.ReadHeader("JobID|Account|Partition|AllocTRES|Start|End|Elapsed|State"u8));
        return parser;
    }
}
