using System.Text;
using Metering.Engine.Catalog;

namespace Metering.Engine.Tests.Catalog;

public sealed class DeviceCatalogTests
{
    private static readonly DeviceCatalog Catalog = DeviceCatalog.LoadEmbedded();

    [Theory]
    [InlineData("H100-SXM", 989_400)]
    [InlineData("H100-PCIE", 756_500)]
    [InlineData("H800-SXM", 989_400)]
    [InlineData("H200-SXM", 989_400)]
    [InlineData("H20", 148_000)]
    [InlineData("A100-SXM", 312_000)]
    [InlineData("A800-SXM", 312_000)]
    [InlineData("L40S", 362_050)]
    [InlineData("L20", 119_500)]
    [InlineData("RTX-4090", 165_200)]
    [InlineData("B200", 2_250_000)]
    [InlineData("MI300X", 1_307_400)]
    [InlineData("ASCEND-910B", 320_000)]
    public void Shipped_catalog_holds_the_dense_fp16_peak_of_each_required_model(string key, long gflops)
    {
        Assert.True(Catalog.Latest.TryGet(key, out DeviceModel model), key);
        Assert.Equal(gflops, model.Fp16DenseGflops);
        Assert.False(string.IsNullOrWhiteSpace(model.Source));
        Assert.Equal(Catalog.Latest.Version, model.CatalogVersion);
    }

    [Fact]
    public void Unknown_and_differently_cased_keys_are_not_found()
    {
        Assert.False(Catalog.Latest.TryGet("H100", out _));
        Assert.False(Catalog.Latest.TryGet("h100-sxm", out _));
    }

    [Fact]
    public void A_record_is_normalised_with_the_version_in_force_at_its_start()
    {
        var v1 = Parse("""{"version":"v1","effectiveFrom":"2025-01-01","devices":[{"key":"X","fp16DenseGflops":100,"source":"s"}]}""");
        var v2 = Parse("""{"version":"v2","effectiveFrom":"2026-07-01","devices":[{"key":"X","fp16DenseGflops":200,"source":"s"}]}""");
        var catalog = new DeviceCatalog([v2, v1]);

        Assert.Equal("v1", catalog.VersionAt(new DateTimeOffset(2026, 6, 30, 23, 59, 59, TimeSpan.Zero).ToUnixTimeMilliseconds()).Version);
        Assert.Equal("v2", catalog.VersionAt(new DateTimeOffset(2026, 7, 1, 0, 0, 0, TimeSpan.Zero).ToUnixTimeMilliseconds()).Version);
        Assert.Equal("v1", catalog.VersionAt(0).Version);
        Assert.Equal("v2", catalog.Latest.Version);
    }

    [Theory]
    [InlineData("""{"version":"v","effectiveFrom":"2025-01-01","devices":[{"key":"X","fp16DenseGflops":1,"source":"s"},{"key":"X","fp16DenseGflops":1,"source":"s"}]}""", "repeated")]
    [InlineData("""{"version":"v","effectiveFrom":"2025-01-01","devices":[{"key":"X","fp16DenseGflops":0,"source":"s"}]}""", "positive")]
    [InlineData("""{"version":"v","effectiveFrom":"2025-01-01","devices":[{"key":"X","fp16DenseGflops":989400000,"source":"s"}]}""", "at most")]
    [InlineData("""{"version":"v","effectiveFrom":"2025-01-01","devices":[{"key":"X","fp16DenseGflops":5,"source":""}]}""", "source")]
    [InlineData("""{"version":"","effectiveFrom":"2025-01-01","devices":[]}""", "no version")]
    [InlineData("""{"version":"v","effectiveFrom":"2025/01/01","devices":[]}""", "effectiveFrom")]
    public void Malformed_catalog_files_are_refused_with_the_reason(string json, string expected)
    {
        var error = Assert.Throws<InvalidDataException>(() => Parse(json));
        Assert.Contains(expected, error.Message, StringComparison.Ordinal);
    }

    private static CatalogVersion Parse(string json) => DeviceCatalog.Parse(new MemoryStream(Encoding.UTF8.GetBytes(json)), "test.json");
}
