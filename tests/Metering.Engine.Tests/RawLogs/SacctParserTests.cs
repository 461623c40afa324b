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
        Assert.Equal(SacctParser.Resolution.Dropped, parser.LastResolution);
        Assert.False(parser.TryTakeReleased(out _));
    }

    [Fact]
    public void With_steps_metered_a_batch_job_without_numbered_steps_is_metered_by_its_batch_step()
    {
        var mapping = RawLogSamples.Mapping();
        mapping.MeterSteps = true;
        SacctParser parser = Parser(mapping);

        // sacct --parsable2 lists the allocation, then .batch, then .extern, then numbered steps.
        Assert.Equal(LineOutcome.Skipped, parser.Parse("4401|lab-vision|gpu-h100|billing=2,cpu=2,gres/gpu:h100=2,gres/gpu=2,mem=4G,node=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED"u8, out _, out _));
        Assert.Equal(LineOutcome.Skipped, parser.Parse("4401.batch|lab-vision||cpu=2,gres/gpu:h100=2,gres/gpu=2,mem=4G,node=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED"u8, out _, out _));
        Assert.True(parser.HeldThisLine);
        Assert.Equal(LineOutcome.Skipped, parser.Parse("4401.extern|lab-vision||billing=2,cpu=2,gres/gpu:h100=2,gres/gpu=2,mem=4G,node=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED"u8, out _, out _));
        Assert.Equal(SacctParser.Resolution.None, parser.LastResolution);

        // The next job's first line shows 4401 had no numbered step: its .batch is released.
        Assert.Equal(LineOutcome.Skipped, parser.Parse("4402|lab-vision|gpu-h100|gres/gpu:h100=1,gres/gpu=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED"u8, out _, out _));
        Assert.Equal(SacctParser.Resolution.Released, parser.LastResolution);
        Assert.True(parser.TryTakeReleased(out IngestRecord batch));
        Assert.False(parser.TryTakeReleased(out _));
        Assert.Equal(("4401.batch", "H100-SXM", 2u), (batch.JobId, batch.DeviceModel, batch.DeviceCount));

        // 4402 has a step: its .batch is dropped and only the step is metered, never both.
        Assert.Equal(LineOutcome.Skipped, parser.Parse("4402.batch|lab-vision||gres/gpu:h100=1,gres/gpu=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED"u8, out _, out _));
        Assert.Equal(LineOutcome.Record, parser.Parse("4402.0|lab-vision||gres/gpu:h100=1,gres/gpu=1|2026-11-20T08:10:00|2026-11-20T08:50:00|00:40:00|COMPLETED"u8, out IngestRecord step, out _));
        Assert.Equal(SacctParser.Resolution.Dropped, parser.LastResolution);
        Assert.Equal("4402.0", step.JobId);

        // The last job of a file is released by the end of the file.
        Assert.Equal(LineOutcome.Skipped, parser.Parse("4403.batch|lab-vision||gres/gpu:h100=1,gres/gpu=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED"u8, out _, out _));
        parser.EndOfFile();
        Assert.True(parser.TryTakeReleased(out IngestRecord last));
        Assert.Equal("4403.batch", last.JobId);
    }

    [Fact]
    public void With_steps_metered_the_extern_step_and_a_batch_step_of_an_unfinished_job_are_not_metered()
    {
        var mapping = RawLogSamples.Mapping();
        mapping.MeterSteps = true;
        SacctParser parser = Parser(mapping);
        Assert.Equal(LineOutcome.Skipped, parser.Parse("4404.extern|lab-vision||gres/gpu:h100=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED"u8, out _, out _));
        Assert.False(parser.HeldThisLine);
        Assert.Equal(LineOutcome.Skipped, parser.Parse("4405.batch|lab-vision||gres/gpu:h100=1|2026-11-20T08:00:00|Unknown|01:00:00|RUNNING"u8, out _, out _));
        Assert.False(parser.HeldThisLine);
        parser.EndOfFile();
        Assert.False(parser.TryTakeReleased(out _));
    }

    [Fact]
    public void A_step_moved_after_another_job_cannot_be_paid_beside_its_released_batch_step()
    {
        // The cheater moves job 4406's step below the next job, so that its .batch is released first.
        var mapping = RawLogSamples.Mapping();
        mapping.MeterSteps = true;
        SacctParser parser = Parser(mapping);
        Assert.Equal(LineOutcome.Skipped, parser.Parse("4406.batch|lab-vision||gres/gpu:h100=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED"u8, out _, out _));
        Assert.Equal(LineOutcome.Skipped, parser.Parse("4407|lab-vision|gpu-h100|gres/gpu:h100=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED"u8, out _, out _));
        Assert.True(parser.TryTakeReleased(out IngestRecord batch));
        Assert.Equal("4406.batch", batch.JobId);
        Assert.Equal(LineOutcome.Refused, parser.Parse("4406.0|lab-vision||gres/gpu:h100=1|2026-11-20T08:00:00|2026-11-20T09:00:00|01:00:00|COMPLETED"u8, out IngestRecord step, out LineRefusal refusal));
        Assert.Equal("MALFORMED_LINE", refusal.Reason);
        Assert.Equal(default, step);
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

    [Fact]
    public void A_named_zone_reads_summer_and_winter_times_with_their_own_offsets()
    {
        LogMapping york = NewYork();
        IngestRecord summer = ParseOne("4501|lab-vision|gpu-h100|gres/gpu:h100=1|2026-07-01T08:00:00|2026-07-01T09:00:00|01:00:00|COMPLETED", york);
        IngestRecord winter = ParseOne("4502|lab-vision|gpu-h100|gres/gpu:h100=1|2026-12-01T08:00:00|2026-12-01T09:00:00|01:00:00|COMPLETED", york);
        Assert.Equal(new DateTimeOffset(2026, 7, 1, 12, 0, 0, TimeSpan.Zero).ToUnixTimeMilliseconds(), summer.StartUnixMs);
        Assert.Equal(new DateTimeOffset(2026, 12, 1, 13, 0, 0, TimeSpan.Zero).ToUnixTimeMilliseconds(), winter.StartUnixMs);
    }

    [Fact]
    public void A_job_across_the_spring_change_is_metered_for_the_hour_it_really_ran()
    {
        // 01:30 EST is 06:30Z; 03:30 EDT is 07:30Z: one hour, as Slurm's Elapsed says.
        IngestRecord record = ParseOne("4503|lab-vision|gpu-h100|gres/gpu:h100=1|2026-03-08T01:30:00|2026-03-08T03:30:00|01:00:00|COMPLETED", NewYork());
        Assert.Equal(new DateTimeOffset(2026, 3, 8, 6, 30, 0, TimeSpan.Zero).ToUnixTimeMilliseconds(), record.StartUnixMs);
        Assert.Equal(3_600_000, record.EndUnixMs - record.StartUnixMs);
    }

    [Theory]
    // 02:30 on 8 March 2026 does not exist in New York (02:00 became 03:00).
    [InlineData("4504|lab-vision|gpu-h100|gres/gpu:h100=1|2026-03-08T02:30:00|2026-03-08T03:30:00|00:30:00|COMPLETED")]
    // 01:30 on 1 November 2026 happens twice (02:00 became 01:00 again).
    [InlineData("4505|lab-vision|gpu-h100|gres/gpu:h100=1|2026-11-01T00:30:00|2026-11-01T01:30:00|01:00:00|COMPLETED")]
    [InlineData("4506|lab-vision|gpu-h100|gres/gpu:h100=1|2026-11-01T01:30:00|2026-11-01T03:00:00|01:30:00|COMPLETED")]
    public void A_local_time_the_zone_skips_or_repeats_is_refused_by_name(string line)
    {
        Assert.Equal(LineOutcome.Refused, Parser(NewYork()).Parse(Encoding.UTF8.GetBytes(line), out IngestRecord record, out LineRefusal refusal));
        Assert.Equal("UNRESOLVABLE_LOCAL_TIME", refusal.Reason);
        Assert.Contains("America/New_York", refusal.Message, StringComparison.Ordinal);
        Assert.Equal(default, record);
    }

    [Fact]
    public void A_named_zone_still_catches_an_end_moved_by_hand()
    {
        Assert.Equal(LineOutcome.Refused, Parser(NewYork()).Parse("4507|lab-vision|gpu-h100|gres/gpu:h100=1|2026-03-08T01:30:00|2026-03-08T04:30:00|01:00:00|COMPLETED"u8, out _, out LineRefusal refusal));
        Assert.Equal("ELAPSED_MISMATCH", refusal.Reason);
    }

    [Theory]
    [InlineData("Mars/Olympus_Mons", null)]
    [InlineData("America/New_York", 480)]
    public void A_mapping_with_an_unknown_zone_or_a_zone_and_an_offset_is_refused(string zone, int? offset)
    {
        LogMapping mapping = RawLogSamples.Mapping();
        mapping.TimeZone = zone;
        if (offset is int minutes)
        {
            mapping.UtcOffsetMinutes = minutes;
        }

        LogMappingRules.Create(EngineRecords.Of(mapping), Catalog, out string? problem);
        Assert.NotNull(problem);
        Assert.Contains("time_zone", problem, StringComparison.Ordinal);
    }

    [Fact]
    public void The_zone_is_part_of_the_mapping_fingerprint_only_when_given()
    {
        LogMapping plain = RawLogSamples.Mapping();
        string before = LogMappingRules.Fingerprint(EngineRecords.Of(plain));
        Assert.Equal(before, LogMappingRules.Fingerprint(EngineRecords.Of(RawLogSamples.Mapping())));
        Assert.NotEqual(before, LogMappingRules.Fingerprint(EngineRecords.Of(NewYork())));
    }

    private static LogMapping NewYork()
    {
        LogMapping mapping = RawLogSamples.Mapping();
        mapping.TimeZone = "America/New_York";
        return mapping;
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
