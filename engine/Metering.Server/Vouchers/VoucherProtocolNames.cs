using Google.Protobuf.Reflection;
using Metering.Protocol.V1;

namespace Metering.Server.Vouchers;

/// <summary>The voucher and settlement refusals as their .proto files spell them: the machine-readable reasons.</summary>
public static class VoucherProtocolNames
{
    private static readonly string[] VoucherRefusals = Names(VouchersReflection.Descriptor, nameof(VoucherRefusal));
    private static readonly string[] SettlementRefusals = Names(SettlementReflection.Descriptor, nameof(SettlementRefusal));

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
