using Metering.Protocol.V1;

namespace Metering.Fixtures;

/// <summary>Valid usage records for tests, each a small, fixed variation of one baseline.</summary>
internal static class TestRecords
{
    /// <summary>Tencent Technology (Shenzhen)'s public unified social credit code: a real, valid code.</summary>
    public const string Holder = "9144030071526726XG";

    /// <summary>Huawei Technologies' public unified social credit code, used as a provider.</summary>
    public const string Provider = "914403001922038216";

    /// <summary>A second provider (a valid code made for tests).</summary>
    public const string OtherProvider = "91440300MA5F00001A";

    /// <summary>2026-11-20T00:00:00Z: comfortably in the past for every test.</summary>
    public static readonly long BaseStartMs = new DateTimeOffset(2026, 11, 20, 0, 0, 0, TimeSpan.Zero).ToUnixTimeMilliseconds();

    /// <summary>One H100 for five minutes, starting five minutes after the previous sequence.</summary>
    public static UsageRecord Valid(ulong sequence) => new()
    {
        Sequence = sequence,
        JobId = $"job-{sequence:D6}",
        HolderCode = Holder,
        DeviceModel = "H100-SXM",
        DeviceCount = 8,
        ShareNumerator = 1,
        ShareDenominator = 1,
        StartUnixMs = BaseStartMs + (long)sequence * 300_000,
        EndUnixMs = BaseStartMs + (long)sequence * 300_000 + 300_000,
        Site = "sz-nanshan-dc1",
        DeviceUuids = { "GPU-0001", "GPU-0002" },
        EnergyMwh = 280_000,
    };

    public static List<UsageRecord> Range(ulong first, ulong last)
    {
        var records = new List<UsageRecord>();
        for (ulong sequence = first; sequence <= last; sequence++)
        {
            records.Add(Valid(sequence));
        }

        return records;
    }

    /// <summary>The repository root, found by walking up to Metering.sln.</summary>
    public static string RepositoryRoot()
    {
        string? directory = AppContext.BaseDirectory;
        while (directory is not null && !File.Exists(Path.Combine(directory, "Metering.sln")))
        {
            directory = Path.GetDirectoryName(directory);
        }

        return directory ?? throw new InvalidOperationException("Metering.sln not found above the test binaries.");
    }
}
