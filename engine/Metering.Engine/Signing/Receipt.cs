using System.Buffers.Binary;
using System.Text;

namespace Metering.Engine.Signing;

/// <summary>
/// What the server signs when it acknowledges usage: "at this time the stream of this provider
/// stood committed at this sequence with this chain head". The byte form is documented in
/// proto/metering/v1/receipts.md and a unit test holds this class to that page's worked example.
/// </summary>
public sealed record Receipt(string KeyId, string ProviderId, string StreamId, ulong Sequence, byte[] ChainHead, long CommittedUnixMs)
{
    /// <summary>Bytes of a chain head, as in the canonical encoding.</summary>
    public const int ChainHeadBytes = 32;

    /// <summary>
    /// The longest string field: key ids are 16 hex digits, provider ids 18 characters and stream
    /// ids 64; anything longer is not a receipt this server made.
    /// </summary>
    public const int StringBytesMax = 64;

    /// <summary>The largest receipt: the prefix, three strings at their longest, sequence, head and time.</summary>
    public const int EncodedBytesMax = 20 + 3 * (2 + StringBytesMax) + 8 + ChainHeadBytes + 8;

    /// <summary>
    /// Every receipt starts with these 20 bytes: ASCII "metering receipt v1" and a zero byte. The
    /// prefix keeps a receipt's signature from ever standing for another message signed with the
    /// same key (a tree head starts differently), and names the format's version; the zero byte
    /// ends it, so no other prefix of the family can be a prefix of this one.
    /// </summary>
    public static ReadOnlySpan<byte> DomainPrefix => "metering receipt v1\0"u8;

    /// <summary>The receipt's bytes, as signed.</summary>
    public byte[] Encode()
    {
        if (ChainHead.Length != ChainHeadBytes)
        {
            throw new ArgumentException($"A chain head is {ChainHeadBytes} bytes, not {ChainHead.Length}.");
        }

        byte[] bytes = new byte[DomainPrefix.Length + 3 * 2 + Length(KeyId) + Length(ProviderId) + Length(StreamId) + 8 + ChainHeadBytes + 8];
        Span<byte> at = bytes;
        DomainPrefix.CopyTo(at);
        at = at[DomainPrefix.Length..];
        at = WriteString(KeyId, at);
        at = WriteString(ProviderId, at);
        at = WriteString(StreamId, at);
        BinaryPrimitives.WriteUInt64BigEndian(at, Sequence);
        ChainHead.CopyTo(at[8..]);
        BinaryPrimitives.WriteInt64BigEndian(at[(8 + ChainHeadBytes)..], CommittedUnixMs);
        return bytes;
    }

    /// <summary>Reads a receipt's bytes back; throws <see cref="ReceiptFormatException"/> for anything that is not exactly one receipt.</summary>
    public static Receipt Decode(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length > EncodedBytesMax || !bytes.StartsWith(DomainPrefix))
        {
            throw new ReceiptFormatException("the bytes do not start with \"metering receipt v1\" and a zero byte");
        }

        ReadOnlySpan<byte> rest = bytes[DomainPrefix.Length..];
        string keyId = ReadString(ref rest, "key id");
        string providerId = ReadString(ref rest, "provider id");
        string streamId = ReadString(ref rest, "stream id");
        if (rest.Length != 8 + ChainHeadBytes + 8)
        {
            throw new ReceiptFormatException($"after the stream id come 48 bytes (sequence, chain head, time), not {rest.Length}");
        }

        return new Receipt(keyId, providerId, streamId, BinaryPrimitives.ReadUInt64BigEndian(rest), rest.Slice(8, ChainHeadBytes).ToArray(),
            BinaryPrimitives.ReadInt64BigEndian(rest[(8 + ChainHeadBytes)..]));
    }

    private static int Length(string text)
    {
        int length = Encoding.UTF8.GetByteCount(text);
        return length <= StringBytesMax ? length : throw new ArgumentException($"A receipt's strings are at most {StringBytesMax} bytes; '{text}' is {length}.");
    }

    private static Span<byte> WriteString(string text, Span<byte> destination)
    {
        int length = Encoding.UTF8.GetBytes(text, destination[2..]);
        BinaryPrimitives.WriteUInt16BigEndian(destination, (ushort)length);
        return destination[(2 + length)..];
    }

    private static string ReadString(ref ReadOnlySpan<byte> rest, string field)
    {
        if (rest.Length < 2)
        {
            throw new ReceiptFormatException($"the receipt ends before its {field}");
        }

        int length = BinaryPrimitives.ReadUInt16BigEndian(rest);
        if (length > StringBytesMax || rest.Length < 2 + length)
        {
            throw new ReceiptFormatException($"the {field}'s length ({length}) runs past the receipt or its limit of {StringBytesMax} bytes");
        }

        string text = Encoding.UTF8.GetString(rest.Slice(2, length));
        rest = rest[(2 + length)..];
        return text;
    }
}

/// <summary>A receipt as it travels and is kept: the signed bytes, the DER signature over them, and the signing key's id.</summary>
public sealed record SignedReceipt(byte[] Signed, byte[] Signature, string KeyId);

/// <summary>Bytes that are not a receipt of the documented format.</summary>
internal sealed class ReceiptFormatException(string message) : Exception(message);

/// <summary>
/// Signs receipts with the server's key. One signature per acknowledgement, never per record:
/// an ECDSA P-256 signature costs tens of microseconds, a batch's commit milliseconds.
/// </summary>
public sealed class ReceiptSigner(ServerSigningKey key, TimeProvider time)
{
    /// <summary>A receipt for the stream's committed mark and head, stamped with the server's clock now, after the commit.</summary>
    public SignedReceipt Sign(string providerId, string streamId, ulong sequence, byte[] chainHead)
    {
        byte[] signed = new Receipt(key.KeyId, providerId, streamId, sequence, chainHead, time.GetUtcNow().ToUnixTimeMilliseconds()).Encode();
        return new SignedReceipt(signed, key.Sign(signed), key.KeyId);
    }
}

/// <summary>How a saved receipt fares against the server's published keys.</summary>
public enum ReceiptSignatureCheck
{
    Valid,
    Malformed,
    UnknownKeyId,
    BadSignature,
}

/// <summary>Checks saved receipts against the public keys the checker trusts, by key id.</summary>
public sealed class ReceiptVerifier(IEnumerable<ServerPublicKey> trustedKeys)
{
    private readonly Dictionary<string, ServerPublicKey> _keys = trustedKeys.ToDictionary(k => k.KeyId, StringComparer.Ordinal);

    /// <summary>
    /// Decodes the signed bytes and checks the signature with the key the bytes name. The key id
    /// inside the signed bytes decides, not the one stored beside them, which could be edited.
    /// </summary>
    public ReceiptSignatureCheck Check(SignedReceipt saved, out Receipt? receipt, out string detail)
    {
        try
        {
            receipt = Receipt.Decode(saved.Signed);
        }
        catch (ReceiptFormatException e)
        {
            receipt = null;
            detail = e.Message;
            return ReceiptSignatureCheck.Malformed;
        }

        if (saved.KeyId.Length > 0 && saved.KeyId != receipt.KeyId)
        {
            detail = $"the key id beside the receipt ({saved.KeyId}) is not the one it was signed under ({receipt.KeyId})";
            return ReceiptSignatureCheck.Malformed;
        }

        if (!_keys.TryGetValue(receipt.KeyId, out ServerPublicKey? key))
        {
            detail = $"unknown key id {receipt.KeyId}; the trusted keys are {string.Join(", ", _keys.Keys)}";
            return ReceiptSignatureCheck.UnknownKeyId;
        }

        if (!key.Verify(saved.Signed, saved.Signature))
        {
            detail = $"bad signature: the signature is not key {receipt.KeyId}'s over these bytes";
            return ReceiptSignatureCheck.BadSignature;
        }

        detail = "";
        return ReceiptSignatureCheck.Valid;
    }

    /// <summary>
    /// Null when the database still holds exactly the receipt's chain head at its sequence, as the
    /// server reported it (stored or not, stored more than once, the hash there, and the stream's
    /// committed mark); otherwise the difference, as a sentence, which `audit check-receipts`
    /// and bench/run-trust both print.
    /// </summary>
    public static string? StoredHeadProblem(Receipt receipt, bool stored, bool duplicated, ReadOnlySpan<byte> storedHash, ulong committedSequence)
    {
        if (!stored)
        {
            return $"sequence {receipt.Sequence} not stored: the database holds no record there (the stream's committed mark is {committedSequence})";
        }

        if (duplicated)
        {
            return $"sequence {receipt.Sequence} is stored more than once";
        }

        return storedHash.SequenceEqual(receipt.ChainHead)
            ? null
            : $"head differs at sequence {receipt.Sequence}: receipt says {Convert.ToHexStringLower(receipt.ChainHead)}, database holds {Convert.ToHexStringLower(storedHash)}";
    }
}
