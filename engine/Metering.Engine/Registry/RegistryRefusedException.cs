namespace Metering.Engine.Registry;

/// <summary>A registry call was refused for a stated rule; nothing was changed.</summary>
public sealed class RegistryRefusedException(RegistryRefusalReason reason, string message, IReadOnlyDictionary<string, string>? metadata = null)
    : Exception(message)
{
    public RegistryRefusalReason Reason { get; } = reason;

    /// <summary>Details a client can act on, for example the missing material's kind.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; } = metadata ?? new Dictionary<string, string>();
}
