using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace Metering.Probe.Attestation.Results;

/// <summary>
/// The canonical bytes of a report, the input of a signature (ECDSA P-256 over SHA-256 of these
/// bytes). Fields in declaration order; integers big-endian (i32, i64, u8 for booleans); strings
/// as a u16 byte length then UTF-8; byte strings at their fixed length (nonce, root and hashes are
/// 32 bytes); lists as a u16 count then the items. JSON is not signed because its whitespace,
/// escaping and key order are not canonical; a verifier parses the JSON, re-encodes it here and
/// checks the signature over the result.
/// </summary>
public static class ProbeReportEncoding
{
    public const byte EncodingVersion = 1;

    public static byte[] Encode(ProbeReport report)
    {
        ArgumentNullException.ThrowIfNull(report);
        var writer = new Writer();
        writer.Byte(EncodingVersion);
        writer.Text(report.Format);
        writer.Text(report.ProbeVersion);
        writer.Fixed(report.Nonce, 32);
        writer.Byte(report.Attested ? (byte)1 : (byte)0);
        writer.Int64(report.CreatedAtUnixMs);
        writer.Int32(report.RunsPerKernel);
        writer.Count(report.Devices.Count);
        foreach (DeviceReport device in report.Devices)
        {
            writer.Int32(device.Index);
            writer.Text(device.AcceleratorType);
            writer.Text(device.ModelName);
            writer.Int32(device.Multiprocessors);
            writer.Int32(device.ClockMhz);
            writer.Int64(device.MemoryBytes);
            writer.Text(device.Uuid);
            writer.Text(device.PciBusId);
            writer.Count(device.Measurements.Count);
            foreach (KernelMeasurement measurement in device.Measurements)
            {
                writer.Text(measurement.Kernel);
                writer.Text(measurement.ArithmeticPath);
                writer.Int32(measurement.Items);
                writer.Int32(measurement.Iterations);
                writer.Int64(measurement.WorkPerRun);
                writer.Text(measurement.RateUnit);
                writer.Count(measurement.DurationsNs.Count);
                foreach (long duration in measurement.DurationsNs)
                {
                    writer.Int64(duration);
                }

                writer.Int64(measurement.MedianDurationNs);
                writer.Int64(measurement.MedianRate);
                KernelChecksum checksum = measurement.Checksum;
                writer.Int32(checksum.LeafCount);
                writer.Fixed(checksum.Root, 32);
                writer.Count(checksum.Openings.Count);
                foreach (LeafOpening opening in checksum.Openings)
                {
                    writer.Int32(opening.Index);
                    writer.Fixed(opening.LeafHash, 32);
                    writer.Count(opening.Path.Count);
                    foreach (byte[] sibling in opening.Path)
                    {
                        writer.Fixed(sibling, 32);
                    }
                }
            }
        }

        return writer.ToArray();
    }

    /// <summary>SHA-256 of <see cref="Encode"/>: the report's identity in logs and in the registry.</summary>
    public static byte[] Digest(ProbeReport report) => SHA256.HashData(Encode(report));

    private sealed class Writer
    {
        private readonly MemoryStream _stream = new();

        public void Byte(byte value) => _stream.WriteByte(value);

        public void Int32(int value)
        {
            Span<byte> bytes = stackalloc byte[4];
            BinaryPrimitives.WriteInt32BigEndian(bytes, value);
            _stream.Write(bytes);
        }

        public void Int64(long value)
        {
            Span<byte> bytes = stackalloc byte[8];
            BinaryPrimitives.WriteInt64BigEndian(bytes, value);
            _stream.Write(bytes);
        }

        public void Count(int count)
        {
            if (count > ushort.MaxValue)
            {
                throw new ArgumentException($"A canonical list holds at most {ushort.MaxValue} items, not {count}.");
            }

            Span<byte> bytes = stackalloc byte[2];
            BinaryPrimitives.WriteUInt16BigEndian(bytes, (ushort)count);
            _stream.Write(bytes);
        }

        public void Text(string value)
        {
            byte[] bytes = Encoding.UTF8.GetBytes(value);
            Count(bytes.Length);
            _stream.Write(bytes);
        }

        public void Fixed(byte[] value, int length)
        {
            if (value.Length != length)
            {
                throw new ArgumentException($"A canonical byte string here is {length} bytes, not {value.Length}.");
            }

            _stream.Write(value);
        }

        public byte[] ToArray() => _stream.ToArray();
    }
}
