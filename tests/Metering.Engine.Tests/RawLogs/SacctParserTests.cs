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
    [InlineData("4201|lab-vision|gpu-h100|gres/gpu:h100=8,gres/gpu:h100=8|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED", "MALFORMED_LINE")]
    [InlineData("4201|lab-vision|gpu-h100|gres/gpu=1,gres/gpu:a100=1,gres/gpu:h100=7|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED", "MALFORMED_LINE")]
    [InlineData("4201|lab-vision|gpu-h100|gres/gpu=2,gres/gpu=2|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED", "MALFORMED_LINE")]
    [InlineData("4201|lab-vision|gpu-h100|gres/gpu:=2|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED", "MALFORMED_LINE")]
    [InlineData("4201|lab-vision|gpu-h100|gres/gpu:a100=1,gres/gpu:v100=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED", "UNMAPPED_DEVICE")]
    [InlineData("4201|lab-vision|gpu-h100|gres/gpu:h100=8|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:02|COMPLETED", "ELAPSED_MISMATCH")]
    [InlineData("4201|lab-vision|gpu-h100|gres/gpu:h100=8|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|REQUEUED_SOMEHOW", "MALFORMED_LINE")]
    [InlineData("4201|lab-vision|gpu-h100|gres/gpu:h100=8|2026-11-20T08:00:00|Unknown|01:00:00|COMPLETED", "MALFORMED_LINE")]
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

    [Fact]
    public void A_suspended_job_is_metered_for_the_time_it_ran_when_its_line_shows_the_suspension()
    {
        // sacct --parsable2 --format=JobID,Account,Partition,AllocTRES,Start,End,Elapsed,Suspended,State
        SacctParser parser = Parser(header: "JobID|Account|Partition|AllocTRES|Start|End|Elapsed|Suspended|State");
        Assert.Equal(LineOutcome.Record, parser.Parse("4301|lab-vision|gpu-h100|billing=8,cpu=8,gres/gpu:h100=2,gres/gpu=2,mem=16G,node=1|2026-11-20T08:00:00|2026-11-20T10:00:00|01:30:00|00:30:00|COMPLETED"u8, out IngestRecord record, out _));
        Assert.Equal(ShanghaiEightAmMs, record.StartUnixMs);
        Assert.Equal(ShanghaiEightAmMs + 5_400_000, record.EndUnixMs);
        Assert.Equal(2u, record.DeviceCount);
    }

    [Theory]
    // End moved an hour later by hand, Elapsed and Suspended left alone.
    [InlineData("JobID|Account|Partition|AllocTRES|Start|End|Elapsed|Suspended|State", "4301|lab-vision|gpu-h100|gres/gpu:h100=2|2026-11-20T08:00:00|2026-11-20T11:00:00|01:30:00|00:30:00|COMPLETED")]
    // Suspended raised without moving End: the parts no longer add up.
    [InlineData("JobID|Account|Partition|AllocTRES|Start|End|Elapsed|Suspended|State", "4301|lab-vision|gpu-h100|gres/gpu:h100=2|2026-11-20T08:00:00|2026-11-20T10:00:00|01:30:00|01:30:00|COMPLETED")]
    // A shorter Elapsed with no Suspended column to account for it.
    [InlineData("JobID|Account|Partition|AllocTRES|Start|End|Elapsed|State", "4301|lab-vision|gpu-h100|gres/gpu:h100=2|2026-11-20T08:00:00|2026-11-20T10:00:00|01:30:00|COMPLETED")]
    // Elapsed longer than the window, "explained" by a negative suspension that cannot be written.
    [InlineData("JobID|Account|Partition|AllocTRES|Start|End|Elapsed|Suspended|State", "4301|lab-vision|gpu-h100|gres/gpu:h100=2|2026-11-20T08:00:00|2026-11-20T10:00:00|03:00:00|00:00:00|COMPLETED")]
    public void A_forged_suspension_is_refused_as_an_elapsed_mismatch(string header, string line)
    {
        SacctParser parser = Parser(header: header);
        Assert.Equal(LineOutcome.Refused, parser.Parse(Encoding.UTF8.GetBytes(line), out IngestRecord record, out LineRefusal refusal));
        Assert.Equal("ELAPSED_MISMATCH", refusal.Reason);
        Assert.Equal(default, record);
    }

    [Fact]
    public void A_job_holding_two_gpu_types_gives_one_record_per_type_with_stable_job_ids()
    {
        SacctParser parser = Parser();
        const string line = "4302|lab-vision|gpu-mixed|billing=2,cpu=2,gres/gpu:a100=1,gres/gpu:h100=1,gres/gpu=2,mem=4G,node=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED";
        for (int upload = 0; upload < 2; upload++)
        {
            Assert.Equal(LineOutcome.Record, parser.Parse(Encoding.UTF8.GetBytes(line), out IngestRecord first, out _));
            Assert.True(parser.TryNextRecord(out IngestRecord second));
            Assert.False(parser.TryNextRecord(out _));
            Assert.Equal(("4302/gpu:a100", "A100-SXM", 1u), (first.JobId, first.DeviceModel, first.DeviceCount));
            Assert.Equal(("4302/gpu:h100", "H100-SXM", 1u), (second.JobId, second.DeviceModel, second.DeviceCount));
            Assert.Equal((first.StartUnixMs, first.EndUnixMs), (second.StartUnixMs, second.EndUnixMs));
        }

        // The next line starts afresh: no record of the previous line is left to take.
        Assert.Equal(LineOutcome.Record, parser.Parse("4303|lab-vision|gpu-h100|gres/gpu:h100=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED"u8, out IngestRecord single, out _));
        Assert.Equal("4303", single.JobId);
        Assert.False(parser.TryNextRecord(out _));
    }

    [Fact]
    public void A_two_type_line_with_one_unmapped_type_gives_no_record_at_all()
    {
        SacctParser parser = Parser();
        Assert.Equal(LineOutcome.Refused, parser.Parse("4302|lab-vision|gpu-x|gres/gpu:a100=1,gres/gpu:v100=1,gres/gpu=2|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED"u8, out IngestRecord record, out LineRefusal refusal));
        Assert.Equal("UNMAPPED_DEVICE", refusal.Reason);
        Assert.Equal(default, record);
        Assert.False(parser.TryNextRecord(out _));
    }

    [Fact]
    public void An_earlier_run_of_a_requeued_job_is_metered_apart_from_its_later_run()
    {
        // sacct -D lists each run of a requeued job under the same JobID with its own Start.
        SacctParser parser = Parser();
        Assert.Equal(LineOutcome.Record, parser.Parse("4304|lab-vision|gpu-h100|billing=1,cpu=1,gres/gpu:h100=1,gres/gpu=1,mem=1G,node=1|2026-11-20T08:00:00|2026-11-20T08:20:00|00:20:00|REQUEUED"u8, out IngestRecord earlier, out _));
        Assert.Equal(LineOutcome.Record, parser.Parse("4304|lab-vision|gpu-h100|billing=1,cpu=1,gres/gpu:h100=1,gres/gpu=1,mem=1G,node=1|2026-11-20T08:21:00|2026-11-20T09:21:00|01:00:00|COMPLETED"u8, out IngestRecord later, out _));
        Assert.Equal(("4304", "4304"), (earlier.JobId, later.JobId));
        Assert.Equal(1_200_000, earlier.EndUnixMs - earlier.StartUnixMs);
        Assert.NotEqual(earlier.StartUnixMs, later.StartUnixMs);

        // A requeued run not yet over has no End to meter.
        Assert.Equal(LineOutcome.Skipped, parser.Parse("4305|lab-vision|gpu-h100|gres/gpu:h100=1|2026-11-20T08:00:00|Unknown|00:20:00|REQUEUED"u8, out _, out _));
    }

    [Theory]
    [InlineData("REVOKED")]
    [InlineData("SPECIAL_EXIT")]
    [InlineData("CANCELLED by 1000")]
    public void Finished_states_slurm_knows_are_metered(string state)
    {
        IngestRecord record = ParseOne($"4306|lab-vision|gpu-h100|gres/gpu:h100=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|{state}");
        Assert.Equal(3_600_000, record.EndUnixMs - record.StartUnixMs);
    }

    [Fact]
    public void A_job_that_never_started_is_skipped()
    {
        SacctParser parser = Parser();
        Assert.Equal(LineOutcome.Skipped, parser.Parse("4307|lab-vision|gpu-h100|billing=1,cpu=1,gres/gpu:h100=1,gres/gpu=1,mem=1G,node=1|None|2026-11-20T09:00:00|00:00:00|CANCELLED by 1000"u8, out IngestRecord record, out _));
        Assert.Equal(default, record);
    }

    [Fact]
    public void Heterogeneous_job_components_are_metered_each_under_its_own_id()
    {
        SacctParser parser = Parser();
        Assert.Equal(LineOutcome.Record, parser.Parse("18+0|lab-vision|gpu-h100|gres/gpu:h100=2|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED"u8, out IngestRecord first, out _));
        Assert.Equal(LineOutcome.Record, parser.Parse("18+1|lab-vision|gpu-h20|gres/gpu=4|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED"u8, out IngestRecord second, out _));
        Assert.Equal(LineOutcome.Skipped, parser.Parse("18+0.batch|lab-vision||gres/gpu:h100=2|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED"u8, out _, out _));
        Assert.Equal(("18+0", "H100-SXM", "18+1", "H20"), (first.JobId, first.DeviceModel, second.JobId, second.DeviceModel));
    }

    [Fact]
    public void A_partition_model_applies_when_the_node_writes_a_gres_type_the_mapping_does_not_name()
    {
        // Slurm writes the node's GRES type (here "tesla") even for a job that asked for untyped GPUs.
        IngestRecord record = ParseOne("4308|lab-vision|gpu-h20|billing=4,cpu=4,gres/gpu:tesla=4,gres/gpu=4,mem=8G,node=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED");
        Assert.Equal(("H20", 4u), (record.DeviceModel, record.DeviceCount));

        // A type the mapping names still wins over the partition.
        IngestRecord named = ParseOne("4309|lab-vision|gpu-h20|gres/gpu:h100=4,gres/gpu=4|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED");
        Assert.Equal("H100-SXM", named.DeviceModel);
    }

    [Fact]
    public void An_unnamed_gres_type_in_an_unmapped_partition_is_still_refused()
    {
        Assert.Equal(LineOutcome.Refused, Parser().Parse("4310|lab-vision|gpu-other|gres/gpu:tesla=4,gres/gpu=4|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED"u8, out _, out LineRefusal refusal));
        Assert.Equal("UNMAPPED_DEVICE", refusal.Reason);
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

    private static SacctParser Parser(LogMapping? mapping = null, string header = "JobID|Account|Partition|AllocTRES|Start|End|Elapsed|State")
    {
        var parser = new SacctParser(Rules(mapping));
        Assert.Null(parser.ReadHeader(Encoding.UTF8.GetBytes(header)));
        return parser;
    }
}
