using BenchmarkDotNet.Attributes;
using Metering.Client.Simulation;
using Metering.Engine.Catalog;
using Metering.Engine.Ingest;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Metering.Server.Ingest;
using Npgsql;

namespace Metering.Bench.Ingest;

/// <summary>
/// The per-record CPU work of ingest, without transport or database: read each record of a batch
/// message through the stream's mapping view, as the server does, then validate, check admission,
/// normalise, hash and canonically encode. The design requires this path to allocate nothing per record, so the
/// Allocated column must read 0 B. Not sealed: BenchmarkDotNet derives from benchmark classes.
/// </summary>
[MemoryDiagnoser]
public class RecordPipelineBenchmarks
{
    private const int BatchRecords = 1_000;
    private const string ProviderId = "91440300MA5F00001A";

    private readonly UsageBatch _batch = new();
    private readonly IngestRecordView _view = new();
    private RecordValidator _validator = null!;
    private IngestSession _session = null!;
    private NpgsqlDataSource _dataSource = null!;
    private long _nowUnixMs;

    [GlobalSetup]
    public void Setup()
    {
        // A November 2026 day in Shanghai, validated as if "now" were a month later so that no
        // record lies in the future and none is older than the earliest accepted start.
        var dayStart = new DateTimeOffset(2026, 11, 26, 0, 0, 0, TimeSpan.FromHours(8));
        _nowUnixMs = dayStart.AddDays(30).ToUnixTimeMilliseconds();
        SimulatedCluster site = SimulatedCluster.DemoSites(dayStart, jobsPerInterval: 100, seed: 2025, devicesPerLaneMin: 32)[0];
        for (int i = 0; i < BatchRecords; i++)
        {
            _batch.Records.Add(site.RecordAt((ulong)i + 1));
        }

        _validator = new RecordValidator(new IngestLimits(), DeviceCatalog.LoadEmbedded());

        // The session needs a store, but PrepareOne never touches it; this data source is never
        // opened, so the benchmark needs no database.
        _dataSource = NpgsqlDataSource.Create("Host=unused");
        var head = new StreamHead(0, new byte[CanonicalEncoding.HashBytes]);
        // Admitted for all of 2024 to 2027, with one suspension in 2025, so that the admission
        // check scans an interval and a suspension for every record as it would in production.
        var admission = new AdmissionSnapshot(ProviderId, registered: true, epoch: 1,
            [new AdmissionSnapshot.Interval(new DateTimeOffset(2024, 2, 1, 0, 0, 0, TimeSpan.Zero).ToUnixTimeMilliseconds(), new DateTimeOffset(2028, 1, 1, 0, 0, 0, TimeSpan.Zero).ToUnixTimeMilliseconds(), IngestRefusalReason.AdmissionExpired, "gpu-training", 1)],
            [new AdmissionSnapshot.Suspension(new DateTimeOffset(2025, 5, 1, 0, 0, 0, TimeSpan.Zero).ToUnixTimeMilliseconds(), new DateTimeOffset(2025, 5, 8, 0, 0, 0, TimeSpan.Zero).ToUnixTimeMilliseconds(), "bench", 1)]);
        _session = new IngestSession(new UsageStore(_dataSource), _validator, TimeProvider.System, new AdmissionGate(_dataSource), admission, "bench-stream", head);
    }

    [GlobalCleanup]
    public void Cleanup() => _dataSource.Dispose();

    /// <summary>One batch through validate and prepare, each record chained to the one before.</summary>
    [Benchmark(OperationsPerInvoke = BatchRecords)]
    public int ValidateAndPrepare()
    {
        ReadOnlySpan<byte> previous = _session.ChainHead;
        IReadOnlyList<IngestRecord> records = _view.Over(_batch.Records);
        for (int slot = 0; slot < records.Count; slot++)
        {
            IngestRecord record = records[slot];
            Refusal refusal = _validator.Validate(record, _nowUnixMs, out DeviceModel? model);
            if (!refusal.IsRefused)
            {
                refusal = _session.CheckAdmission(record);
            }

            if (refusal.IsRefused)
            {
                throw new InvalidOperationException(refusal.Message);
            }

            _session.PrepareOne(record, model!, slot, previous);
            previous = _session.PreparedHashAt(slot);
        }

        return previous[0];
    }
}
