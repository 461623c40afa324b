using System.Text.Json;
using Metering.Protocol.V1;

namespace Metering.Client.Receipts;

/// <summary>
/// The agent's receipts: one JSON object per line, appended as acknowledgements arrive, in the
/// form `metering audit check-receipts` reads (proto/metering/v1/receipts.md). The signed bytes
/// and the signature are kept exactly as the server sent them, in base64; the readable fields
/// beside them are for people, and the checker holds them to the signed bytes.
/// </summary>
public sealed class ReceiptsFile : IDisposable
{
    private readonly FileStream _file;
    private readonly Utf8JsonWriter _writer;
    private readonly Lock _lock = new();

    public ReceiptsFile(string path)
    {
        // Appends: receipts of earlier runs are proof too and are never dropped.
        _file = new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.Read);
        _writer = new Utf8JsonWriter(_file);
    }

    /// <summary>Receipts written so far by this agent.</summary>
    public int Written { get; private set; }

    /// <summary>Appends one receipt and hands the line to the operating system before returning.</summary>
    public void Append(string streamId, ulong sequence, ReadOnlySpan<byte> chainHead, Receipt receipt)
    {
        lock (_lock)
        {
            _writer.Reset(_file);
            _writer.WriteStartObject();
            _writer.WriteString("stream_id", streamId);
            _writer.WriteNumber("sequence", sequence);
            _writer.WriteString("chain_head", Convert.ToHexStringLower(chainHead));
            _writer.WriteString("key_id", receipt.KeyId);
            _writer.WriteBase64String("signed", receipt.Signed.Span);
            _writer.WriteBase64String("signature", receipt.Signature.Span);
            _writer.WriteEndObject();
            _writer.Flush();
            _file.WriteByte((byte)'\n');
            _file.Flush();
            Written++;
        }
    }

    public void Dispose()
    {
        _writer.Dispose();
        _file.Dispose();
    }
}
