using System.Reflection;

namespace Metering.Server.Fixtures;

/// <summary>
/// Where the programs the tests run as processes are. `metering` is built with ASP.NET Core, as
/// the tests are, and runs from the tests' own folder. The provider agent and the probe are plain
/// .NET programs: they run from their own build output, as a provider runs them, because the
/// tests' folder lacks the packages that the ASP.NET Core framework supplies to the tests.
/// </summary>
internal static class ProgramBuilds
{
    /// <summary>The full path of <paramref name="program"/> (for example "provider-agent.dll").</summary>
    public static string PathOf(string program)
    {
        string key = "Metering.ProgramDirectory." + Path.GetFileNameWithoutExtension(program);
        string? directory = typeof(ProgramBuilds).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>()
            .SingleOrDefault(attribute => attribute.Key == key)?.Value;
        return Path.GetFullPath(Path.Combine(directory ?? AppContext.BaseDirectory, program));
    }
}
