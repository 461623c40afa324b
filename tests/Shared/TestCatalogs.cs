using Metering.Engine.Catalog;

namespace Metering.Tests.Shared;

/// <summary>The shipped catalog, and the shipped catalog with the CPU fixture overlay that tests and the CPU bench attest against.</summary>
internal static class TestCatalogs
{
    public const string CpuFixtureModel = "CPU-FIXTURE";

    public static string CpuFixturePath => Path.Combine(TestRecords.RepositoryRoot(), "tests", "Shared", "catalog-cpu-fixture.json");

    /// <summary>The embedded catalog plus ILGPU's CPU accelerator as <see cref="CpuFixtureModel"/>.</summary>
    public static DeviceCatalog WithCpuFixture()
    {
        using FileStream overlay = File.OpenRead(CpuFixturePath);
        return DeviceCatalog.LoadEmbedded().WithOverlay(overlay, CpuFixturePath);
    }
}
