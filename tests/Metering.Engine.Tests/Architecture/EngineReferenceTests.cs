using System.Reflection;
using System.Text.Json;

namespace Metering.Engine.Tests.Architecture;

/// <summary>
/// The engine is the domain and its storage: it references what Metering.Engine.csproj lists and
/// nothing else, and above all no transport. A gRPC server or an ASP.NET Core type in the engine
/// would let wire and hosting concerns leak into the domain again.
/// </summary>
public sealed class EngineReferenceTests
{
    /// <summary>Assemblies the engine may reference besides the base class library (System.*, Microsoft.Win32.*, netstandard, mscorlib).</summary>
    private static readonly HashSet<string> Allowed = new(StringComparer.Ordinal)
    {
        "Npgsql",
        "Dapper",
        "Parquet",
        "Microsoft.Extensions.Logging.Abstractions",
        "Metering.Probe.Attestation",
    };

    /// <summary>Name prefixes that are never allowed, in the engine or anywhere below it.</summary>
    private static readonly string[] Forbidden =
    [
        "Microsoft.AspNetCore",
        "Grpc.AspNetCore",
        "Grpc.Net.Client",
        "Grpc.Net.Common",
        "Microsoft.AspNetCore.Server.Kestrel",
    ];

    [Fact]
    public void Engine_references_only_the_assemblies_its_project_file_allows()
    {
        Assembly engine = Assembly.Load("Metering.Engine");

        string[] outside = engine.GetReferencedAssemblies()
            .Select(reference => reference.Name!)
            .Where(name => !IsBaseClassLibrary(name) && !Allowed.Contains(name))
            .Order(StringComparer.Ordinal)
            .ToArray();

        Assert.True(outside.Length == 0, $"Metering.Engine references {string.Join(", ", outside)}, which Metering.Engine.csproj does not allow.");
    }

    [Fact]
    public void Engine_dependency_closure_carries_no_gRPC_server_and_no_ASP_NET_Core()
    {
        // This test project references the engine, xunit and the fixtures library (which references
        // the engine alone), so the packages its build resolved are the engine's transitive
        // closure: a package that pulls in the gRPC server shows up here even though no engine code calls it.
        string depsPath = Path.Combine(AppContext.BaseDirectory, "Metering.Engine.Tests.deps.json");
        string runtimeConfigPath = Path.Combine(AppContext.BaseDirectory, "Metering.Engine.Tests.runtimeconfig.json");
        using JsonDocument deps = JsonDocument.Parse(File.ReadAllText(depsPath));
        using JsonDocument runtimeConfig = JsonDocument.Parse(File.ReadAllText(runtimeConfigPath));

        string[] libraries = deps.RootElement.GetProperty("libraries").EnumerateObject()
            .Select(library => library.Name.Split('/')[0])
            .ToArray();
        Assert.Contains("Npgsql", libraries);
        string[] forbiddenLibraries = libraries.Where(IsForbidden).Order(StringComparer.Ordinal).ToArray();
        Assert.True(forbiddenLibraries.Length == 0, $"the engine's dependencies include {string.Join(", ", forbiddenLibraries)}");

        string[] frameworks = Frameworks(runtimeConfig.RootElement.GetProperty("runtimeOptions")).ToArray();
        Assert.Contains("Microsoft.NETCore.App", frameworks);
        Assert.DoesNotContain("Microsoft.AspNetCore.App", frameworks);
    }

    [Theory]
    [InlineData("Grpc.AspNetCore.Server")]
    [InlineData("Microsoft.AspNetCore.Server.Kestrel.Core")]
    [InlineData("Microsoft.AspNetCore.Http.Abstractions")]
    [InlineData("Grpc.Net.Client")]
    public void A_transport_assembly_is_forbidden_and_not_on_the_engine_allow_list(string name)
    {
        // The guards above are only as good as their lists: the names a regression would bring must fall outside them.
        Assert.False(IsBaseClassLibrary(name) || Allowed.Contains(name), $"{name} would pass as allowed");
        Assert.True(IsForbidden(name), $"{name} would pass the closure check");
    }

    private static bool IsBaseClassLibrary(string name) =>
        name is "netstandard" or "mscorlib" || name.StartsWith("System.", StringComparison.Ordinal) || name == "System"
        || name.StartsWith("Microsoft.Win32.", StringComparison.Ordinal);

    private static bool IsForbidden(string name) =>
        Forbidden.Any(prefix => name.StartsWith(prefix, StringComparison.Ordinal)) || name.Contains("Kestrel", StringComparison.Ordinal);

    private static IEnumerable<string> Frameworks(JsonElement runtimeOptions)
    {
        if (runtimeOptions.TryGetProperty("framework", out JsonElement framework))
        {
            yield return framework.GetProperty("name").GetString()!;
        }

        if (runtimeOptions.TryGetProperty("frameworks", out JsonElement frameworks))
        {
            foreach (JsonElement each in frameworks.EnumerateArray())
            {
                yield return each.GetProperty("name").GetString()!;
            }
        }
    }
}
