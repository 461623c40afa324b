using Metering.Engine.Catalog;
using Metering.Engine.Ingest;
using Metering.Fixtures;

namespace Metering.Engine.Tests.Ingest;

public sealed class RecordValidatorTests
{
    private static readonly RecordValidator Validator = new(new IngestLimits(), DeviceCatalog.LoadEmbedded());

    // "Now" is a day after the test records start.
    private static readonly long NowMs = TestRecords.BaseStartMs + 86_400_000;

    [Fact]
    public void A_valid_record_passes_and_yields_its_catalog_entry()
    {
        Refusal refusal = Validator.Validate(EngineRecords.Of(TestRecords.Valid(1)), NowMs, out DeviceModel? model);
        Assert.False(refusal.IsRefused, refusal.Message);
        Assert.Equal("H100-SXM", model!.Key);
    }

    public static TheoryData<string, IngestRefusalReason> Mutations => new()
    {
        { "unknown model", IngestRefusalReason.UnknownDeviceModel },
        { "sparse-looking model key", IngestRefusalReason.UnknownDeviceModel },
        { "end equals start", IngestRefusalReason.EndNotAfterStart },
        { "end before start", IngestRefusalReason.EndNotAfterStart },
        { "longer than 24 h", IngestRefusalReason.DurationTooLong },
        { "end 6 minutes in the future", IngestRefusalReason.TimeInFuture },
        { "start before 2024", IngestRefusalReason.TimeTooOld },
        { "zero devices", IngestRefusalReason.DeviceCountOutOfRange },
        { "too many devices", IngestRefusalReason.DeviceCountOutOfRange },
        { "zero share", IngestRefusalReason.ShareOutOfRange },
        { "share above one", IngestRefusalReason.ShareOutOfRange },
        { "zero denominator", IngestRefusalReason.ShareOutOfRange },
        { "denominator above 1000", IngestRefusalReason.ShareOutOfRange },
        { "holder check character wrong", IngestRefusalReason.HolderCodeInvalid },
        { "holder too short", IngestRefusalReason.HolderCodeInvalid },
        { "empty job id", IngestRefusalReason.JobIdInvalid },
        { "job id of 129 bytes", IngestRefusalReason.JobIdInvalid },
        { "empty site", IngestRefusalReason.SiteInvalid },
        { "NUL in job id", IngestRefusalReason.JobIdInvalid },
        { "NUL in site", IngestRefusalReason.SiteInvalid },
        { "more UUIDs than devices", IngestRefusalReason.DeviceUuidsInvalid },
        { "empty UUID", IngestRefusalReason.DeviceUuidsInvalid },
        { "energy above 5 kW per device", IngestRefusalReason.EnergyOutOfRange },
        { "SM activity of 10001 basis points", IngestRefusalReason.SmActiveOutOfRange },
        { "SM activity of the largest u32", IngestRefusalReason.SmActiveOutOfRange },
    };

    [Theory]
    [MemberData(nameof(Mutations))]
    public void Each_invalid_field_is_refused_with_its_reason(string mutation, IngestRefusalReason expected)
    {
        IngestRecord record = EngineRecords.Of(RecordMutations.Apply(TestRecords.Valid(1), mutation, NowMs));
        Refusal refusal = Validator.Validate(record, NowMs, out DeviceModel? model);
        Assert.Equal(expected, refusal.Reason);
        Assert.StartsWith("record 1: ", refusal.Message, StringComparison.Ordinal);
        Assert.Null(model);
    }

    [Fact]
    public void A_record_ending_exactly_at_the_skew_bound_is_accepted()
    {
        IngestRecord record = EngineRecords.Of(TestRecords.Valid(1)) with { StartUnixMs = NowMs + 300_000 - 60_000, EndUnixMs = NowMs + 300_000 };
        Assert.False(Validator.Validate(record, NowMs, out _).IsRefused);
    }

    [Fact]
    public void A_record_of_exactly_24_hours_is_accepted()
    {
        IngestRecord valid = EngineRecords.Of(TestRecords.Valid(1));
        IngestRecord record = valid with { EndUnixMs = valid.StartUnixMs + 86_400_000, EnergyMwh = 0 };
        Assert.False(Validator.Validate(record, record.EndUnixMs, out _).IsRefused);
    }

    [Theory]
    [InlineData(0u)]
    [InlineData(499u)]
    [InlineData(10_000u)]
    public void An_sm_activity_from_0_to_10000_basis_points_is_accepted(uint smActiveBp)
    {
        IngestRecord record = EngineRecords.Of(TestRecords.Valid(1)) with { SmActiveBp = smActiveBp };
        Assert.False(Validator.Validate(record, NowMs, out _).IsRefused);
    }

    [Fact]
    public void Limits_out_of_range_are_refused_at_start_up()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new RecordValidator(new IngestLimits { BatchRecordsMax = 0 }, DeviceCatalog.LoadEmbedded()));
        Assert.Throws<ArgumentOutOfRangeException>(() => new RecordValidator(new IngestLimits { RecordDurationMax = TimeSpan.Zero }, DeviceCatalog.LoadEmbedded()));
        Assert.Throws<ArgumentOutOfRangeException>(() => new RecordValidator(new IngestLimits { DeviceCountMax = -1 }, DeviceCatalog.LoadEmbedded()));
    }
}
