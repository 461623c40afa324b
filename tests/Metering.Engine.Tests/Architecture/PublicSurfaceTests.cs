using System.Reflection;
using System.Text.RegularExpressions;

namespace Metering.Engine.Tests.Architecture;

/// <summary>
/// Types are <c>internal</c> unless another product project needs them (STYLE.md, "Code"). A public
/// type of the engine or of the probe's attestation library must be named in the source of a product
/// project that references it, or be exposed by a public member of such a type (the compiler then
/// needs it public too). Tests reach internals through InternalsVisibleTo, so their uses do not count.
/// </summary>
public sealed partial class PublicSurfaceTests
{
    /// <summary>The product projects that reference the engine, and may therefore keep its types public.</summary>
    private static readonly string[] EngineConsumers =
    [
        "engine/Metering.Server",
        "engine/Metering.Cli",
        "engine/Metering.Client",
        "bench/Metering.Bench",
    ];

    /// <summary>The product projects that use the attestation library: the engine checks reports, the probe writes them.</summary>
    private static readonly string[] AttestationConsumers =
    [
        "engine/Metering.Engine",
        "engine/Metering.Probe",
        "engine/Metering.Server",
        "engine/Metering.Cli",
        "bench/Metering.Bench",
    ];

    [Fact]
    public void Every_public_engine_type_is_used_by_another_product_project()
    {
        Assembly engine = typeof(Metering.Engine.Catalog.DeviceCatalog).Assembly;

        string[] unused = PublicTypesNobodyOutsideUses(engine, NamesUsedIn(EngineConsumers));

        Assert.True(unused.Length == 0, $"public in Metering.Engine but used by no other product project (make them internal): {string.Join(", ", unused)}");
    }

    [Fact]
    public void Every_public_attestation_type_is_used_by_another_product_project()
    {
        Assembly attestation = typeof(Metering.Probe.Attestation.Results.ProbeReport).Assembly;

        string[] unused = PublicTypesNobodyOutsideUses(attestation, NamesUsedIn(AttestationConsumers));

        Assert.True(unused.Length == 0, $"public in Metering.Probe.Attestation but used by no other product project (make them internal): {string.Join(", ", unused)}");
    }

    [Fact]
    public void The_engine_check_reads_enough_to_mean_something()
    {
        // A wrong folder name or an empty read would let every type look unused; a broken reader would let every type look used.
        IReadOnlySet<string> names = NamesUsedIn(EngineConsumers);
        Assembly engine = typeof(Metering.Engine.Catalog.DeviceCatalog).Assembly;

        Assert.Contains("MeteringServer", names);
        Assert.Contains("DeviceCatalog", names);
        Assert.True(names.Count >= 1000, $"read only {names.Count} names from the consumers");
        Assert.True(engine.GetExportedTypes().Length >= 50, $"the engine exports only {engine.GetExportedTypes().Length} types");
    }

    [Fact]
    public void A_public_type_that_no_consumer_names_is_reported()
    {
        // The engine's ledger writer is internal: named by no product project, so a public one would be reported.
        Type[] surface = [typeof(Metering.Engine.Catalog.DeviceCatalog), typeof(Metering.Engine.Ledger.LedgerWriter)];

        string[] unused = Unused(surface, new HashSet<string>(StringComparer.Ordinal) { "DeviceCatalog" });

        Assert.Equal(["Metering.Engine.Ledger.LedgerWriter"], unused);
    }

    [Fact]
    public void A_name_in_a_comment_is_not_a_use_but_one_in_an_interpolation_is()
    {
        IReadOnlySet<string> names = NamesIn("""
            // LedgerWriter is used elsewhere.
            /* LedgerLine */ var uri = new Uri("http://localhost"); var catalog = new DeviceCatalog();
            Console.WriteLine($"refused: {CredentialRefusals.StatusOf(reason)}");
            """);

        Assert.Contains("DeviceCatalog", names);
        Assert.Contains("CredentialRefusals", names);
        Assert.DoesNotContain("LedgerWriter", names);
        Assert.DoesNotContain("LedgerLine", names);
    }

    [Fact]
    public void A_type_that_a_used_public_member_exposes_counts_as_used()
    {
        // Exposed is named by no consumer, but a consumer that calls Exposer.Make receives one, so the compiler needs it public.
        Type[] surface = [typeof(Exposer), typeof(Exposed), typeof(Metering.Engine.Catalog.DeviceCatalog)];

        string[] unused = Unused(surface, new HashSet<string>(StringComparer.Ordinal) { SimpleName(typeof(Exposer)) });

        Assert.Equal(["Metering.Engine.Catalog.DeviceCatalog"], unused);
    }

    /// <summary>The assembly's exported top-level types that no consumer names and no used type exposes, by full name.</summary>
    private static string[] PublicTypesNobodyOutsideUses(Assembly assembly, IReadOnlySet<string> namesOutside) =>
        Unused(assembly.GetExportedTypes().Where(type => !type.IsNested).ToArray(), namesOutside);

    private static string[] Unused(IReadOnlyCollection<Type> surface, IReadOnlySet<string> namesOutside)
    {
        HashSet<Type> declared = surface.ToHashSet();
        var used = new HashSet<Type>(surface.Where(type => namesOutside.Contains(SimpleName(type))));
        var pending = new Queue<Type>(used);
        while (pending.TryDequeue(out Type? type))
        {
            foreach (Type exposed in ExposedBy(type).Where(declared.Contains))
            {
                if (used.Add(exposed))
                {
                    pending.Enqueue(exposed);
                }
            }
        }

        return surface.Except(used).Select(type => type.FullName!).Order(StringComparer.Ordinal).ToArray();
    }

    /// <summary>The types that appear in the signatures a type shows to other assemblies: base, interfaces, public and protected members.</summary>
    private static IEnumerable<Type> ExposedBy(Type type)
    {
        const BindingFlags visible = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
        var signature = new List<Type>();
        if (type.BaseType is not null)
        {
            signature.Add(type.BaseType);
        }

        signature.AddRange(type.GetInterfaces());
        foreach (MemberInfo member in type.GetMembers(visible).Where(IsVisibleOutside))
        {
            switch (member)
            {
                case FieldInfo field:
                    signature.Add(field.FieldType);
                    break;
                case PropertyInfo property:
                    signature.Add(property.PropertyType);
                    break;
                case EventInfo @event when @event.EventHandlerType is not null:
                    signature.Add(@event.EventHandlerType);
                    break;
                case MethodBase method:
                    signature.AddRange(method.GetParameters().Select(parameter => parameter.ParameterType));
                    if (method is MethodInfo withResult)
                    {
                        signature.Add(withResult.ReturnType);
                    }

                    break;
                case Type nested:
                    signature.AddRange(ExposedBy(nested));
                    break;
            }
        }

        return signature.SelectMany(Unwrap);
    }

    private static bool IsVisibleOutside(MemberInfo member) => member switch
    {
        FieldInfo field => field.IsPublic || field.IsFamily || field.IsFamilyOrAssembly,
        MethodBase method => method.IsPublic || method.IsFamily || method.IsFamilyOrAssembly,
        PropertyInfo property => property.GetAccessors(nonPublic: true).Any(accessor => IsVisibleOutside(accessor)),
        EventInfo @event => @event.AddMethod is { } add && IsVisibleOutside(add),
        Type nested => nested.IsNestedPublic || nested.IsNestedFamily || nested.IsNestedFamORAssem,
        _ => false,
    };

    /// <summary>A type with its element and generic argument types, down to the top-level declarations.</summary>
    private static IEnumerable<Type> Unwrap(Type type)
    {
        if (type.HasElementType)
        {
            return Unwrap(type.GetElementType()!);
        }

        IEnumerable<Type> arguments = type.IsGenericType ? type.GetGenericArguments().SelectMany(Unwrap) : [];
        Type declared = type.IsGenericType ? type.GetGenericTypeDefinition() : type;
        while (declared.DeclaringType is not null && !declared.IsGenericParameter)
        {
            declared = declared.DeclaringType;
        }

        return declared.IsGenericParameter ? arguments : arguments.Append(declared);
    }

    private static string SimpleName(Type type)
    {
        int tick = type.Name.IndexOf('`', StringComparison.Ordinal);
        return tick < 0 ? type.Name : type.Name[..tick];
    }

    /// <summary>
    /// Every identifier in the C# sources of the given project folders, comments left out. String literals are kept,
    /// because an interpolation hole names types too; a type named only inside a literal then passes, the lenient side.
    /// </summary>
    private static IReadOnlySet<string> NamesUsedIn(IEnumerable<string> projects)
    {
        string root = Metering.Tests.Shared.TestRecords.RepositoryRoot();
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (string project in projects)
        {
            string folder = Path.Combine(root, project);
            Assert.True(Directory.Exists(folder), $"{folder} is missing: the list of consumers is out of date");
            foreach (string file in Directory.EnumerateFiles(folder, "*.cs", SearchOption.AllDirectories))
            {
                string relative = Path.GetRelativePath(folder, file);
                if (relative.StartsWith("bin" + Path.DirectorySeparatorChar, StringComparison.Ordinal) || relative.StartsWith("obj" + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                {
                    continue;
                }

                names.UnionWith(NamesIn(File.ReadAllText(file)));
            }
        }

        return names;
    }

    private static IReadOnlySet<string> NamesIn(string source)
    {
        // Strings are matched first so that a "//" inside one is not taken for a comment.
        string code = CommentsAndStrings().Replace(source, match => match.Groups["comment"].Success ? " " : match.Value);
        return Identifiers().Matches(code).Select(match => match.Value).ToHashSet(StringComparer.Ordinal);
    }

    [GeneratedRegex("""[$@]*"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)'|(?<comment>//[^\n]*|/\*.*?\*/)""", RegexOptions.Singleline)]
    private static partial Regex CommentsAndStrings();

    [GeneratedRegex(@"\b[A-Za-z_][A-Za-z0-9_]*\b")]
    private static partial Regex Identifiers();
}

/// <summary>A used type whose public method exposes another: the second must stay public with the first.</summary>
file sealed class Exposer
{
    public static Exposed Make() => new();
}

/// <summary>Exposed only through <see cref="Exposer.Make"/>.</summary>
file sealed class Exposed;
