using Google.Protobuf.Reflection;
using Metering.Protocol.V1;

namespace Metering.Server;

/// <summary>
/// Enum values as the .proto files spell them (UNKNOWN_DEVICE_MODEL, LINE_TOO_LONG, ...): the
/// machine-readable reasons, read from the generated descriptors. It lives in the server because
/// it names wire enums; the engine names its own mirrored enums through Formatting/ContractNames.
/// </summary>
public static class ProtocolNames
{
    private static readonly string[] IngestRefusals = Names(IngestReflection.Descriptor, nameof(IngestRefusal));
    private static readonly string[] RawLogRefusals = Names(RawlogReflection.Descriptor, nameof(RawLogRefusal));
    private static readonly string[] RegistryRefusals = Names(RegistryReflection.Descriptor, nameof(RegistryRefusal));
    private static readonly string[] CapacityRefusals = Names(CapacityReflection.Descriptor, nameof(CapacityRefusal));
    private static readonly string[] AuditRefusals = Names(AuditReflection.Descriptor, nameof(AuditRefusal));
    private static readonly string[] LogRefusals = Names(TransparencyReflection.Descriptor, nameof(LogRefusal));
    private static readonly string[] LimitRefusals = Names(LimitsReflection.Descriptor, nameof(LimitRefusal));
    private static readonly string[] VoucherRefusals = Names(VouchersReflection.Descriptor, nameof(VoucherRefusal));
    private static readonly string[] SettlementRefusals = Names(SettlementReflection.Descriptor, nameof(SettlementRefusal));

    public static string Of(IngestRefusal reason) => IngestRefusals[(int)reason];

    public static string Of(RawLogRefusal reason) => RawLogRefusals[(int)reason];

    public static string Of(RegistryRefusal reason) => RegistryRefusals[(int)reason];

    public static string Of(CapacityRefusal reason) => CapacityRefusals[(int)reason];
    public static string Of(AuditRefusal reason) => AuditRefusals[(int)reason];

    public static string Of(LogRefusal reason) => LogRefusals[(int)reason];
    public static string Of(LimitRefusal reason) => LimitRefusals[(int)reason];

    public static string Of(VoucherRefusal reason) => VoucherRefusals[(int)reason];

    public static string Of(SettlementRefusal reason) => SettlementRefusals[(int)reason];

    private static string[] Names(FileDescriptor file, string enumName)
    {
        EnumDescriptor descriptor = file.EnumTypes.Single(e => e.Name == enumName);
        var names = new string[descriptor.Values.Max(v => v.Number) + 1];
        foreach (EnumValueDescriptor value in descriptor.Values)
        {
            names[value.Number] = value.Name;
        }

        return names;
    }
}
