using System.Text.Json;

namespace Metering.Client.Receipts;

/// <summary>
/// A receipt as read from its line of a receipts file: the signed bytes, the signature and the key
/// id exactly as the server sent them, and the readable fields kept beside them (null where absent).
/// </summary>
public sealed record SavedReceipt(int Line, byte[] Signed, byte[] Signature, string KeyId, string? StreamId, ulong? Sequence, string? ChainHeadHex);

/// <summary>Reads the receipts a <see cref="ReceiptsFile"/> kept (proto/metering/v1/receipts.md).</summary>
public static class SavedReceipts
{
    /// <summary>Every receipt in the file, in order; blank lines are skipped.</summary>
    /// <exception cref="FormatException">A line is not a receipt, the file holds none, or more than <paramref name="receiptsMax"/>; the message names the file and the line.</exception>
    public static async Task<List<SavedReceipt>> ReadAsync(string path, int receiptsMax, CancellationToken cancellationToken)
    {
        string name = Path.GetFileName(path);
        var receipts = new List<SavedReceipt>();
        int line = 0;
        await foreach (string text in File.ReadLinesAsync(path, cancellationToken))
        {
            line++;
            if (string.IsNullOrWhiteSpace(text))
            {
                continue;
            }

            if (receipts.Count == receiptsMax)
            {
                throw new FormatException($"{name} holds more than {receiptsMax:N0} receipts; check it in parts");
            }

            try
            {
                using JsonDocument document = JsonDocument.Parse(text);
                JsonElement root = document.RootElement;
                receipts.Add(new SavedReceipt(
                    line,
                    Required(root, "signed").GetBytesFromBase64(),
                    Required(root, "signature").GetBytesFromBase64(),
                    root.TryGetProperty("key_id", out JsonElement keyId) ? keyId.GetString() ?? "" : "",
                    root.TryGetProperty("stream_id", out JsonElement stream) ? stream.GetString() : null,
                    root.TryGetProperty("sequence", out JsonElement sequence) ? sequence.GetUInt64() : null,
                    root.TryGetProperty("chain_head", out JsonElement head) ? head.GetString() : null));
            }
            catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException or KeyNotFoundException)
            {
                throw new FormatException($"{name} line {line} is not a receipt: {e.Message}");
            }
        }

        return receipts.Count > 0 ? receipts : throw new FormatException($"{name} holds no receipts");
    }

    private static JsonElement Required(JsonElement root, string name) =>
        root.TryGetProperty(name, out JsonElement value) ? value : throw new KeyNotFoundException($"it has no \"{name}\"");
}
