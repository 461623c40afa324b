using Wire = Metering.Protocol.V1;

namespace Metering.Server.Registry;

/// <summary>
/// Maps the registry's enums between the wire and the engine, at the edge. Each pair carries the
/// same names at the same numbers (RegistryEnumMirrorTests holds them so), so the map is by value:
/// a number the wire does not know stays that number, and the engine refuses it as it always has.
/// </summary>
internal static class RegistryMapping
{
    public static Engine.Registry.ApplicationState ToEngine(Wire.ApplicationState state) => (Engine.Registry.ApplicationState)(int)state;

    public static Wire.ApplicationState ToWire(Engine.Registry.ApplicationState state) => (Wire.ApplicationState)(int)state;

    public static Engine.Registry.LegalForm ToEngine(Wire.LegalForm form) => (Engine.Registry.LegalForm)(int)form;

    public static Wire.LegalForm ToWire(Engine.Registry.LegalForm form) => (Wire.LegalForm)(int)form;

    public static Engine.Registry.MaterialKind ToEngine(Wire.MaterialKind kind) => (Engine.Registry.MaterialKind)(int)kind;

    public static Wire.MaterialKind ToWire(Engine.Registry.MaterialKind kind) => (Wire.MaterialKind)(int)kind;

    public static Engine.Registry.FinancialReportKind ToEngine(Wire.FinancialReportKind kind) => (Engine.Registry.FinancialReportKind)(int)kind;

    public static Wire.FinancialReportKind ToWire(Engine.Registry.FinancialReportKind kind) => (Wire.FinancialReportKind)(int)kind;

    public static Engine.Registry.ServiceItemStatus ToEngine(Wire.ServiceItemStatus status) => (Engine.Registry.ServiceItemStatus)(int)status;

    public static Wire.ServiceItemStatus ToWire(Engine.Registry.ServiceItemStatus status) => (Wire.ServiceItemStatus)(int)status;

    public static Engine.Registry.ServiceItemAction ToEngine(Wire.ServiceItemAction action) => (Engine.Registry.ServiceItemAction)(int)action;

    public static Wire.ServiceItemAction ToWire(Engine.Registry.ServiceItemAction action) => (Wire.ServiceItemAction)(int)action;
}
