using System.Text.Json;
using System.Text.Json.Serialization;

namespace Metering.Cli.Commands;

/// <summary>
/// What `metering agent follow-sacct` remembers between polls and restarts: the cluster-local
/// time up to which it has asked sacct (the cursor), and the finished sacct lines (JobID and
/// Start) it has already uploaded that still fall inside the overlap window, so that a line sacct
/// lists again is not sent again. Written to a temporary file and renamed over the old one, so a
/// crash leaves either the old state or the new one, never half of either.
/// </summary>
internal sealed class FollowerState
{
    /// <summary>The most uploaded lines remembered; past it the oldest are forgotten (the server still de-duplicates them).</summary>
    public const int SentLinesMax = 1_000_000;

    [JsonPropertyName("cursor")]
    public DateTime Cursor { get; set; }

    /// <summary>Keys `JobID|Start` of uploaded lines, with the line's End, for pruning once End leaves the overlap window.</summary>
    [JsonPropertyName("sent")]
    public Dictionary<string, DateTime> Sent { get; set; } = new(StringComparer.Ordinal);

    public static FollowerState? Load(string path)
    {
        if (!File.Exists(path))
        {
            return null;
        }

        try
        {
            return JsonSerializer.Deserialize(File.ReadAllText(path), FollowerStateJson.Default.FollowerState)
                ?? throw new UsageException($"state file {path} is empty");
        }
        catch (JsonException e)
        {
            throw new UsageException($"state file {path} is not a follower's state ({e.Message}); move it aside to start again from --since");
        }
    }

    /// <summary>Forgets lines that ended before <paramref name="horizon"/>: sacct no longer lists them for a window starting there.</summary>
    public void Prune(DateTime horizon)
    {
        foreach (string key in Sent.Where(entry => entry.Value < horizon).Select(entry => entry.Key).ToList())
        {
            Sent.Remove(key);
        }

        if (Sent.Count > SentLinesMax)
        {
            foreach (string key in Sent.OrderBy(entry => entry.Value).Take(Sent.Count - SentLinesMax).Select(entry => entry.Key).ToList())
            {
                Sent.Remove(key);
            }
        }
    }

    public void Save(string path)
    {
        string full = Path.GetFullPath(path);
        string temporary = full + ".tmp";
        using (var output = new FileStream(temporary, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            JsonSerializer.Serialize(output, this, FollowerStateJson.Default.FollowerState);
            output.Flush(flushToDisk: true);
        }

        File.Move(temporary, full, overwrite: true);
    }
}

[JsonSerializable(typeof(FollowerState))]
[JsonSourceGenerationOptions(WriteIndented = true)]
internal sealed partial class FollowerStateJson : JsonSerializerContext;
