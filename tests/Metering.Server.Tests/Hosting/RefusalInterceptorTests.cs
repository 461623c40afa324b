using System.Collections.Concurrent;
using Grpc.Core;
using Metering.Protocol.V1;
using Metering.Server.Hosting;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Metering.Server.Tests.Hosting;

/// <summary>
/// Every service hands its engine refusals to the one interceptor: the status and reason reach
/// the caller, and the server logs each refusal once, under the interceptor's event, with the
/// gRPC method and the reason the caller read.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class RefusalInterceptorTests(PostgresFixture postgres)
{
    /// <summary>The stable event id of RefusalInterceptor's log line.</summary>
    private const int RefusedEventId = 9001;

    [Fact]
    public async Task A_refusal_of_each_service_passes_through_the_interceptor_with_its_status_and_reason()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        var logged = new CapturedLog();
        server.Services.GetRequiredService<ILoggerFactory>().AddProvider(logged);
        Metadata operatorKey = TestServer.Bearer(TestServer.OperatorKey);
        Metadata auditorKey = TestServer.Bearer(TestServer.AuditorKey);

        (string Method, StatusCode Status, string Reason, Func<Task> Call)[] cases =
        [
            ("/metering.v1.RegistryService/GetOrganisation", StatusCode.NotFound, "ORGANISATION_UNKNOWN",
                () => server.RegistryClient().GetOrganisationAsync(new GetOrganisationRequest { CreditCode = TestRecords.OtherProvider + "X" }, operatorKey).ResponseAsync),
            ("/metering.v1.SettlementService/GetSettlement", StatusCode.InvalidArgument, "SETTLEMENT_FIELD_INVALID",
                () => new SettlementService.SettlementServiceClient(server.Channel).GetSettlementAsync(new GetSettlementRequest { Day = "not-a-day" }, TestServer.Bearer(TestServer.SettlementKey)).ResponseAsync),
            ("/metering.v1.VoucherService/GetVoucher", StatusCode.NotFound, "VOUCHER_UNKNOWN",
                () => new VoucherService.VoucherServiceClient(server.Channel).GetVoucherAsync(new GetVoucherRequest { VoucherId = 987_654_321 }, operatorKey).ResponseAsync),
            ("/metering.v1.VoucherService/RecordPayout", StatusCode.InvalidArgument, "VOUCHER_FIELD_INVALID",
                () => new VoucherService.VoucherServiceClient(server.Channel).RecordPayoutAsync(new RecordPayoutRequest { PayeeCode = TestRecords.Provider, AmountFen = 1, BankReference = "r", PaidOn = "yesterday" }, operatorKey).ResponseAsync),
            ("/metering.v1.AccessService/RevokeKey", StatusCode.NotFound, "CREDENTIAL_UNKNOWN",
                () => new AccessService.AccessServiceClient(server.Channel).RevokeKeyAsync(new RevokeKeyRequest { CredentialId = 987_654_321 }, operatorKey).ResponseAsync),
            ("/metering.v1.AuditService/GetInclusionProof", StatusCode.NotFound, "AUDIT_NOT_FOUND",
                () => new AuditService.AuditServiceClient(server.Channel).GetInclusionProofAsync(new GetInclusionProofRequest { CreditCode = TestRecords.Provider, StreamId = "nowhere", Sequence = 1 }, auditorKey).ResponseAsync),
            ("/metering.v1.AuditService/VerifyChain", StatusCode.PermissionDenied, "OTHER_PROVIDER",
                () => new AuditService.AuditServiceClient(server.Channel).VerifyChainAsync(new VerifyChainRequest { CreditCode = TestRecords.OtherProvider }, TestServer.Bearer(TestServer.ProviderKey)).ResponseAsync),
            ("/metering.v1.TransparencyService/GetLogInclusionProof", StatusCode.InvalidArgument, "LOG_ARGUMENT_INVALID",
                () => new TransparencyService.TransparencyServiceClient(server.Channel).GetLogInclusionProofAsync(new GetLogInclusionProofRequest { Day = "not-a-day" }, auditorKey).ResponseAsync),
            ("/metering.v1.CapacityService/GetFleetValidation", StatusCode.NotFound, "VALIDATION_UNKNOWN",
                () => server.CapacityClient().GetFleetValidationAsync(new GetFleetValidationRequest { CreditCode = TestRecords.OtherProvider }, TestServer.Bearer(TestServer.OtherProviderKey)).ResponseAsync),
            ("/metering.v1.CapacityService/DeclareInventory", StatusCode.PermissionDenied, "OTHER_PROVIDER",
                () => server.CapacityClient().DeclareInventoryAsync(new DeclareInventoryRequest { CreditCode = TestRecords.OtherProvider }, TestServer.Bearer(TestServer.ProviderKey)).ResponseAsync),
        ];

        foreach (var (method, status, reason, call) in cases)
        {
            RpcException refused = await Assert.ThrowsAsync<RpcException>(call);

            Assert.Equal((method, status, reason), (method, refused.StatusCode, IngestCall.Reason(refused)));
            CapturedLog.Entry[] lines = [.. logged.Entries.Where(e => e.Message.StartsWith(method + " ", StringComparison.Ordinal))];
            CapturedLog.Entry line = Assert.Single(lines);
            Assert.Equal(RefusedEventId, line.EventId);
            Assert.Contains($"refused: {reason}: ", line.Message, StringComparison.Ordinal);
        }

        Assert.Equal(cases.Length, logged.Entries.Count(e => e.EventId == RefusedEventId));
    }

    [Fact]
    public void A_fault_that_is_no_refusal_is_not_turned_into_one()
    {
        // An ordinary exception stays what it is: the interceptor maps the engine's refusals only.
        Assert.Null(RefusalInterceptor.StatusOf(new InvalidOperationException("a bug")));
        Assert.Null(RefusalInterceptor.StatusOf(new ArgumentException("not a refusal outside audit")));
        Assert.Null(RefusalInterceptor.StatusOf(new RpcException(new Status(StatusCode.Internal, "built by a handler"))));
    }

    /// <summary>Keeps every line the server logs through the interceptor's category.</summary>
    private sealed class CapturedLog : ILoggerProvider
    {
        public sealed record Entry(int EventId, string Message);

        public ConcurrentQueue<Entry> Entries { get; } = new();

        public ILogger CreateLogger(string categoryName) =>
            categoryName == typeof(RefusalInterceptor).FullName ? new Logger(Entries) : Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance;

        public void Dispose()
        {
        }

        private sealed class Logger(ConcurrentQueue<Entry> entries) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state)
                where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => true;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
                entries.Enqueue(new Entry(eventId.Id, formatter(state, exception)));
        }
    }
}
