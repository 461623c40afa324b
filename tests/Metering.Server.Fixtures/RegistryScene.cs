using Grpc.Core;
using Metering.Engine.Access;
using Metering.Engine.Audit;
using Metering.Engine.Capacity;
using Metering.Engine.Catalog;
using Metering.Engine.Identity;
using Metering.Engine.Ingest;
using Metering.Engine.Registry;
using Metering.Engine.Storage;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Fixtures;
using Npgsql;
using LegalForm = Metering.Protocol.V1.LegalForm;
using Licence = Metering.Protocol.V1.Licence;
using Organisation = Metering.Protocol.V1.Organisation;
using Application = Metering.Protocol.V1.Application;

namespace Metering.Server.Fixtures;

/// <summary>
/// A test server whose clock the test sets, with a batch open in November 2026, and helpers that
/// prepare an organisation up to the point the test cares about.
/// </summary>
internal sealed class RegistryScene : IAsyncDisposable
{
    public const string Batch = "nov-2026";

    /// <summary>The batch window opens here; tests file a day later unless they say otherwise.</summary>
    public static readonly DateTimeOffset WindowOpens = new(2026, 11, 1, 0, 0, 0, TimeSpan.FromHours(8));

    public static readonly DateTimeOffset WindowCloses = new(2026, 11, 15, 18, 0, 0, TimeSpan.FromHours(8));

    public static readonly DateTimeOffset ValidityEnds = new(2026, 11, 20, 12, 0, 0, TimeSpan.FromHours(8));

    private static int _codes;

    private RegistryScene(TestServer server, ManualClock clock, NpgsqlDataSource dataSource, DeviceCatalog catalog, Metadata operatorHeaders)
    {
        Server = server;
        OperatorHeaders = operatorHeaders;
        Clock = clock;
        DataSource = dataSource;
        Client = server.RegistryClient();
        Engine = new ProviderRegistry(dataSource, catalog, clock, new RegistryFleetEvidence(), new RegistryProofEvidence(dataSource));
    }

    public TestServer Server { get; }

    public ManualClock Clock { get; }

    public NpgsqlDataSource DataSource { get; }

    public RegistryService.RegistryServiceClient Client { get; }

    /// <summary>The engine's registry on the same database and clock, for set-up the test is not about.</summary>
    public ProviderRegistry Engine { get; }

    public static Metadata Operator => TestServer.Bearer(TestServer.OperatorKey);

    /// <summary>The operator key of this scene's database: <see cref="Operator"/>, or the one a database of its own (a Citus cluster's) was seeded with.</summary>
    public Metadata OperatorHeaders { get; }

    /// <summary>A second, different operator: four-eyes approvals.</summary>
    public static Metadata SecondOperator => TestServer.Bearer(TestServer.SecondOperatorKey);

    /// <summary>The bare key in bearer headers, for the ingest helpers.</summary>
    public static string KeyOf(Metadata headers) => headers.GetValue("authorization")!["Bearer ".Length..];

    /// <param name="database">A database of the test's own (a Citus cluster's) instead of a fresh clone of the template.</param>
    /// <param name="operatorKey">The operator key seeded in <paramref name="database"/>.</param>
    /// <param name="limits">The server's ingest limits, when not the defaults.</param>
    public static async Task<RegistryScene> StartAsync(PostgresFixture postgres, int noticeDays = 0, DeviceCatalog? catalog = null, CapacitySettings? capacity = null,
        string? database = null, string? operatorKey = null, IngestLimits? limits = null)
    {
        var clock = new ManualClock(WindowOpens.AddDays(1));
        catalog ??= DeviceCatalog.LoadEmbedded();
        TestServer server = await TestServer.StartAsync(postgres, limits: limits, time: clock, catalog: catalog, capacity: capacity, database: database);
        Metadata operatorHeaders = operatorKey is null ? Operator : TestServer.Bearer(operatorKey);
        var scene = new RegistryScene(server, clock, Database.CreateDataSource(server.ConnectionString), catalog, operatorHeaders);
        await scene.Client.PutAdmissionBatchAsync(new AdmissionBatch
        {
            BatchId = Batch,
            WindowOpensUnixMs = WindowOpens.ToUnixTimeMilliseconds(),
            WindowClosesUnixMs = WindowCloses.ToUnixTimeMilliseconds(),
            ValidityEndsUnixMs = ValidityEnds.ToUnixTimeMilliseconds(),
            PublicNoticeDays = (uint)noticeDays,
            AuditReportYear = 2025,
        }.WithGuideRules(), operatorHeaders);
        return scene;
    }

    /// <summary>A fresh, valid Shenzhen credit code that no other test uses.</summary>
    public static string NewCode()
    {
        int n = (Interlocked.Increment(ref _codes) + Environment.ProcessId % 100 * 1000) % 100_000;
        string body = $"91440300MA5H{n:D5}";
        return body + CreditCode.CheckCharacter(body);
    }

    /// <summary>Registers an organisation with a licence and a proof stream; returns a provider key for it.</summary>
    public async Task<(string Code, Metadata Key)> RegisterAsync(LegalForm legalForm = LegalForm.Enterprise, string established = "2015-06-01", bool licence = true, bool proof = true)
    {
        string code = NewCode();
        await Client.RegisterOrganisationAsync(new RegisterOrganisationRequest
        {
            Organisation = new Organisation { CreditCode = code, Name = $"Applicant {code[^5..]}", LegalForm = legalForm, District = "福田区", EstablishedOn = established },
        }, OperatorHeaders);
        if (licence)
        {
            await Client.AddLicenceAsync(new AddLicenceRequest
            {
                Licence = new Licence { CreditCode = code, LicenceNumber = $"B1-{code[^6..]}", Issuer = "MIIT", ValidFrom = "2021-01-01", ValidUntil = "2030-12-31" },
            }, OperatorHeaders);
        }

        if (proof)
        {
            await Admissions.WriteProofAsync(DataSource, Clock, code);
        }

        var credentials = new CredentialStore(DataSource, Clock);
        string key = (await credentials.IssueAsync(Admissions.Operator, Role.Provider, code, "test", CancellationToken.None)).Key;
        return (code, TestServer.Bearer(key));
    }

    /// <summary>A filing for this scene's batch that meets every rule.</summary>
    public static FileApplicationRequest Filing(string code, string item = Admissions.ServiceItem)
    {
        FileApplicationRequest filing = Admissions.Filing(code, item);
        filing.BatchId = Batch;
        filing.AuditReportYear = 2025;
        return filing;
    }

    /// <summary>Registers, files and takes an application through every stage; the provider is admitted until <see cref="ValidityEnds"/>.</summary>
    /// <param name="adjust">Changes the filing before it is filed (its declared devices, for example), or null.</param>
    public async Task<(string Code, Metadata Key, Application Admitted)> AdmitAsync(Action<FileApplicationRequest>? adjust = null)
    {
        var (code, key) = await RegisterAsync();
        FileApplicationRequest filing = Filing(code);
        adjust?.Invoke(filing);
        Application filed = await Client.FileApplicationAsync(filing, key);
        Application admitted = Metering.Server.Registry.RegistryMapping.ToWire(await Admissions.DecideAllAsync(Engine, filed.ApplicationId, code));
        return (code, key, admitted);
    }

    /// <summary>Registers, files and takes an application through every stage but the admission notice; returns the provider and the application.</summary>
    public async Task<(string Code, long ApplicationId)> AwaitingAdmissionNoticeAsync()
    {
        var (code, key) = await RegisterAsync();
        long id = (await Client.FileApplicationAsync(Filing(code), key)).ApplicationId;
        await Admissions.DecideAllButTheNoticeAsync(Engine, id);
        return (code, id);
    }

    /// <summary>A change of the test service item's status, with its reasons.</summary>
    public static ChangeServiceItemStatusRequest Change(string code, Metering.Protocol.V1.ServiceItemAction action, string reasons) =>
        new() { CreditCode = code, ServiceItem = Admissions.ServiceItem, Action = action, Reasons = reasons };

    /// <summary>A valid record (<see cref="TestRecords.Valid"/>) that runs the given minutes from <paramref name="start"/>.</summary>
    public static UsageRecord At(ulong sequence, DateTimeOffset start, int minutes)
    {
        UsageRecord record = TestRecords.Valid(sequence);
        record.StartUnixMs = start.ToUnixTimeMilliseconds();
        record.EndUnixMs = start.AddMinutes(minutes).ToUnixTimeMilliseconds();
        return record;
    }

    public async ValueTask DisposeAsync()
    {
        await DataSource.DisposeAsync();
        await Server.DisposeAsync();
    }
}
