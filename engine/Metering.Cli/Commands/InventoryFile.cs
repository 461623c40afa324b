using System.Text.Json;
using System.Text.Json.Serialization;
using Metering.Protocol.V1;

namespace Metering.Cli.Commands;

/// <summary>
/// The inventory file of `capacity inventory declare --file FILE`: one JSON object with the nodes,
/// named as the proto3 JSON mapping names DeclaredNode's fields (samples/Capacity/README.md
/// documents it, samples/Capacity/inventory.json is one). A file that is not that shape is a
/// usage error found before the server is called; the inventory's rules (a node named twice, a
/// model the catalog does not know) are the server's to refuse.
/// </summary>
internal static class InventoryFile
{
    /// <summary>The server takes at most 20,000 nodes by default, each well under 400 bytes of JSON.</summary>
    public const long FileBytesMax = 8 * 1024 * 1024;

    private static readonly JsonSerializerOptions Options = new()
    {
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        PropertyNameCaseInsensitive = false,
        AllowTrailingCommas = false,
        ReadCommentHandling = JsonCommentHandling.Disallow,
        NumberHandling = JsonNumberHandling.Strict,
        RespectNullableAnnotations = true,
    };

    private sealed class InventoryJson
    {
        [JsonPropertyName("nodes"), JsonRequired] public NodeJson[] Nodes { get; init; } = [];
    }

    private sealed class NodeJson
    {
        [JsonPropertyName("nodeId"), JsonRequired] public string NodeId { get; init; } = "";
        [JsonPropertyName("site"), JsonRequired] public string Site { get; init; } = "";
        [JsonPropertyName("deviceModel"), JsonRequired] public string DeviceModel { get; init; } = "";
        [JsonPropertyName("deviceCount"), JsonRequired] public uint DeviceCount { get; init; }
    }

    public static IReadOnlyList<DeclaredNode> Read(FileInfo path)
    {
        string text = InputFile.ReadText(path, "inventory file", FileBytesMax);
        InventoryJson json;
        try
        {
            json = JsonSerializer.Deserialize<InventoryJson>(text, Options) ?? throw new UsageException($"{path.Name} holds null, not an inventory");
        }
        catch (JsonException e)
        {
            throw new UsageException($"{path.Name} is not an inventory ({{\"nodes\": [{{\"nodeId\", \"site\", \"deviceModel\", \"deviceCount\"}}, ...]}}): {e.Message}");
        }

        if (json.Nodes.Length == 0)
        {
            throw new UsageException($"{path.Name} declares no node");
        }

        return json.Nodes.Select(n => new DeclaredNode { NodeId = n.NodeId, Site = n.Site, DeviceModel = n.DeviceModel, DeviceCount = n.DeviceCount }).ToList();
    }
}
