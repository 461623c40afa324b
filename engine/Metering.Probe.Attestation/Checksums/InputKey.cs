using System.Buffers.Binary;
using System.Security.Cryptography;

namespace Metering.Probe.Attestation.Checksums;

/// <summary>
/// The 128-bit key from which every input of one kernel run is derived:
/// the first 16 bytes of SHA-256("metering-probe/v1/input" || nonce || kind || items || iterations),
/// integers as big-endian u32. A plain struct of four words so kernels can take it as a parameter.
/// </summary>
public readonly struct InputKey(uint k0, uint k1, uint k2, uint k3) : IEquatable<InputKey>
{
    public const int NonceBytes = 32;

    internal static ReadOnlySpan<byte> Domain => "metering-probe/v1/input"u8;

    public uint K0 { get; } = k0;

    public uint K1 { get; } = k1;

    public uint K2 { get; } = k2;

    public uint K3 { get; } = k3;

    public static InputKey Derive(ReadOnlySpan<byte> nonce, KernelKind kind, WorkSize size)
    {
        if (nonce.Length != NonceBytes)
        {
            throw new ArgumentException($"A nonce is {NonceBytes} bytes, not {nonce.Length}.", nameof(nonce));
        }

        Span<byte> input = stackalloc byte[Domain.Length + NonceBytes + 1 + 8];
        Domain.CopyTo(input);
        nonce.CopyTo(input[Domain.Length..]);
        int at = Domain.Length + NonceBytes;
        input[at++] = (byte)kind;
        BinaryPrimitives.WriteInt32BigEndian(input[at..], size.Items);
        BinaryPrimitives.WriteInt32BigEndian(input[(at + 4)..], size.Iterations);
        Span<byte> hash = stackalloc byte[32];
        SHA256.HashData(input, hash);
        return new InputKey(
            BinaryPrimitives.ReadUInt32BigEndian(hash),
            BinaryPrimitives.ReadUInt32BigEndian(hash[4..]),
            BinaryPrimitives.ReadUInt32BigEndian(hash[8..]),
            BinaryPrimitives.ReadUInt32BigEndian(hash[12..]));
    }

    public bool Equals(InputKey other) => K0 == other.K0 && K1 == other.K1 && K2 == other.K2 && K3 == other.K3;

    public override bool Equals(object? obj) => obj is InputKey other && Equals(other);

    public override int GetHashCode() => HashCode.Combine(K0, K1, K2, K3);

    public static bool operator ==(InputKey left, InputKey right) => left.Equals(right);

    public static bool operator !=(InputKey left, InputKey right) => !left.Equals(right);

    public override string ToString() => $"{K0:x8}{K1:x8}{K2:x8}{K3:x8}";
}
