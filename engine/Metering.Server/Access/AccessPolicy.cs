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
    private static readonly Role[] Auditors = [Role.Auditor];
    private static readonly Role[] UsageReaders = [Role.Operator, Role.Auditor, Role.Settlement];

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
        [Method(RegistryService.Descriptor.FullName, "IssueAdmissionNotice")] = Operators,
        [Method(RegistryService.Descriptor.FullName, "GetApplication")] = Readers,
        [Method(RegistryService.Descriptor.FullName, "ListApplications")] = Readers,
        [Method(RegistryService.Descriptor.FullName, "FileFeeSchedule")] = Providers,
        [Method(RegistryService.Descriptor.FullName, "ChangeServiceItemStatus")] = Operators,
        [Method(RegistryService.Descriptor.FullName, "RecordFalseMaterials")] = Operators,
        [Method(RegistryService.Descriptor.FullName, "GetOrganisation")] = Readers,
        [Method(RegistryService.Descriptor.FullName, "GetHistory")] = Overseers,

        // Audit reads and never writes. Providers check their own chains, roots and proofs (the
        // service confines them to their own credit code); settlement reads what its statements
        // publish; operators what their suspension decisions rest on; bulk export and the query
        // log stay with auditors.
        [Method(AuditService.Descriptor.FullName, "VerifyChain")] = Everyone,
        [Method(AuditService.Descriptor.FullName, "GetMerkleRoot")] = Everyone,
        [Method(AuditService.Descriptor.FullName, "GetInclusionProof")] = Everyone,
        [Method(AuditService.Descriptor.FullName, "QueryUsage")] = UsageReaders,
        [Method(AuditService.Descriptor.FullName, "ExportUsage")] = Auditors,
        [Method(AuditService.Descriptor.FullName, "DetectAnomalies")] = Overseers,
        [Method(AuditService.Descriptor.FullName, "RenderReport")] = Overseers,
        [Method(AuditService.Descriptor.FullName, "ListAuditQueries")] = Auditors,
    }.ToFrozenDictionary(StringComparer.Ordinal);

    /// <summary>The gRPC method path, as ServerCallContext.Method gives it.</summary>
    public static string Method(string serviceFullName, string methodName) => $"/{serviceFullName}/{methodName}";

    public static IEnumerable<string> Methods => AllowedByMethod.Keys;

    public static bool Allows(string method, Role role) =>
        AllowedByMethod.TryGetValue(method, out Role[]? roles) && roles.Contains(role);
}
