using Google.Protobuf;
using Metering.Engine.Signing;

namespace Metering.Server.Ingest;

/// <summary>Maps the engine's signed receipts to the wire's <see cref="Protocol.V1.Receipt"/>, byte for byte.</summary>
internal static class ReceiptMessages
{
    public static Protocol.V1.Receipt ToMessage(SignedReceipt receipt) => new()
    {
        // The arrays are fresh per receipt and never written again, so wrapping them is safe.
        Signed = UnsafeByteOperations.UnsafeWrap(receipt.Signed),
        Signature = UnsafeByteOperations.UnsafeWrap(receipt.Signature),
        KeyId = receipt.KeyId,
    };
}
