namespace Metering.Engine.Tests.Architecture;

/// <summary>
/// The folders that already take the engine's own types (DESIGN.md, "the engine owns its types")
/// name no generated protobuf type, so a wire type cannot slip back into them unnoticed. A folder
/// joins the list when its last use of the contract moves to the server's edge.
/// </summary>
public sealed class WireFreeFolderTests
{
    private static readonly string[] WireFreeFolders = ["Ingest", "RawLogs"];

    /// <summary>
    /// Ingest/ProtocolNames.cs moves to the server in issue 15's types-finish branch; delete this
    /// allowance when that branch is merged.
    /// </summary>
    private static readonly string[] Pending = [Path.Combine("Ingest", "ProtocolNames.cs")];

    [Fact]
    public void Ingest_and_raw_logs_name_no_generated_protocol_type()
    {
        string root = EngineRoot();
        var offenders = new List<string>();
        int read = 0;
        foreach (string folder in WireFreeFolders)
        {
            foreach (string file in Directory.EnumerateFiles(Path.Combine(root, folder), "*.cs", SearchOption.AllDirectories))
            {
                string relative = Path.GetRelativePath(root, file);
                if (Pending.Contains(relative))
                {
                    continue;
                }

                read++;
                if (File.ReadAllText(file).Contains("Metering.Protocol", StringComparison.Ordinal))
                {
                    offenders.Add(relative);
                }
            }
        }

        Assert.True(read >= 20, $"read only {read} files under {root}; the test would pass without looking");
        Assert.True(offenders.Count == 0, "files that name the generated contract: " + string.Join(", ", offenders));
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

        throw new InvalidOperationException("Metering.sln not found above the test binaries.");
    }
}
