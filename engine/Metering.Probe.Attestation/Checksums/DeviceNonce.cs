using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace Metering.Probe.Attestation.Checksums;

/// <summary>
/// Each device's own 32-byte nonce, from which its inputs and its challenge are derived in place
/// of the server's nonce: SHA-256("metering-probe/v1/device" || nonce || index as u32 big-endian ||
/// UUID as a u16 big-endian byte length then UTF-8). Two devices of one report, or the same device
/// under another index or UUID, compute different results, so one device's result cannot stand
/// for several devices.
/// </summary>
public static class DeviceNonce
{
    /// <summary>A UUID longer than this is not a device UUID (NVML's are 40 characters).</summary>
    public const int UuidBytesMax = 128;

    private static ReadOnlySpan<byte> Domain => "metering-probe/v1/device"u8;

    public static byte[] Derive(ReadOnlySpan<byte> nonce, int deviceIndex, string uuid)
    {
        ArgumentNullException.ThrowIfNull(uuid);
        if (nonce.Length != InputKey.NonceBytes)
        {
            throw new ArgumentException($"A nonce is {InputKey.NonceBytes} bytes, not {nonce.Length}.", nameof(nonce));
        }

        int uuidBytes = Encoding.UTF8.GetByteCount(uuid);
        if (deviceIndex < 0 || uuidBytes > UuidBytesMax)
        {
            throw new ArgumentException($"A device index is not negative and a UUID is at most {UuidBytesMax} bytes.");
        }

        Span<byte> input = stackalloc byte[Domain.Length + InputKey.NonceBytes + 4 + 2 + UuidBytesMax];
        Domain.CopyTo(input);
        int at = Domain.Length;
        nonce.CopyTo(input[at..]);
        at += InputKey.NonceBytes;
        BinaryPrimitives.WriteInt32BigEndian(input[at..], deviceIndex);
        at += 4;
        BinaryPrimitives.WriteUInt16BigEndian(input[at..], (ushort)uuidBytes);
        at += 2;
        at += Encoding.UTF8.GetBytes(uuid, input[at..]);
        return SHA256.HashData(input[..at]);
    }
}
