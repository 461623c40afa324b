using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using Metering.Engine.Signing;

namespace Metering.Engine.Transparency;

/// <summary>
/// A tree head the server signed: the log's size and root at an instant, under a key id. The
/// signed bytes (transparency-log.md, "The signed tree head"):
/// <code>
/// "metering tree head v1"  21 bytes ASCII, then one 0x00 byte (domain separation)
/// tree_size                8 bytes unsigned big-endian
/// timestamp                8 bytes unsigned big-endian, Unix milliseconds (UTC)
/// root                     32 bytes
/// key_id                   8 bytes: the key id's 16 hex digits as bytes
/// </code>
/// The signature is ECDSA P-256 over SHA-256 of those 78 bytes, DER-encoded, as
/// <c>openssl dgst -sha256 -verify</c> checks it.
/// </summary>
public sealed record SignedTreeHead(long TreeSize, byte[] Root, long TimestampUnixMs, string KeyId, byte[] Signature)
{
    /// <summary>The domain-separation prefix: receipts sign under another, so neither can pass for the other.</summary>
    public const string Prefix = "metering tree head v1";

    /// <summary>The JSON form's <c>format</c> value.</summary>
    public const string JsonFormat = "metering tree head v1";

    /// <summary>Largest saved head file read, in bytes; a head is about 400.</summary>
    public const int JsonBytesMax = 64 * 1024;

    public static byte[] Message(long treeSize, ReadOnlySpan<byte> root, long timestampUnixMs, string keyId)
    {
        if (treeSize < 0 || timestampUnixMs < 0 || root.Length != LogTree.HashBytes)
        {
            throw new ArgumentException("a tree head has a size and a time that are not negative and a 32-byte root");
        }

        byte[] id = Convert.FromHexString(keyId);
        if (id.Length != ServerPublicKey.KeyIdBytes)
        {
            throw new ArgumentException($"a key id has {ServerPublicKey.KeyIdBytes * 2} hex digits, not '{keyId}'");
        }

        var message = new byte[Prefix.Length + 1 + 8 + 8 + LogTree.HashBytes + ServerPublicKey.KeyIdBytes];
        int at = Encoding.ASCII.GetBytes(Prefix, message);
        message[at++] = 0x00;
        BinaryPrimitives.WriteUInt64BigEndian(message.AsSpan(at), (ulong)treeSize);
        at += 8;
        BinaryPrimitives.WriteUInt64BigEndian(message.AsSpan(at), (ulong)timestampUnixMs);
        at += 8;
        root.CopyTo(message.AsSpan(at));
        at += LogTree.HashBytes;
        id.CopyTo(message, at);
        return message;
    }

    /// <summary>Signs a head with the server's key.</summary>
    public static SignedTreeHead Sign(ServerSigningKey key, long treeSize, byte[] root, long timestampUnixMs) =>
        new(treeSize, root, timestampUnixMs, key.KeyId, key.Sign(Message(treeSize, root, timestampUnixMs, key.KeyId)));

    /// <summary>The bytes this head's signature covers.</summary>
    public byte[] Message() => Message(TreeSize, Root, TimestampUnixMs, KeyId);

    public string RootHex => Convert.ToHexStringLower(Root);

    /// <summary>Null when <paramref name="key"/> signed this head; otherwise what is wrong, as a sentence.</summary>
    public string? SignatureProblem(ServerPublicKey key)
    {
        if (KeyId != key.KeyId)
        {
            return $"it names key id {KeyId}, not the published key {key.KeyId}";
        }

        byte[] message;
        try
        {
            message = Message();
        }
        catch (ArgumentException e)
        {
            return e.Message;
        }

        return key.Verify(message, Signature) ? null : $"its signature does not verify with key {key.KeyId}";
    }

    public string ToJson() => JsonSerializer.Serialize(new Saved
    {
        Format = JsonFormat,
        TreeSize = TreeSize,
        RootHex = RootHex,
        TimestampUnixMs = TimestampUnixMs,
        KeyId = KeyId,
        SignatureHex = Convert.ToHexStringLower(Signature),
    }, JsonOptions);

    /// <summary>Reads a head saved by <see cref="ToJson"/> (`metering audit log-head --out`).</summary>
    /// <exception cref="FormatException">The text is not a saved tree head.</exception>
    public static SignedTreeHead FromJson(string json)
    {
        Saved? saved;
        try
        {
            saved = JsonSerializer.Deserialize<Saved>(json, JsonOptions);
        }
        catch (JsonException e)
        {
            throw new FormatException($"not a saved tree head: {e.Message}");
        }

        if (saved is null || saved.Format != JsonFormat || saved.RootHex is null || saved.KeyId is null || saved.SignatureHex is null)
        {
            throw new FormatException($"not a saved tree head: it needs format \"{JsonFormat}\", treeSize, rootHex, timestampUnixMs, keyId and signatureHex");
        }

        try
        {
            byte[] root = Convert.FromHexString(saved.RootHex);
            if (root.Length != LogTree.HashBytes || saved.TreeSize < 0)
            {
                throw new FormatException("a saved tree head has a 32-byte root and a size that is not negative");
            }

            return new SignedTreeHead(saved.TreeSize, root, saved.TimestampUnixMs, saved.KeyId, Convert.FromHexString(saved.SignatureHex));
        }
        catch (FormatException e)
        {
            throw new FormatException($"not a saved tree head: {e.Message}");
        }
    }

    private static readonly JsonSerializerOptions JsonOptions = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.CamelCase };

    private sealed class Saved
    {
        public string? Format { get; set; }

        public long TreeSize { get; set; }

        public string? RootHex { get; set; }

        public long TimestampUnixMs { get; set; }

        public string? KeyId { get; set; }

        public string? SignatureHex { get; set; }
    }
}
