using System.Text;
using Metering.Engine.Catalog;
using Metering.Probe.Attestation.Checksums;
using Metering.Fixtures;

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
    [InlineData("A100-SXM-40GB", 312_000)]
    [InlineData("A100-PCIE-40GB", 312_000)]
    [InlineData("H100-NVL", 835_500)]
    [InlineData("H200-NVL", 835_500)]
    [InlineData("GH200", 989_500)]
    [InlineData("RTX-4090D", 147_087)]
    [InlineData("ASCEND-910C", 781_250)]
    [InlineData("RTX-A6000", 154_800)]
    [InlineData("RTX-6000-ADA", 364_200)]
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
    [InlineData("""{"version":"v","effectiveFrom":"2025-01-01","devices":[{"key":"H100\nSXM","fp16DenseGflops":1,"source":"s"}]}""", "control character")]
    [InlineData("""{"version":"v","effectiveFrom":"2025-01-01","devices":[{"key":"H100\tSXM","fp16DenseGflops":1,"source":"s"}]}""", "control character")]
    [InlineData("""{"version":"","effectiveFrom":"2025-01-01","devices":[]}""", "no version")]
    [InlineData("""{"version":"v","effectiveFrom":"2025/01/01","devices":[]}""", "effectiveFrom")]
    public void Malformed_catalog_files_are_refused_with_the_reason(string json, string expected)
    {
        var error = Assert.Throws<InvalidDataException>(() => Parse(json));
        Assert.Contains(expected, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Every_shipped_model_with_a_probe_section_carries_probe_peaks_and_references_that_follow_the_60_percent_rule()
    {
        foreach (DeviceModel model in Catalog.Versions.SelectMany(v => v.Models))
        {
            if (model.Probe is null)
            {
                Assert.True(model.CapacityFromVerifier, model.Key);
                continue;
            }

            ProbeProfile probe = Assert.IsType<ProbeProfile>(model.Probe);
            Assert.False(model.Fixture);
            Assert.Equal(ProbeProfile.PtxPath, probe.ReferencePath);
            Assert.Equal(model.Fp16DenseGflops * 1_000, probe.Peak.TensorFp16Mflops);
            foreach (KernelKind kind in KernelKinds.All)
            {
                Assert.Equal(probe.Peak.Of(kind) * 60 / 100, probe.Reference.Of(kind));
            }

            Assert.NotEmpty(probe.DeviceNames);
            Assert.False(string.IsNullOrWhiteSpace(probe.Source));
        }
    }

    [Theory]
    [InlineData("H100-SXM", 133_800_000, 66_900_000, 3_350_000)]
    [InlineData("A100-SXM", 78_000_000, 19_500_000, 2_039_000)]
    [InlineData("H20", 88_000_000, 44_000_000, 4_000_000)]
    [InlineData("L40S", 91_600_000, 91_600_000, 864_000)]
    public void Shipped_probe_peaks_are_the_datasheet_figures_in_MFLOPS_and_MBps(string key, long packedMflops, long fp32Mflops, long memoryMbps)
    {
        ProbeProfile probe = Catalog.Find(key)!.Probe!;
        Assert.Equal((packedMflops, fp32Mflops, memoryMbps), (probe.Peak.PackedFp16Mflops, probe.Peak.Fp32Mflops, probe.Peak.MemoryMbps));
    }

    [Fact]
    public void A_device_matches_a_model_by_its_reported_name_and_multiprocessor_count()
    {
        ProbeProfile h100 = Catalog.Find("H100-SXM")!.Probe!;
        Assert.True(h100.Matches("NVIDIA H100 80GB HBM3", 132));
        Assert.False(h100.Matches("NVIDIA H100 80GB HBM3", 114));
        Assert.False(h100.Matches("nvidia h100 80gb hbm3", 132));
        Assert.DoesNotContain(Catalog.Latest.Models, m => m.Probe?.Matches("CPUAccelerator", 1) == true);
    }

    [Fact]
    public void The_cpu_fixture_overlay_adds_its_model_to_every_version_and_never_to_the_shipped_catalog()
    {
        DeviceCatalog extended = TestCatalogs.WithCpuFixture();

        Assert.All(extended.Versions, version => Assert.True(version.TryGet("CPU-FIXTURE", out DeviceModel fixture) && fixture.Fixture && fixture.CatalogVersion == version.Version));
        Assert.Equal(ProbeProfile.PortablePath, extended.Find("CPU-FIXTURE")!.Probe!.ReferencePath);
        Assert.Null(Catalog.Find("CPU-FIXTURE"));
        Assert.Equal(Catalog.Latest.Models.Count() + 1, extended.Latest.Models.Count());
    }

    [Theory]
    [InlineData("""{"devices":[{"key":"X","fp16DenseGflops":1,"source":"s"}]}""", "overlay")]
    [InlineData("""{"overlay":"o","devices":[{"key":"H100-SXM","fp16DenseGflops":1,"source":"s"}]}""", "already in catalog")]
    public void Overlays_without_a_purpose_or_redefining_a_shipped_model_are_refused(string json, string expected)
    {
        var error = Assert.Throws<InvalidDataException>(() => Catalog.WithOverlay(new MemoryStream(Encoding.UTF8.GetBytes(json)), "overlay.json"));
        Assert.Contains(expected, error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("""{"deviceNames":["n"],"peak":{"tensorFp16Mflops":1000,"packedFp16Mflops":5,"fp32Mflops":5,"memoryMbps":5},"reference":{"tensorFp16Mflops":1,"packedFp16Mflops":6,"fp32Mflops":1,"memoryMbps":1},"source":"s"}""", "above its peak")]
    [InlineData("""{"deviceNames":["n"],"peak":{"tensorFp16Mflops":999,"packedFp16Mflops":5,"fp32Mflops":5,"memoryMbps":5},"reference":{"tensorFp16Mflops":1,"packedFp16Mflops":1,"fp32Mflops":1,"memoryMbps":1},"source":"s"}""", "fp16DenseGflops")]
    [InlineData("""{"deviceNames":["n"],"referencePath":"cuda","peak":{"tensorFp16Mflops":1000,"packedFp16Mflops":5,"fp32Mflops":5,"memoryMbps":5},"reference":{"tensorFp16Mflops":1,"packedFp16Mflops":1,"fp32Mflops":1,"memoryMbps":1},"source":"s"}""", "referencePath")]
    [InlineData("""{"deviceNames":[],"peak":{"tensorFp16Mflops":1000,"packedFp16Mflops":5,"fp32Mflops":5,"memoryMbps":5},"reference":{"tensorFp16Mflops":1,"packedFp16Mflops":1,"fp32Mflops":1,"memoryMbps":1},"source":"s"}""", "deviceNames")]
    [InlineData("""{"deviceNames":["n"],"peak":{"tensorFp16Mflops":1000,"packedFp16Mflops":5,"fp32Mflops":5,"memoryMbps":0},"reference":{"tensorFp16Mflops":1,"packedFp16Mflops":1,"fp32Mflops":1,"memoryMbps":1},"source":"s"}""", "positive")]
    [InlineData("""{"deviceNames":["n"],"peak":{"tensorFp16Mflops":1000,"packedFp16Mflops":5,"fp32Mflops":5,"memoryMbps":5},"reference":{"tensorFp16Mflops":1,"packedFp16Mflops":1,"fp32Mflops":1,"memoryMbps":1}}""", "source")]
    public void Malformed_probe_sections_are_refused_with_the_reason(string probe, string expected)
    {
        string json = $$"""{"version":"v","effectiveFrom":"2025-01-01","devices":[{"key":"X","fp16DenseGflops":1,"source":"s","probe":{{probe}}}]}""";
        var error = Assert.Throws<InvalidDataException>(() => Parse(json));
        Assert.Contains(expected, error.Message, StringComparison.Ordinal);
    }

    private static CatalogVersion Parse(string json) => DeviceCatalog.Parse(new MemoryStream(Encoding.UTF8.GetBytes(json)), "test.json");

    [Fact]
    public void Version_2026_1_keeps_every_figure_of_2025_1_and_takes_effect_only_from_its_date()
    {
        CatalogVersion old = Catalog.Versions.Single(v => v.Version == "2025.1");
        CatalogVersion next = Catalog.Versions.Single(v => v.Version == "2026.1");

        foreach (DeviceModel model in old.Models)
        {
            Assert.True(next.TryGet(model.Key, out DeviceModel carried), model.Key);
            Assert.Equal(model.Fp16DenseGflops, carried.Fp16DenseGflops);
            Assert.Equal(model.Probe?.Peak, carried.Probe?.Peak);
            Assert.Equal(model.Probe?.Reference, carried.Probe?.Reference);
            // 2025.1 has no MIG profiles: records normalised under it took k/7 as it is, and still do.
            Assert.Null(model.Mig);
        }

        Assert.Equal(new DateTimeOffset(2026, 12, 7, 0, 0, 0, TimeSpan.Zero), next.EffectiveFrom);
        Assert.Equal("2025.1", Catalog.VersionAt(next.EffectiveFromUnixMs - 1).Version);
        Assert.Equal("2026.1", Catalog.VersionAt(next.EffectiveFromUnixMs).Version);
    }

    [Theory]
    [InlineData("ASCEND-910B")]
    [InlineData("ASCEND-910C")]
    [InlineData("MI300X")]
    [InlineData("A100-SXM-40GB")]
    [InlineData("H100-NVL")]
    [InlineData("H200-NVL")]
    [InlineData("GH200")]
    [InlineData("RTX-4090D")]
    [InlineData("RTX-A6000")]
    [InlineData("RTX-6000-ADA")]
    public void Models_the_probe_cannot_reach_or_name_state_that_their_capacity_is_the_verifiers_figure(string key)
    {
        DeviceModel model = Catalog.Find(key)!;
        Assert.True(model.CapacityFromVerifier);
        Assert.Equal(DeviceModel.VerifierFigure, model.CapacityFigureSource);
        Assert.False(Catalog.Find("H100-SXM")!.CapacityFromVerifier);
        Assert.Equal(DeviceModel.ProbeFigure, Catalog.Find("A100-SXM")!.CapacityFigureSource);
    }

    [Theory]
    [InlineData("A100-SXM")]
    [InlineData("A100-PCIE")]
    [InlineData("A800-SXM")]
    [InlineData("A800-PCIE")]
    [InlineData("A100-SXM-40GB")]
    [InlineData("A100-PCIE-40GB")]
    public void GA100_models_list_seven_slices_of_14_SMs_each_out_of_108(string key)
    {
        MigLayout mig = Catalog.Find(key)!.Mig!;
        Assert.Equal((108u, 7u), (mig.Multiprocessors, mig.Slices));
        Assert.Equal([(1u, 14u), (2u, 28u), (3u, 42u), (4u, 56u), (7u, 98u)], mig.Profiles.Select(p => (p.Slices, p.Multiprocessors)));
        Assert.Equal(0u, mig.MultiprocessorsOf(5));
        Assert.Null(Catalog.Find("H100-SXM")!.Mig);
    }

    [Theory]
    [InlineData("""{"multiprocessors":108,"slices":7,"profiles":[{"name":"1g","slices":1,"multiprocessors":14},{"name":"1g.big","slices":1,"multiprocessors":20}],"source":"s"}""", "same slices")]
    [InlineData("""{"multiprocessors":108,"slices":7,"profiles":[{"name":"9g","slices":9,"multiprocessors":14}],"source":"s"}""", "1 to 7 slices")]
    [InlineData("""{"multiprocessors":108,"slices":7,"profiles":[{"name":"1g","slices":1,"multiprocessors":109}],"source":"s"}""", "1 to 108 SMs")]
    [InlineData("""{"multiprocessors":108,"slices":1,"profiles":[{"name":"1g","slices":1,"multiprocessors":14}],"source":"s"}""", "slices 1")]
    [InlineData("""{"multiprocessors":108,"slices":7,"profiles":[],"source":"s"}""", "profiles and a source")]
    [InlineData("""{"multiprocessors":108,"slices":7,"profiles":[{"name":"1g","slices":1,"multiprocessors":14}]}""", "profiles and a source")]
    [InlineData("""{"multiprocessors":0,"slices":7,"profiles":[{"name":"1g","slices":1,"multiprocessors":14}],"source":"s"}""", "multiprocessors 0")]
    public void Malformed_mig_sections_are_refused_with_the_reason(string mig, string expected)
    {
        var error = Assert.Throws<InvalidDataException>(() => Parse($$"""{"version":"v","effectiveFrom":"2025-01-01","devices":[{"key":"X","fp16DenseGflops":5,"source":"s","mig":{{mig}}}]}"""));
        Assert.Contains(expected, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_probe_capacity_figure_without_a_probe_section_is_refused()
    {
        var error = Assert.Throws<InvalidDataException>(() => Parse("""{"version":"v","effectiveFrom":"2025-01-01","devices":[{"key":"X","fp16DenseGflops":5,"source":"s","capacityFigure":"probe"}]}"""));
        Assert.Contains("capacityFigure", error.Message, StringComparison.Ordinal);
    }
}
