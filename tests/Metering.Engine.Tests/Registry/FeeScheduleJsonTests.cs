using Metering.Engine.Registry;

namespace Metering.Engine.Tests.Registry;

/// <summary>
/// The fee lines stored beside a fee schedule (fee_schedules.lines, jsonb). Schedules filed years
/// ago are read to price claims and settle days, so the stored form is a contract of its own: the
/// engine must read what was stored before and write what it always wrote.
/// </summary>
public sealed class FeeScheduleJsonTests
{
    // A schedule's lines as PostgreSQL gives a jsonb value back (keys reordered, spaces added).
    private const string StoredLines =
        """[{"unit": "per_card_hour", "priceFen": 1800, "deviceModel": "H100-SXM"}, {"unit": "per_pflops_hour", "priceFen": 1900, "deviceModel": "H100-SXM"}]""";

    [Fact]
    public void Lines_stored_before_now_read_as_the_same_models_units_and_prices()
    {
        FeeLine[] lines = [.. ProviderRegistry.ParseFees(StoredLines)];

        Assert.Equal(
            [new FeeLine("H100-SXM", FeeUnit.PerCardHour, 1_800), new FeeLine("H100-SXM", FeeUnit.PerPflopsHour, 1_900)],
            lines);
    }

    [Fact]
    public void Lines_are_written_in_the_form_they_have_always_been_stored_in()
    {
        string json = ProviderRegistry.FeesJson([new FeeLine("H100-SXM", FeeUnit.PerCardHour, 1_800), new FeeLine("A100-SXM", FeeUnit.PerPflopsHour, 1_900)]);

        Assert.Equal(
            """[{"deviceModel":"H100-SXM","unit":"per_card_hour","priceFen":1800},{"deviceModel":"A100-SXM","unit":"per_pflops_hour","priceFen":1900}]""",
            json);
    }

    [Fact]
    public void A_unit_name_the_engine_does_not_know_reads_as_unspecified_so_that_no_price_applies()
    {
        FeeLine line = Assert.Single(ProviderRegistry.ParseFees("""[{"deviceModel":"H100-SXM","unit":"per_token","priceFen":5}]"""));

        Assert.Equal(FeeUnit.Unspecified, line.Unit);
    }
}
