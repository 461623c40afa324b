using Grpc.Core;
using Metering.Engine.Settlement;
using Metering.Protocol.V1;

namespace Metering.Server.Settlement;

/// <summary>
/// The engine's settlement refusal reasons on the wire: engine reason → settlement.proto's
/// SettlementRefusal (by value; SettlementRefusalsTests keeps the two enums equal member by
/// member) → gRPC status code.
/// </summary>
internal static class SettlementRefusals
{
    public static SettlementRefusal ToProto(SettlementRefusalReason reason) => (SettlementRefusal)(int)reason;

    public static StatusCode CodeFor(SettlementRefusal reason) => reason switch
    {
        SettlementRefusal.SettlementFieldInvalid => StatusCode.InvalidArgument,
        SettlementRefusal.DayNotSettled or SettlementRefusal.StatementUnknown => StatusCode.NotFound,
        SettlementRefusal.StatementOfOtherParty => StatusCode.PermissionDenied,
        SettlementRefusal.ReconciliationFailed => StatusCode.Internal,
        SettlementRefusal.SettlementTampered => StatusCode.DataLoss,
        _ => StatusCode.FailedPrecondition,
    };
}
