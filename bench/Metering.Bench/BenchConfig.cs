using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Diagnosers;
using BenchmarkDotNet.Jobs;

namespace Metering.Bench;

/// <summary>
/// The configuration every suite runs under: the defaults plus the memory diagnoser, with a short
/// job so that a suite finishes in a minute or two on the 2-core build machine. The per-record
/// costs measured here are microseconds, so three measured iterations of many thousand
/// operations each are already stable to a few percent.
/// </summary>
internal sealed class BenchConfig : ManualConfig
{
    public BenchConfig()
    {
        Add(DefaultConfig.Instance);
        AddDiagnoser(MemoryDiagnoser.Default);
        AddJob(Job.ShortRun.WithId("Short"));
    }
}
