using System.Collections.Frozen;
using Metering.Engine.Access;
using Metering.Protocol.V1;

namespace Metering.Server.Access;

/// <summary>
/// Which roles may call which rpc. A method that is not listed is refused to everyone, so a new
/// rpc is closed until it is given its roles here. Whether a provider touches only its own data
/// is checked by each service against the caller's credit code.
/// </summary>
internal static class AccessPolicy
{
    private static readonly Role[] Everyone = [Role.Provider, Role.Operator, Role.Auditor, Role.Settlement];
    private static readonly Role[] Providers = [Role.Provider];
    private static readonly Role[] Operators = [Role.Operator];
    private static readonly Role[] Readers = [Role.Provider, Role.Operator, Role.Auditor, Role.Settlement];
    private static readonly Role[] Overseers = [Role.Operator, Role.Auditor];
    private static readonly Role[] ProvidersAndOverseers = [Role.Provider, Role.Operator, Role.Auditor];
    private static readonly Role[] BureauReaders = [Role.Operator, Role.Auditor, Role.Settlement];
    private static readonly Role[] Batch = [Role.Settlement];
    private static readonly Role[] Auditors = [Role.Auditor];
    private static readonly Role[] UsageReaders = [Role.Provider, Role.Operator, Role.Auditor, Role.Settlement];

    private static readonly FrozenDictionary<string, Role[]> AllowedByMethod = new Dictionary<string, Role[]>
    {
        [Method(IngestService.Descriptor.FullName, "Stream")] = Providers,
        [Method(RawLogService.Descriptor.FullName, "UploadLog")] = Providers,
        [Method(RawLogService.Descriptor.FullName, "GetUpload")] = Providers,

        [Method(RegistryService.Descriptor.FullName, "RegisterOrganisation")] = Operators,
        [Method(RegistryService.Descriptor.FullName, "AddLicence")] = Operators,
        [Method(RegistryService.Descriptor.FullName, "AddIntegrityListing")] = Operators,
        [Method(RegistryService.Descriptor.FullName, "PutAdmissionBatch")] = Operators,
        [Method(RegistryService.Descriptor.FullName, "ListAdmissionBatches")] = Everyone,
        [Method(RegistryService.Descriptor.FullName, "FileApplication")] = Providers,
        [Method(RegistryService.Descriptor.FullName, "ReviewMaterials")] = Operators,
        [Method(RegistryService.Descriptor.FullName, "RecordVerification")] = Operators,
        [Method(RegistryService.Descriptor.FullName, "OpenPublicNotice")] = Operators,
        [Method(RegistryService.Descriptor.FullName, "RecordObjection")] = Operators,
        [Method(RegistryService.Descriptor.FullName, "DecideAdmission")] = Operators,
        [Method(RegistryService.Descriptor.FullName, "ApproveProposal")] = Operators,
        [Method(RegistryService.Descriptor.FullName, "IssueAdmissionNotice")] = Operators,
        [Method(RegistryService.Descriptor.FullName, "RequestReconsideration")] = Providers,
        [Method(RegistryService.Descriptor.FullName, "DecideReconsideration")] = Operators,
        [Method(RegistryService.Descriptor.FullName, "GetApplication")] = Readers,
        [Method(RegistryService.Descriptor.FullName, "ListApplications")] = Readers,
        [Method(RegistryService.Descriptor.FullName, "FileFeeSchedule")] = Providers,
        [Method(RegistryService.Descriptor.FullName, "ChangeServiceItemStatus")] = Operators,
        [Method(RegistryService.Descriptor.FullName, "RecordFalseMaterials")] = Operators,
        [Method(RegistryService.Descriptor.FullName, "GetOrganisation")] = Readers,
        [Method(RegistryService.Descriptor.FullName, "GetHistory")] = Overseers,

        // Keys are managed by operators alone: a provider cannot issue itself an operator key.
        [Method(AccessService.Descriptor.FullName, "IssueKey")] = Operators,
        [Method(AccessService.Descriptor.FullName, "RevokeKey")] = Operators,
        [Method(AccessService.Descriptor.FullName, "PinKey")] = Operators,
        [Method(AccessService.Descriptor.FullName, "ListKeys")] = Operators,

        [Method(CapacityService.Descriptor.FullName, "RegisterNodeKey")] = Providers,
        [Method(CapacityService.Descriptor.FullName, "ApproveNodeKey")] = Operators,
        [Method(CapacityService.Descriptor.FullName, "ListNodeKeys")] = ProvidersAndOverseers,
        [Method(CapacityService.Descriptor.FullName, "DeclareInventory")] = Providers,
        [Method(CapacityService.Descriptor.FullName, "StartChallenges")] = Providers,
        [Method(CapacityService.Descriptor.FullName, "CommitResults")] = Providers,
        [Method(CapacityService.Descriptor.FullName, "SubmitAttestation")] = Providers,
        [Method(CapacityService.Descriptor.FullName, "GetFleetValidation")] = ProvidersAndOverseers,
        [Method(CapacityService.Descriptor.FullName, "ReviewUnknownModel")] = Operators,

        // Holders are not callers: operators act for them. Providers read the parameters for the payee mode.
        [Method(VoucherService.Descriptor.FullName, "RegisterHolder")] = Operators,
        [Method(VoucherService.Descriptor.FullName, "ApproveHolder")] = Operators,
        [Method(VoucherService.Descriptor.FullName, "LeaveHolderRole")] = Operators,
        [Method(VoucherService.Descriptor.FullName, "GetHolder")] = BureauReaders,
        [Method(VoucherService.Descriptor.FullName, "ListHolders")] = BureauReaders,
        [Method(VoucherService.Descriptor.FullName, "PutProgrammeParameters")] = Operators,
        [Method(VoucherService.Descriptor.FullName, "ListProgrammeParameters")] = Everyone,
        [Method(VoucherService.Descriptor.FullName, "RecordContract")] = Operators,
        [Method(VoucherService.Descriptor.FullName, "GetContract")] = BureauReaders,
        [Method(VoucherService.Descriptor.FullName, "RecordOtherSupport")] = Operators,
        [Method(VoucherService.Descriptor.FullName, "IssueVoucher")] = Operators,
        [Method(VoucherService.Descriptor.FullName, "GetVoucher")] = BureauReaders,
        [Method(VoucherService.Descriptor.FullName, "FileClaim")] = Operators,
        [Method(VoucherService.Descriptor.FullName, "VoidClaim")] = Operators,
        [Method(VoucherService.Descriptor.FullName, "GetClaim")] = BureauReaders,
        [Method(VoucherService.Descriptor.FullName, "ListClaims")] = BureauReaders,
        // Payouts and the year-end release move programme money: operators record them, the bureau reads them.
        [Method(VoucherService.Descriptor.FullName, "RecordPayout")] = Operators,
        [Method(VoucherService.Descriptor.FullName, "ListPayouts")] = BureauReaders,
        [Method(VoucherService.Descriptor.FullName, "ReleaseYearEnd")] = Operators,

        // Everyone reads the clock; only operators move a sandbox's.
        [Method(SandboxService.Descriptor.FullName, "GetClock")] = Everyone,
        [Method(SandboxService.Descriptor.FullName, "AdvanceClock")] = Operators,

        // Only the batch closes days; a provider reads its own statements (checked by the service).
        [Method(SettlementService.Descriptor.FullName, "SettleDay")] = Batch,
        [Method(SettlementService.Descriptor.FullName, "SettleDayWithProgress")] = Batch,
        [Method(SettlementService.Descriptor.FullName, "ListPendingDays")] = BureauReaders,
        [Method(SettlementService.Descriptor.FullName, "GetSettlement")] = BureauReaders,
        [Method(SettlementService.Descriptor.FullName, "ListSettlements")] = BureauReaders,
        [Method(SettlementService.Descriptor.FullName, "GetStatement")] = Everyone,

        // Audit reads and never writes. Providers check their own chains, roots and proofs and read
        // and export their own usage (the service confines them to their own credit code);
        // settlement reads what its statements publish; operators what their suspension decisions
        // rest on; bulk export of every provider and the query log stay with auditors.
        [Method(AuditService.Descriptor.FullName, "VerifyChain")] = Everyone,
        [Method(AuditService.Descriptor.FullName, "GetMerkleRoot")] = Everyone,
        [Method(AuditService.Descriptor.FullName, "GetInclusionProof")] = Everyone,
        [Method(AuditService.Descriptor.FullName, "QueryUsage")] = UsageReaders,
        [Method(AuditService.Descriptor.FullName, "ExportUsage")] = [Role.Provider, Role.Auditor],
        [Method(AuditService.Descriptor.FullName, "DetectAnomalies")] = Overseers,
        [Method(AuditService.Descriptor.FullName, "RenderReport")] = Overseers,
        [Method(AuditService.Descriptor.FullName, "ListAuditQueries")] = Auditors,

        // Receipts: anyone who holds a key may read the public key that checks them, and the
        // stored hashes they are checked against (a provider only its own, checked by the service).
        [Method(AuditService.Descriptor.FullName, "GetSigningKey")] = Everyone,
        [Method(AuditService.Descriptor.FullName, "GetChainHashes")] = Everyone,
        // The transparency log is public by design: every role reads heads and proofs. A provider
        // gets inclusion proofs of its own leaves only (checked by the service).
        [Method(TransparencyService.Descriptor.FullName, "GetTreeHead")] = Everyone,
        [Method(TransparencyService.Descriptor.FullName, "GetLogInclusionProof")] = Everyone,
        [Method(TransparencyService.Descriptor.FullName, "GetConsistencyProof")] = Everyone,
    }.ToFrozenDictionary(StringComparer.Ordinal);

    /// <summary>
    /// Methods served without a key: what the bureau posts for everyone (publication.proto), which
    /// reads published lists only; health, for load balancers and probes that hold no key; and
    /// reflection, which tells what the published .proto files already say. A key sent with them is ignored.
    /// </summary>
    private static readonly FrozenSet<string> PublicMethods = new[]
    {
        Method(PublicationService.Descriptor.FullName, "GetPublicNotice"),
        Method(PublicationService.Descriptor.FullName, "GetAdmittedList"),
        Method(Grpc.Health.V1.Health.Descriptor.FullName, "Check"),
        Method(Grpc.Health.V1.Health.Descriptor.FullName, "Watch"),
        Method(Grpc.Reflection.V1.ServerReflection.Descriptor.FullName, "ServerReflectionInfo"),
        Method(Grpc.Reflection.V1Alpha.ServerReflection.Descriptor.FullName, "ServerReflectionInfo"),
    }.ToFrozenSet(StringComparer.Ordinal);

    public static bool IsPublic(string method) => PublicMethods.Contains(method);

    /// <summary>The gRPC method path, as ServerCallContext.Method gives it.</summary>
    public static string Method(string serviceFullName, string methodName) => $"/{serviceFullName}/{methodName}";

    public static IEnumerable<string> Methods => AllowedByMethod.Keys;

    public static bool Allows(string method, Role role) =>
        AllowedByMethod.TryGetValue(method, out Role[]? roles) && roles.Contains(role);

    /// <summary>Refuses <paramref name="actor"/> with ROLE_NOT_ALLOWED (CallerRefusal) where its role may not call <paramref name="method"/>.</summary>
    public static void Authorise(string method, Actor actor)
    {
        if (!Allows(method, actor.Role))
        {
            throw CallerRefusals.Refused(CallerRefusal.RoleNotAllowed, $"the {actor.RoleName} role may not call {method}");
        }
    }
}
