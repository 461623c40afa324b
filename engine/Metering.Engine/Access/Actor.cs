namespace Metering.Engine.Access;

/// <summary>What a credential lets its holder do.</summary>
public enum Role
{
    /// <summary>An admitted or applying provider: its own data only.</summary>
    Provider,

    /// <summary>A bureau operator: writes the registry.</summary>
    Operator,

    /// <summary>A bureau auditor: reads everything, writes nothing.</summary>
    Auditor,

    /// <summary>The settlement batch: runs settlement, reads what it needs.</summary>
    Settlement,
}

/// <summary>Who acts: a role and a subject (a provider's credit code, or a person's or system's name).</summary>
public sealed record Actor(Role Role, string Subject)
{
    public static string NameOf(Role role) => role switch
    {
        Role.Provider => "provider",
        Role.Operator => "operator",
        Role.Auditor => "auditor",
        Role.Settlement => "settlement",
        _ => throw new ArgumentOutOfRangeException(nameof(role)),
    };

    public static bool TryParse(string text, out Role role)
    {
        foreach (Role candidate in Enum.GetValues<Role>())
        {
            if (NameOf(candidate) == text)
            {
                role = candidate;
                return true;
            }
        }

        role = default;
        return false;
    }

    public string RoleName => NameOf(Role);

    public override string ToString() => $"{RoleName}:{Subject}";
}
