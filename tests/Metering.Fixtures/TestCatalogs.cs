using Metering.Engine.Catalog;

namespace Metering.Fixtures;

/// <summary>The shipped catalog with the overlays that tests and the CPU bench attest against.</summary>
internal static class TestCatalogs
{
    public const string CpuFixtureModel = "CPU-FIXTURE";

    /// <summary>A GPU model whose probe names no CPU: a CPU node does its work and is still unknown by name.</summary>
    public const string UnnamedGpuModel = "GPU-UNNAMED";

    public static string CpuFixturePath => Path.Combine(TestRecords.RepositoryRoot(), "tests", "Metering.Fixtures", "catalog-cpu-fixture.json");

    /// <summary>The embedded catalog plus ILGPU's CPU accelerator as <see cref="CpuFixtureModel"/>.</summary>
    public static DeviceCatalog WithCpuFixture()
    {
        using FileStream overlay = File.OpenRead(CpuFixturePath);
        return DeviceCatalog.LoadEmbedded().WithOverlay(overlay, CpuFixturePath);
    }

    /// <summary>
    /// The embedded catalog plus <see cref="UnnamedGpuModel"/>, with the CPU fixture's tiny
    /// challenge work, so that a CPU node can do its work and still be unknown by name (an
    /// operator's review decides it). Its dense FP16 figure is the H100's.
    /// </summary>
    public static DeviceCatalog WithUnnamedGpu()
    {
        const string Overlay = """
            { "overlay": "Test: a GPU model the CPU accelerator does not match by name.",
              "devices": [ { "key": "GPU-UNNAMED", "vendor": "test", "name": "Unnamed test GPU", "fp16DenseGflops": 989400, "source": "test figure",
                "probe": { "deviceNames": [ "Unnamed Test GPU" ], "referencePath": "portable",
                  "peak": { "tensorFp16Mflops": 989400000, "packedFp16Mflops": 1000000, "fp32Mflops": 1000000, "memoryMbps": 1000000 },
                  "reference": { "tensorFp16Mflops": 1, "packedFp16Mflops": 1, "fp32Mflops": 1, "memoryMbps": 1 },
                  "work": { "tensorFp16": "8:8", "packedFp16": "64:64", "fp32": "64:64", "memory": "16:2" },
                  "source": "test figures" } } ] }
            """;
        using var stream = new MemoryStream(System.Text.Encoding.UTF8.GetBytes(Overlay));
        return DeviceCatalog.LoadEmbedded().WithOverlay(stream, "test overlay");
    }
}
