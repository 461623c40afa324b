using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Audit;
using Metering.Engine.Capacity;
using Metering.Engine.Catalog;
using Metering.Engine.Identity;
using Metering.Engine.Ingest;
using Metering.Engine.Registry;
using Metering.Engine.Settlement;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Metering.Engine.Vouchers;
using Metering.Protocol.V1;
using Metering.Fixtures;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;
using Claim = Metering.Engine.Vouchers.Claim;
using Contract = Metering.Engine.Vouchers.Contract;
using FeeUnit = Metering.Engine.Registry.FeeUnit;
using Holder = Metering.Engine.Vouchers.Holder;
using HolderType = Metering.Engine.Vouchers.HolderType;
using PayeeMode = Metering.Engine.Vouchers.PayeeMode;
using ProgrammeParameters = Metering.Engine.Vouchers.ProgrammeParameters;
using Voucher = Metering.Engine.Vouchers.Voucher;

namespace Metering.Engine.Fixtures;

/// <summary>
/// A test database of its own, in which both test providers are admitted (2024-02-01 to
/// 2028-01-01, fee schedule version 1: H100-SXM at 1,800 fen per card-hour and 1,900 fen per
/// PFLOPS·h), with the engine's voucher book, redemptions and settlement on a clock the test
/// sets, 2026-12-01 10:00 Asia/Shanghai unless it moves it. Usage goes in through ingest.
/// </summary>
internal sealed class VoucherScene : IAsyncDisposable
{
    /// <summary>The usage day most tests settle.</summary>
    public static readonly DateOnly Day = new(2026, 11, 20);

    public static readonly DateTimeOffset Now = new(2026, 12, 1, 10, 0, 0, TimeSpan.FromHours(8));

    public static readonly Actor Operator = new(Role.Operator, "voucher-operator");

    public static readonly Actor Batch = new(Role.Settlement, "settlement-batch");

    private static int _codes;
    private readonly Dictionary<(string Provider, string Stream), ulong> _sequences = [];

    private VoucherScene(string connectionString, NpgsqlDataSource dataSource, ManualClock clock)
    {
        ConnectionString = connectionString;
        DataSource = dataSource;
        Clock = clock;
        Book = new VoucherBook(dataSource, clock);
        Claims = new Redemptions(dataSource, clock);
        Registry = new ProviderRegistry(dataSource, DeviceCatalog.LoadEmbedded(), clock, new RegistryFleetEvidence(), new RegistryProofEvidence(dataSource));
    }

    public string ConnectionString { get; }

    public NpgsqlDataSource DataSource { get; }

    public ManualClock Clock { get; }

    public VoucherBook Book { get; }

    public Redemptions Claims { get; }

    public ProviderRegistry Registry { get; }

    public DailySettlement Settlement(SettlementOptions? options = null) => new(DataSource, Clock, NullLogger.Instance, options);

    public static async Task<VoucherScene> StartAsync(PostgresFixture postgres)
    {
        string connectionString = await postgres.CreateDatabaseAsync();
        return new VoucherScene(connectionString, Database.CreateDataSource(connectionString), new ManualClock(Now));
    }

    /// <summary>The engine on a database a test server already serves, on the server's clock.</summary>
    public static VoucherScene Over(string connectionString, ManualClock clock) => new(connectionString, Database.CreateDataSource(connectionString), clock);

    /// <summary>A fresh, valid Shenzhen credit code that no other test uses.</summary>
    public static string NewCode()
    {
        int n = (Interlocked.Increment(ref _codes) + Environment.ProcessId % 100 * 1000) % 100_000;
        return CreditCode.Complete($"91440300MA5J{n:D5}");
    }

    /// <summary>Registers and approves a holder (Tencent's code unless given).</summary>
    public async Task<string> HolderAsync(string? code = null, string established = "1999-11-11", bool approve = true)
    {
        code ??= TestRecords.Holder;
        await Book.RegisterHolderAsync(Operator, new Holder
        {
            CreditCode = code,
            Name = $"Holder {code[^5..]}",
            Type = HolderType.HolderEnterprise,
            District = "nanshan",
            EstablishedOn = established,
        }, CancellationToken.None);
        if (approve)
        {
            await Book.ApproveHolderAsync(Operator, code, CancellationToken.None);
        }

        return code;
    }

    private static int _numbers;

    public Task<Contract> ContractAsync(string holder, string provider = TestRecords.Provider, string starts = "2026-01-01", string ends = "2026-12-31",
        long amountFen = 200_000_000, FeeUnit unit = FeeUnit.PerCardHour, string? signed = null) =>
        Book.RecordContractAsync(Operator, new Contract
        {
            HolderCode = holder,
            ProviderId = provider,
            ServiceItem = Admissions.ServiceItem,
            ContractNumber = $"HT-{Interlocked.Increment(ref _numbers):D5}",
            SignedOn = signed ?? starts,
            StartsOn = starts,
            EndsOn = ends,
            AmountFen = amountFen,
            FeeUnit = unit,
            NonRelatedParty = true,
            DeclarationRef = "declarations/non-related.pdf",
        }, CancellationToken.None);

    public Task<Voucher> VoucherAsync(long contractId, long faceFen, int year = 2026, string from = "", string until = "") =>
        Book.IssueVoucherAsync(Operator, new VoucherIssue(contractId, (uint)year, faceFen, from, until), CancellationToken.None);

    /// <summary>
    /// A record of a holder on a day: devices × 5 minutes (by default 8 H100s, 40 card-minutes,
    /// 0.6596 PFLOPS·h) starting at the given five-minute slot of the Asia/Shanghai day.
    /// </summary>
    public static UsageRecord Usage(string holder, DateOnly day, int slot, string job, uint devices = 8, int minutes = 5, string model = "H100-SXM")
    {
        long start = ShanghaiTime.StartOf(day).AddMinutes(slot * 5).ToUnixTimeMilliseconds();
        return new UsageRecord
        {
            JobId = job,
            HolderCode = holder,
            DeviceModel = model,
            DeviceCount = devices,
            ShareNumerator = 1,
            ShareDenominator = 1,
            StartUnixMs = start,
            EndUnixMs = start + minutes * 60_000L,
            Site = "sz-nanshan-dc1",
        };
    }

    /// <summary>Count records of one holder on a day, each its own job, in consecutive slots from the first.</summary>
    public static List<UsageRecord> Jobs(string holder, DateOnly day, int count, int firstSlot = 0, string prefix = "job", string model = "H100-SXM") =>
        Enumerable.Range(0, count).Select(i => Usage(holder, day, firstSlot + i, $"{prefix}-{day:MMdd}-{firstSlot + i:D3}", model: model)).ToList();

    /// <summary>Streams the records through ingest (validation and the admission gate), numbering them after what the stream holds.</summary>
    public async Task IngestAsync(string stream, IReadOnlyList<UsageRecord> records, string provider = TestRecords.Provider)
    {
        var store = new UsageStore(DataSource);
        var gate = new AdmissionGate(DataSource);
        StreamHead head = await store.OpenStreamAsync(provider, stream, CancellationToken.None);
        var session = new IngestSession(store, new RecordValidator(new IngestLimits(), DeviceCatalog.LoadEmbedded()), Clock, gate,
            await gate.LoadAsync(provider, CancellationToken.None), stream, head);
        ulong next = head.CommittedSequence + 1;
        var numbered = records.Select(r =>
        {
            UsageRecord copy = r.Clone();
            copy.Sequence = next++;
            return copy;
        }).ToList();
        foreach (UsageRecord[] batch in numbered.Chunk(5_000))
        {
            await session.AppendAsync(EngineRecords.Of(batch), CancellationToken.None);
        }
    }

    /// <summary>
    /// Writes records straight into the store, chained as ingest would but past its admission
    /// gate: usage that reached the log by another path, which redemption must check itself.
    /// </summary>
    /// <param name="beforeCommit">Runs inside the ingest transaction, rows written, just before it commits; null for none.</param>
    public async Task WriteUngatedAsync(string stream, IReadOnlyList<UsageRecord> records, string provider = TestRecords.Provider,
        Func<NpgsqlConnection, NpgsqlTransaction, Task>? beforeCommit = null)
    {
        var store = new UsageStore(DataSource);
        var catalog = DeviceCatalog.LoadEmbedded();
        StreamHead head = await store.OpenStreamAsync(provider, stream, CancellationToken.None);
        var prepared = new PreparedRecords(records.Count);
        byte[] previous = head.ChainHash;
        var scratch = new byte[CanonicalEncoding.HashBytes + 4096];
        ulong sequence = head.CommittedSequence;
        foreach (UsageRecord source in records)
        {
            UsageRecord record = source.Clone();
            record.Sequence = ++sequence;
            DeviceModel model = catalog.Find(record.DeviceModel)!;
            int i = prepared.Count++;
            prepared.Records[i] = EngineRecords.Of(record);
            prepared.Models[i] = model;
            prepared.UsageNanoPflopsHours[i] = UsageNormaliser.UsageNanoPflopsHours(record.DeviceCount, record.ShareNumerator, record.ShareDenominator,
                record.EndUnixMs - record.StartUnixMs, model.Fp16DenseGflops);
            Span<byte> hash = prepared.Hashes.AsSpan(i * CanonicalEncoding.HashBytes, CanonicalEncoding.HashBytes);
            CanonicalEncoding.ChainHash(previous, RecordFields.From(provider, stream, prepared.Records[i]), scratch, hash);
            previous = hash.ToArray();
        }

        await store.CommitAsync(provider, stream, head.CommittedSequence, prepared, beforeCommit is null ? [] : [new TestStep(beforeCommit)], CancellationToken.None);
    }

    /// <summary>A test's own work inside the ingest transaction, where it can hold the commit back.</summary>
    private sealed class TestStep(Func<NpgsqlConnection, NpgsqlTransaction, Task> work) : ICommitStep
    {
        public async Task<NpgsqlBatchCommand?> RunAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, CancellationToken cancellationToken)
        {
            await work(connection, transaction);
            return null;
        }
    }

    public Task<Claim> ClaimJobsAsync(long contractId, params string[] jobs) =>
        Claims.FileClaimAsync(Operator, new ClaimFiling(contractId, jobs, ProgrammeYear: 2026), CancellationToken.None);

    public Task<Claim> ClaimDayAsync(long contractId, DateOnly day) =>
        Claims.FileClaimAsync(Operator,
            new ClaimFiling(contractId, [], ShanghaiTime.StartOf(day).ToUnixTimeMilliseconds(), ShanghaiTime.StartOf(day.AddDays(1)).ToUnixTimeMilliseconds()),
            CancellationToken.None);

    public Task<SettlementOutcome> SettleAsync(DateOnly day, Action<SettlementProgress>? progress = null, CancellationToken cancellationToken = default) =>
        Settlement().SettleAsync(day, Batch, progress, cancellationToken);

    /// <summary>Puts a new version of 2026's parameters in force now, changing what the test names.</summary>
    public Task<ProgrammeParameters> ParametersAsync(Func<ProgrammeParameters, ProgrammeParameters> change)
    {
        var parameters = new ProgrammeParameters
        {
            ProgrammeYear = 2026,
            EffectiveFromUnixMs = Clock.Now.ToUnixTimeMilliseconds(),
            SupportRatioBp = 5_000,
            StartupRatioBp = 6_000,
            AnnualCapFen = 1_000_000_000,
            StackingCapBp = 5_000,
            MinAnnualRentalFen = 50_000_000,
            PayeeMode = PayeeMode.HolderReimbursement,
            HoldDays = 90,
        };
        return Book.PutParametersAsync(Operator, change(parameters), CancellationToken.None);
    }

    public async Task<T> ScalarAsync<T>(string sql, object? parameters = null)
    {
        await using NpgsqlConnection connection = await DataSource.OpenConnectionAsync();
        return (await connection.ExecuteScalarAsync<T>(sql, parameters))!;
    }

    public async Task<List<T>> QueryAsync<T>(string sql, object? parameters = null)
    {
        await using NpgsqlConnection connection = await DataSource.OpenConnectionAsync();
        return (await connection.QueryAsync<T>(sql, parameters)).ToList();
    }

    /// <summary>The balance of an account: credits minus debits.</summary>
    public Task<long> CreditBalanceAsync(string account) =>
        ScalarAsync<long>("SELECT coalesce(sum(credit_fen - debit_fen), 0)::bigint FROM ledger_lines WHERE account = @account", new { account });

    public async ValueTask DisposeAsync() => await DataSource.DisposeAsync();
}
