using System.Reflection;
using Google.Protobuf.Reflection;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Metering.Protocol.V1;
using Metering.Server.Access;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Server.Tests.Hosting;

namespace Metering.Server.Tests.Access;

/// <summary>
/// Every role against every rpc of every service, found from the proto descriptors so that a new
/// rpc cannot slip past: a role the matrix below does not allow is refused with
/// PERMISSION_DENIED / ROLE_NOT_ALLOWED before the handler runs; an allowed role gets past the
/// policy (its empty request may still be refused, for its content, by the handler).
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class AuthorisationMatrixTests(PostgresFixture postgres)
{
    private const string P = "provider";
    private const string O = "operator";
    private const string A = "auditor";
    private const string S = "settlement";

    /// <summary>The expected matrix, written out independently of the server's policy table.</summary>
    private static readonly Dictionary<string, string[]> Allowed = new()
    {
        ["AccessService/IssueKey"] = [O],
        ["AccessService/RevokeKey"] = [O],
        ["AccessService/PinKey"] = [O],
        ["AccessService/ListKeys"] = [O],
        ["IngestService/Stream"] = [P],
        ["RawLogService/UploadLog"] = [P],
        ["RawLogService/GetUpload"] = [P],
        ["RegistryService/RegisterOrganisation"] = [O],
        ["RegistryService/AddLicence"] = [O],
        ["RegistryService/AddIntegrityListing"] = [O],
        ["RegistryService/PutAdmissionBatch"] = [O],
        ["RegistryService/ListAdmissionBatches"] = [P, O, A, S],
        ["RegistryService/FileApplication"] = [P],
        ["RegistryService/ReviewMaterials"] = [O],
        ["RegistryService/RecordVerification"] = [O],
        ["RegistryService/OpenPublicNotice"] = [O],
        ["RegistryService/RecordObjection"] = [O],
        ["RegistryService/DecideAdmission"] = [O],
        ["RegistryService/ApproveProposal"] = [O],
        ["RegistryService/IssueAdmissionNotice"] = [O],
        ["RegistryService/RequestReconsideration"] = [P],
        ["RegistryService/DecideReconsideration"] = [O],
        ["RegistryService/GetApplication"] = [P, O, A, S],
        ["RegistryService/ListApplications"] = [P, O, A, S],
        ["RegistryService/FileFeeSchedule"] = [P],
        ["RegistryService/ChangeServiceItemStatus"] = [O],
        ["RegistryService/RecordFalseMaterials"] = [O],
        ["RegistryService/GetOrganisation"] = [P, O, A, S],
        ["RegistryService/GetHistory"] = [O, A],
        ["CapacityService/RegisterNodeKey"] = [P],
        ["CapacityService/ApproveNodeKey"] = [O],
        ["CapacityService/ListNodeKeys"] = [P, O, A],
        ["CapacityService/DeclareInventory"] = [P],
        ["CapacityService/StartChallenges"] = [P],
        ["CapacityService/CommitResults"] = [P],
        ["CapacityService/SubmitAttestation"] = [P],
        ["CapacityService/GetFleetValidation"] = [P, O, A],
        ["CapacityService/ReviewUnknownModel"] = [O],
        ["VoucherService/RegisterHolder"] = [O],
        ["VoucherService/ApproveHolder"] = [O],
        ["VoucherService/LeaveHolderRole"] = [O],
        ["VoucherService/GetHolder"] = [O, A, S],
        ["VoucherService/ListHolders"] = [O, A, S],
        ["VoucherService/PutProgrammeParameters"] = [O],
        ["VoucherService/ListProgrammeParameters"] = [P, O, A, S],
        ["VoucherService/RecordContract"] = [O],
        ["VoucherService/GetContract"] = [O, A, S],
        ["VoucherService/RecordOtherSupport"] = [O],
        ["VoucherService/IssueVoucher"] = [O],
        ["VoucherService/GetVoucher"] = [O, A, S],
        ["VoucherService/FileClaim"] = [O],
        ["VoucherService/VoidClaim"] = [O],
        ["VoucherService/GetClaim"] = [O, A, S],
        ["VoucherService/ListClaims"] = [O, A, S],
        ["VoucherService/RecordPayout"] = [O],
        ["VoucherService/ListPayouts"] = [O, A, S],
        ["VoucherService/ReleaseYearEnd"] = [O],
        ["SettlementService/SettleDay"] = [S],
        ["SettlementService/SettleDayWithProgress"] = [S],
        ["SettlementService/ListPendingDays"] = [O, A, S],
        ["SettlementService/GetSettlement"] = [O, A, S],
        ["SettlementService/ListSettlements"] = [O, A, S],
        ["SettlementService/GetStatement"] = [P, O, A, S],
        ["AuditService/VerifyChain"] = [P, O, A, S],
        ["AuditService/GetMerkleRoot"] = [P, O, A, S],
        ["AuditService/GetInclusionProof"] = [P, O, A, S],
        ["AuditService/QueryUsage"] = [P, O, A, S],
        ["AuditService/ExportUsage"] = [P, A],
        ["AuditService/DetectAnomalies"] = [O, A],
        ["AuditService/RenderReport"] = [O, A],
        ["AuditService/ListAuditQueries"] = [A],
        ["AuditService/GetSigningKey"] = [P, O, A, S],
        ["AuditService/GetChainHashes"] = [P, O, A, S],

        ["TransparencyService/GetTreeHead"] = [P, O, A, S],
        ["TransparencyService/GetLogInclusionProof"] = [P, O, A, S],
        ["TransparencyService/GetConsistencyProof"] = [P, O, A, S],

        ["SandboxService/GetClock"] = [P, O, A, S],
        ["SandboxService/AdvanceClock"] = [O],

        // Public: served to anyone, with any key or none (see the test below).
        ["PublicationService/GetPublicNotice"] = [P, O, A, S],
        ["PublicationService/GetAdmittedList"] = [P, O, A, S],
    };

    /// <summary>The rpcs served without a key (AccessPolicy.IsPublic); every other one refuses a call without one.</summary>
    private static readonly string[] Public = ["PublicationService/GetAdmittedList", "PublicationService/GetPublicNotice"];

    /// <summary>Every rpc of every service the protos define, found from the generated descriptors, so that a new service cannot slip past the matrix.</summary>
    private static IEnumerable<MethodDescriptor> AllMethods() =>
        typeof(IngestRequest).Assembly.GetTypes()
            .Where(type => type.Namespace == "Metering.Protocol.V1" && type.Name.EndsWith("Reflection", StringComparison.Ordinal))
            .Select(type => (FileDescriptor)type.GetProperty("Descriptor", BindingFlags.Public | BindingFlags.Static)!.GetValue(null)!)
            .SelectMany(file => file.Services)
            .SelectMany(service => service.Methods);

    [Fact]
    public void The_matrix_covers_every_rpc_of_every_service()
    {
        Assert.Equal(
            AllMethods().Select(m => $"{m.Service.Name}/{m.Name}").Order(),
            Allowed.Keys.Order());
    }

    /// <summary>
    /// The rpcs the server maps besides the product's protos: standard infrastructure that
    /// answers without a key (health for probes and load balancers; reflection, which repeats what
    /// the published .proto files say). Tested through the server in HealthAndReflectionTests.
    /// </summary>
    private static readonly string[] Infrastructure =
    [
        "grpc.health.v1.Health/Check",
        "grpc.health.v1.Health/Watch",
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ];

    [Fact]
    public async Task Every_rpc_the_server_maps_is_in_the_matrix_or_is_public_infrastructure()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        string[] mapped = server.Services.GetRequiredService<EndpointDataSource>().Endpoints
            .Select(endpoint => endpoint.Metadata.GetMetadata<GrpcMethodMetadata>())
            .OfType<GrpcMethodMetadata>()
            .Select(metadata => metadata.Method.FullName.TrimStart('/'))
            .Distinct()
            .Order(StringComparer.Ordinal)
            .ToArray();
        string[] known = AllMethods().Select(m => $"{m.Service.FullName}/{m.Name}").Concat(Infrastructure).Order(StringComparer.Ordinal).ToArray();

        Assert.Equal(known, mapped);
        Assert.All(Infrastructure, method => Assert.True(AccessPolicy.IsPublic("/" + method), $"{method} needs a key"));
    }

    [Fact]
    public async Task Every_role_reaches_exactly_the_rpcs_the_matrix_allows()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        var keys = new Dictionary<string, string>
        {
            [P] = TestServer.ProviderKey,
            [O] = TestServer.OperatorKey,
            [A] = TestServer.AuditorKey,
            [S] = TestServer.SettlementKey,
        };
        var failures = new List<string>();
        foreach (MethodDescriptor method in AllMethods())
        {
            string name = $"{method.Service.Name}/{method.Name}";
            foreach (var (role, key) in keys)
            {
                RpcException? error = await CallAsync(server, method, TestServer.Bearer(key));
                bool denied = error is { StatusCode: StatusCode.PermissionDenied } && IngestCall.Reason(error) == "ROLE_NOT_ALLOWED";
                bool allowed = Allowed[name].Contains(role);
                if (denied == allowed)
                {
                    failures.Add($"{role} on {name}: expected {(allowed ? "to pass the policy" : "ROLE_NOT_ALLOWED")}, got {error?.StatusCode.ToString() ?? "OK"} {(error is null ? "" : IngestCall.Reason(error))}");
                }
            }
        }

        Assert.Empty(failures);
    }

    [Fact]
    public async Task Every_rpc_refuses_a_call_without_a_valid_key()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        foreach (MethodDescriptor method in AllMethods())
        {
            foreach (Metadata headers in new[] { new Metadata(), TestServer.Bearer("not-a-key") })
            {
                RpcException? error = await CallAsync(server, method, headers);
                bool unauthenticated = error is { StatusCode: StatusCode.Unauthenticated };
                if (Public.Contains($"{method.Service.Name}/{method.Name}"))
                {
                    // The published lists answer anyone, a bogus key included (here INVALID_ARGUMENT for the empty batch id).
                    Assert.False(unauthenticated, $"{method.FullName} is public but refused a call without a valid key");
                    continue;
                }

                Assert.True(unauthenticated, $"{method.FullName} answered {error?.StatusCode.ToString() ?? "OK"} without a valid key");
            }
        }
    }

    [Fact]
    public async Task A_revoked_key_is_refused_once_the_authentication_cache_time_has_passed()
    {
        await using TestServer server = await TestServer.StartAsync(postgres);
        await using var dataSource = Metering.Engine.Storage.Database.CreateDataSource(server.ConnectionString);
        var store = new Metering.Engine.Access.CredentialStore(dataSource, TimeProvider.System);
        var (credential, key) = await store.IssueAsync(Metering.Fixtures.Admissions.Operator, Metering.Engine.Access.Role.Auditor, "auditor-temp", "", CancellationToken.None);
        var registry = server.RegistryClient();
        await registry.ListAdmissionBatchesAsync(new ListAdmissionBatchesRequest(), TestServer.Bearer(key));

        await store.RevokeAsync(Metering.Fixtures.Admissions.Operator, credential.CredentialId, CancellationToken.None);
        await Task.Delay(new CallLimits().AuthenticationCacheMs + 200);

        RpcException error = await Assert.ThrowsAsync<RpcException>(() => registry.ListAdmissionBatchesAsync(new ListAdmissionBatchesRequest(), TestServer.Bearer(key)).ResponseAsync);
        Assert.Equal(StatusCode.Unauthenticated, error.StatusCode);
    }

    /// <summary>Calls any rpc with an empty request message; returns the error, or null when the call succeeded.</summary>
    private static async Task<RpcException?> CallAsync(TestServer server, MethodDescriptor descriptor, Metadata headers)
    {
        var marshaller = Marshallers.Create(static (byte[] b) => b, static b => b);
        MethodType type = (descriptor.IsClientStreaming, descriptor.IsServerStreaming) switch
        {
            (false, false) => MethodType.Unary,
            (true, false) => MethodType.ClientStreaming,
            (false, true) => MethodType.ServerStreaming,
            _ => MethodType.DuplexStreaming,
        };
        var method = new Method<byte[], byte[]>(type, descriptor.Service.FullName, descriptor.Name, marshaller, marshaller);
        CallInvoker invoker = server.Channel.CreateCallInvoker();
        var options = new CallOptions(headers, deadline: DateTime.UtcNow.AddSeconds(10));
        try
        {
            switch (type)
            {
                case MethodType.Unary:
                    await invoker.AsyncUnaryCall(method, null, options, []);
                    break;
                case MethodType.ClientStreaming:
                    using (var call = invoker.AsyncClientStreamingCall(method, null, options))
                    {
                        await call.RequestStream.CompleteAsync();
                        await call.ResponseAsync;
                    }

                    break;
                case MethodType.ServerStreaming:
                    // A server-streaming call needs its one request message, or it fails before
                    // authentication runs.
                    using (var call = invoker.AsyncServerStreamingCall(method, null, options, []))
                    {
                        while (await call.ResponseStream.MoveNext(CancellationToken.None))
                        {
                        }
                    }

                    break;
                default:
                    using (var call = invoker.AsyncDuplexStreamingCall(method, null, options))
                    {
                        await call.RequestStream.CompleteAsync();
                        while (await call.ResponseStream.MoveNext(CancellationToken.None))
                        {
                        }
                    }

                    break;
            }

            return null;
        }
        catch (RpcException e)
        {
            return e;
        }
    }
}
