using System.Text.RegularExpressions;

namespace Metering.Engine.Tests.Architecture;

/// <summary>
/// The engine's feature folders form no cycle (DESIGN.md, "Architecture rules"). The graph is read
/// from the source, as a reviewer reads it: a folder depends on another when one of its files has a
/// <c>using Metering.Engine.X;</c> line or names <c>Metering.Engine.X.</c> in full.
/// </summary>
public sealed partial class FeatureCycleTests
{
    [Fact]
    public void The_engines_feature_folders_form_no_cycle()
    {
        IReadOnlyDictionary<string, IReadOnlySet<string>> graph = ReadEngineGraph();
        Assert.True(graph.Count >= 10, $"read only {graph.Count} folders from {EngineRoot()}; the test would pass without looking");

        IReadOnlyList<string> cycle = FeatureGraph.FindCycle(graph);

        Assert.True(cycle.Count == 0, "the feature folders form a cycle: " + string.Join(" -> ", cycle));
    }

    /// <summary>The order README's layout gives: a folder may use only the folders before it.</summary>
    private static readonly string[] Layers =
    [
        "Telemetry", "Time", "Identity", "Formatting", "Catalog", "Signing", "Storage", "Access", "Sandbox", "Registry", "Capacity",
        "Ingest", "RawLogs", "Audit", "Transparency", "Ledger", "Vouchers", "Settlement",
    ];

    [Fact]
    public void Each_feature_folder_uses_only_the_folders_before_it_in_the_layering()
    {
        IReadOnlyDictionary<string, IReadOnlySet<string>> graph = ReadEngineGraph();

        Assert.Empty(graph.Keys.Except(Layers)); // a new folder takes its place in the order first
        var upward = graph
            .SelectMany(folder => folder.Value.Where(used => Array.IndexOf(Layers, used) > Array.IndexOf(Layers, folder.Key)).Select(used => $"{folder.Key} -> {used}"))
            .Order(StringComparer.Ordinal)
            .ToList();
        Assert.True(upward.Count == 0, "folders that use a folder above them: " + string.Join(", ", upward));
    }

    [Fact]
    public void A_cycle_through_three_folders_is_found_and_named()
    {
        var graph = new Dictionary<string, IReadOnlySet<string>>
        {
            ["Ingest"] = new HashSet<string> { "Registry", "Storage" },
            ["Registry"] = new HashSet<string> { "Audit" },
            ["Audit"] = new HashSet<string> { "Ingest" },
            ["Storage"] = new HashSet<string>(),
        };

        IReadOnlyList<string> cycle = FeatureGraph.FindCycle(graph);

        Assert.Equal(["Audit", "Ingest", "Registry", "Audit"], cycle);
    }

    [Fact]
    public void A_layered_graph_has_no_cycle()
    {
        var graph = new Dictionary<string, IReadOnlySet<string>>
        {
            ["Settlement"] = new HashSet<string> { "Vouchers", "Ledger", "Time" },
            ["Vouchers"] = new HashSet<string> { "Ledger", "Time" },
            ["Ledger"] = new HashSet<string> { "Time" },
            ["Time"] = new HashSet<string>(),
        };

        Assert.Empty(FeatureGraph.FindCycle(graph));
    }

    [Fact]
    public void A_fully_qualified_name_counts_as_a_dependency()
    {
        IReadOnlySet<string> used = FeatureGraph.FoldersUsedBy("var v = new Metering.Engine.Audit.ChainVerifier(source);\nusing Metering.Engine.Time;\n", "Registry");

        Assert.Equal(new HashSet<string> { "Audit", "Time" }, used);
    }

    private static IReadOnlyDictionary<string, IReadOnlySet<string>> ReadEngineGraph()
    {
        string root = EngineRoot();
        var graph = new Dictionary<string, IReadOnlySet<string>>(StringComparer.Ordinal);
        foreach (string folder in Directory.EnumerateDirectories(root))
        {
            string name = Path.GetFileName(folder);
            if (name is "bin" or "obj")
            {
                continue;
            }

            var used = new HashSet<string>(StringComparer.Ordinal);
            foreach (string file in Directory.EnumerateFiles(folder, "*.cs", SearchOption.AllDirectories))
            {
                used.UnionWith(FeatureGraph.FoldersUsedBy(File.ReadAllText(file), name));
            }

            graph[name] = used;
        }

        return graph;
    }

    private static string EngineRoot()
    {
        for (DirectoryInfo? directory = new(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
        {
            if (File.Exists(Path.Combine(directory.FullName, "Metering.sln")))
            {
                return Path.Combine(directory.FullName, "engine", "Metering.Engine");
            }
        }

        throw new InvalidOperationException($"no Metering.sln above {AppContext.BaseDirectory}");
    }
}

/// <summary>The dependency graph of the feature folders and the search for a cycle in it.</summary>
internal static partial class FeatureGraph
{
    public static IReadOnlySet<string> FoldersUsedBy(string source, string self)
    {
        var used = new HashSet<string>(StringComparer.Ordinal);
        foreach (Match match in EngineName().Matches(source))
        {
            string folder = match.Groups["folder"].Value;
            if (folder != self)
            {
                used.Add(folder);
            }
        }

        return used;
    }

    /// <summary>A cycle as the folders along it, the first repeated at the end; empty when there is none. Deterministic: folders in ordinal order.</summary>
    public static IReadOnlyList<string> FindCycle(IReadOnlyDictionary<string, IReadOnlySet<string>> graph)
    {
        var state = new Dictionary<string, bool>(StringComparer.Ordinal); // false: on the path, true: done
        var path = new List<string>();
        foreach (string start in graph.Keys.Order(StringComparer.Ordinal))
        {
            if (!state.ContainsKey(start) && Visit(start) is { } cycle)
            {
                return cycle;
            }
        }

        return [];

        List<string>? Visit(string folder)
        {
            state[folder] = false;
            path.Add(folder);
            IEnumerable<string> next = graph.TryGetValue(folder, out IReadOnlySet<string>? targets) ? targets.Order(StringComparer.Ordinal) : [];
            foreach (string target in next)
            {
                if (state.TryGetValue(target, out bool done))
                {
                    if (!done)
                    {
                        return [.. path[path.IndexOf(target)..], target];
                    }

                    continue;
                }

                if (Visit(target) is { } cycle)
                {
                    return cycle;
                }
            }

            path.RemoveAt(path.Count - 1);
            state[folder] = true;
            return null;
        }
    }

    [GeneratedRegex(@"\bMetering\.Engine\.(?<folder>[A-Z][A-Za-z]*)\b")]
    private static partial Regex EngineName();
}
