using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using Metering.Probe.Attestation.Results;

namespace Metering.Probe.Attestation.Checksums;

/// <summary>One kernel of one device in a commitment: its work and its Merkle root.</summary>
public sealed record CommittedKernel(string Kernel, int Items, int Iterations, int Runs, byte[] Root);

/// <summary>One device in a commitment.</summary>
public sealed record CommittedDevice(int Index, string Uuid, IReadOnlyList<CommittedKernel> Kernels);

/// <summary>A decoded commitment.</summary>
public sealed record CommittedResults(byte[] Nonce, string NodeId, IReadOnlyList<CommittedDevice> Devices);

/// <summary>
/// The bytes a node commits to, and signs, before it opens any leaf: the Merkle roots of every
/// kernel of every device, bound to the nonce and the node. The server times the challenge up to
/// their arrival; the report that follows must give exactly these roots. Layout: the 28 ASCII
/// bytes "metering-probe/v1/commitment", a version byte (1), the 32-byte nonce, the node id, a
/// device count, then per device its index (i32), its UUID and a kernel count, and per kernel its
/// name, items (i32), iterations (i32), timed runs (i32) and 32-byte root. Strings are a u16 byte
/// length then UTF-8; counts are u16; integers big-endian. The probe tool and the tests both build
/// it here from the report, so the two cannot drift apart.
/// </summary>
public static class ResultCommitment
{
    public const byte Version = 1;

    /// <summary>64 devices of four kernels take about 6 KiB; anything far larger is not a commitment.</summary>
    public const int BytesMax = 64 * 1024;

    private static ReadOnlySpan<byte> Domain => "metering-probe/v1/commitment"u8;

    /// <summary>The commitment of <paramref name="nodeId"/> to the results of <paramref name="report"/>.</summary>
    public static byte[] Encode(string nodeId, ProbeReport report)
    {
        ArgumentNullException.ThrowIfNull(report);
        return Encode(new CommittedResults(report.Nonce, nodeId, report.Devices.Select(d => new CommittedDevice(d.Index, d.Uuid,
            d.Measurements.Select(m => new CommittedKernel(m.Kernel, m.Items, m.Iterations, m.DurationsNs.Count, m.Checksum.Root)).ToList())).ToList()));
    }

    public static byte[] Encode(CommittedResults results)
    {
        ArgumentNullException.ThrowIfNull(results);
        using var stream = new MemoryStream();
        stream.Write(Domain);
        stream.WriteByte(Version);
        Fixed(stream, results.Nonce, InputKey.NonceBytes);
        Text(stream, results.NodeId);
        Count(stream, results.Devices.Count);
        foreach (CommittedDevice device in results.Devices)
        {
            Int32(stream, device.Index);
            Text(stream, device.Uuid);
            Count(stream, device.Kernels.Count);
            foreach (CommittedKernel kernel in device.Kernels)
            {
                Text(stream, kernel.Kernel);
                Int32(stream, kernel.Items);
                Int32(stream, kernel.Iterations);
                Int32(stream, kernel.Runs);
                Fixed(stream, kernel.Root, MerkleTree.HashBytes);
            }
        }

        return stream.ToArray();
    }

    /// <summary>Reads a commitment; null when the bytes are not one (wrong domain, version, lengths or trailing bytes).</summary>
    public static CommittedResults? TryDecode(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length > BytesMax || !bytes.StartsWith(Domain))
        {
            return null;
        }

        var reader = new Reader(bytes[Domain.Length..].ToArray());
        if (reader.Byte() != Version || reader.Bytes(InputKey.NonceBytes) is not { } nonce || reader.Text() is not { } node || reader.Count() is not { } devices
            || devices > ProbeReport.DevicesMax)
        {
            return null;
        }

        var list = new List<CommittedDevice>(devices);
        for (int d = 0; d < devices; d++)
        {
            if (reader.Int32() is not { } index || reader.Text() is not { } uuid || reader.Count() is not { } kernels || kernels > KernelKinds.All.Count)
            {
                return null;
            }

            var committed = new List<CommittedKernel>(kernels);
            for (int k = 0; k < kernels; k++)
            {
                if (reader.Text() is not { } name || reader.Int32() is not { } items || reader.Int32() is not { } iterations || reader.Int32() is not { } runs
                    || reader.Bytes(MerkleTree.HashBytes) is not { } root)
                {
                    return null;
                }

                committed.Add(new CommittedKernel(name, items, iterations, runs, root));
            }

            list.Add(new CommittedDevice(index, uuid, committed));
        }

        return reader.AtEnd ? new CommittedResults(nonce, node, list) : null;
    }

    /// <summary>The node's signature over the commitment: ECDSA P-256 with SHA-256, DER (RFC 3279), as the server and the tests verify it.</summary>
    public static byte[] Sign(ECDsa nodeKey, byte[] commitment)
    {
        ArgumentNullException.ThrowIfNull(nodeKey);
        return nodeKey.SignData(commitment, HashAlgorithmName.SHA256, DSASignatureFormat.Rfc3279DerSequence);
    }

    private static void Fixed(MemoryStream stream, byte[] value, int length)
    {
        if (value.Length != length)
        {
            throw new ArgumentException($"A commitment holds {length} bytes here, not {value.Length}.");
        }

        stream.Write(value);
    }

    private static void Int32(MemoryStream stream, int value)
    {
        Span<byte> bytes = stackalloc byte[4];
        BinaryPrimitives.WriteInt32BigEndian(bytes, value);
        stream.Write(bytes);
    }

    private static void Count(MemoryStream stream, int count)
    {
        if (count > ushort.MaxValue)
        {
            throw new ArgumentException($"A commitment list holds at most {ushort.MaxValue} items, not {count}.");
        }

        Span<byte> bytes = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16BigEndian(bytes, (ushort)count);
        stream.Write(bytes);
    }

    private static void Text(MemoryStream stream, string value)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(value);
        Count(stream, bytes.Length);
        stream.Write(bytes);
    }

    private sealed class Reader(byte[] bytes)
    {
        private int _at;

        public bool AtEnd => _at == bytes.Length;

        public byte? Byte() => _at < bytes.Length ? bytes[_at++] : null;

        public byte[]? Bytes(int length)
        {
            if (bytes.Length - _at < length)
            {
                return null;
            }

            byte[] value = bytes.AsSpan(_at, length).ToArray();
            _at += length;
            return value;
        }

        public int? Int32() => Bytes(4) is { } b ? BinaryPrimitives.ReadInt32BigEndian(b) : null;

        public int? Count() => Bytes(2) is { } b ? BinaryPrimitives.ReadUInt16BigEndian(b) : null;

        public string? Text()
        {
            if (Count() is not { } length || Bytes(length) is not { } text)
            {
                return null;
            }

            try
            {
                return new UTF8Encoding(false, true).GetString(text);
            }
            catch (DecoderFallbackException)
            {
                return null;
            }
        }
    }
}
