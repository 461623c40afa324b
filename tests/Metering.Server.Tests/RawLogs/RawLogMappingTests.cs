using Metering.Engine.Catalog;
using Metering.Engine.RawLogs;
using Metering.Protocol.V1;
using Metering.Server.RawLogs;
using Metering.Server.Tests.Infrastructure;
using Xunit;

namespace Metering.Server.Tests.RawLogs;

/// <summary>
/// The edge's map of an upload header to the engine: the format by value, the mapping with its
/// maps, site, offset and steps switch, an absent offset kept apart from an explicit one.
/// </summary>
public sealed class RawLogMappingTests
{
    [Fact]
    public void The_engines_log_formats_and_the_wires_hold_the_same_names_at_the_same_numbers() => EnumMirror.AssertMirrors<RawLogFormat, LogFormat>();

    [Fact]
    public void The_engines_sm_activity_scales_and_the_wires_hold_the_same_names_at_the_same_numbers() =>
        EnumMirror.AssertMirrors<Metering.Engine.RawLogs.SmActiveScale, Metering.Protocol.V1.SmActiveScale>();

    [Fact]
    public void A_header_mapping_s_sm_activity_property_and_scale_reach_the_engine()
    {
        LogMappingSpec mapping = RawLogMapping.ToEngine(new LogMapping { Site = "s", SmActiveProperty = "sm_active", SmActiveScale = Metering.Protocol.V1.SmActiveScale.Percent });

        Assert.Equal(("sm_active", Metering.Engine.RawLogs.SmActiveScale.Percent), (mapping.SmActiveProperty, mapping.SmActiveScale));
        Assert.Null(RawLogMapping.ToEngine(new LogMapping { Site = "s" }).SmActiveProperty);
    }

    [Fact]
    public void A_header_mapping_reaches_the_engine_with_its_maps_site_offset_and_steps()
    {
        var wire = new LogMapping
        {
            AccountHolders = { ["lab-vision"] = "9144030071526726XG" },
            GresModels = { ["h100"] = "H100-SXM" },
            PartitionModels = { ["gpu-h20"] = "H20" },
            Site = "sz-nanshan-dc1",
            UtcOffsetMinutes = 0,
            MeterSteps = true,
        };

        LogMappingSpec mapping = RawLogMapping.ToEngine(wire);

        Assert.Equal("9144030071526726XG", Assert.Single(mapping.AccountHolders, e => e.Key == "lab-vision").Value);
        Assert.Equal("H100-SXM", Assert.Single(mapping.GresModels, e => e.Key == "h100").Value);
        Assert.Equal("H20", Assert.Single(mapping.PartitionModels, e => e.Key == "gpu-h20").Value);
        Assert.Equal(("sz-nanshan-dc1", (int?)0, true), (mapping.Site, mapping.UtcOffsetMinutes, mapping.MeterSteps));
    }

    [Fact]
    public void A_mapping_without_an_offset_reads_Shanghai_time_and_an_explicit_zero_reads_UTC()
    {
        var catalog = DeviceCatalog.LoadEmbedded();
        var absent = new LogMapping { Site = "sz-nanshan-dc1" };
        var utc = new LogMapping { Site = "sz-nanshan-dc1", UtcOffsetMinutes = 0 };

        Assert.Null(RawLogMapping.ToEngine(absent).UtcOffsetMinutes);
        Assert.Equal(TimeSpan.FromHours(8), LogMappingRules.Create(RawLogMapping.ToEngine(absent), catalog, out _).UtcOffset);
        Assert.Equal(TimeSpan.Zero, LogMappingRules.Create(RawLogMapping.ToEngine(utc), catalog, out _).UtcOffset);
        Assert.NotEqual(LogMappingRules.Fingerprint(RawLogMapping.ToEngine(absent)), LogMappingRules.Fingerprint(RawLogMapping.ToEngine(utc)));
    }
}
