using BenchmarkDotNet.Running;
using Metering.Bench;
using Metering.Bench.Load;

// Entry points in one executable: `load ...` runs the end-to-end ingest load tool, `rawlog ...`
// the raw log parser and upload benchmark, `probe-cpu ...` the capacity probe's CPU path end to
// end, `settle ...` nightly settlement against its SQL floor, `verify ...` chain verification
// against sha256sum, `trust ...` receipts, the runtime role's refusals, TLS and the superuser
// rewrite end to end; anything else goes to BenchmarkDotNet (for example --filter '*RecordPipeline*').
if (args.Length > 0 && args[0] == "load")
{
    return await IngestLoad.RunAsync(args[1..]);
}

if (args.Length > 0 && args[0] == "settle")
{
    return await SettleLoad.RunAsync(args[1..]);
}

if (args.Length > 0 && args[0] == "verify")
{
    return await VerifyLoad.RunAsync(args[1..]);
}

if (args.Length > 0 && args[0] == "rawlog")
{
    return await RawLogLoad.RunAsync(args[1..]);
}

if (args.Length > 0 && args[0] == "trust")
{
    return await TrustLoad.RunAsync(args[1..]);
}

if (args.Length > 0 && args[0] == "probe-cpu")
{
    return await ProbeCpuLoad.RunAsync(args[1..]);
}

BenchmarkSwitcher.FromAssembly(typeof(BenchConfig).Assembly).Run(args, new BenchConfig());
return 0;
