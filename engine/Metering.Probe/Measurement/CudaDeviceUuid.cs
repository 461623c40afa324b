using System.Globalization;
using System.Runtime.InteropServices;

namespace Metering.Probe.Measurement;

/// <summary>
/// A CUDA device's UUID as `nvidia-smi -L` prints it (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx),
/// read from the CUDA driver (cuDeviceGetUuid_v2, CUDA 11.4 and later), which ILGPU 1.5.3 does not
/// expose. The UUID enters each device's nonce and must match the UUIDs registered with the
/// node's key, so the server can tell one physical GPU from another.
/// </summary>
internal static class CudaDeviceUuid
{
    private const string Driver = "libcuda.so.1";

    /// <summary>The UUID of the device with this CUDA ordinal, or null with the reason where the driver cannot give it.</summary>
    public static string? TryRead(int ordinal, out string? problem)
    {
        problem = null;
        if (!OperatingSystem.IsLinux())
        {
            problem = "the probe reads a GPU's UUID through libcuda.so.1, on Linux only";
            return null;
        }

        try
        {
            int status = CuInit(0);
            if (status == 0)
            {
                status = CuDeviceGet(out int device, ordinal);
                if (status == 0)
                {
                    status = CuDeviceGetUuid(out Uuid uuid, device);
                    if (status == 0)
                    {
                        return Format(MemoryMarshal.AsBytes(new ReadOnlySpan<Uuid>(in uuid)));
                    }
                }
            }

            problem = string.Create(CultureInfo.InvariantCulture, $"the CUDA driver answered error {status} for device {ordinal}");
            return null;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            problem = $"the CUDA driver's cuDeviceGetUuid_v2 is not available ({e.Message}); a driver of CUDA 11.4 or later is needed";
            return null;
        }
    }

    /// <summary>16 bytes in NVIDIA's layout: GPU- then 8-4-4-4-12 lower-case hex digits, in byte order.</summary>
    public static string Format(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length != 16)
        {
            throw new ArgumentException("a CUDA UUID is 16 bytes", nameof(bytes));
        }

        string hex = Convert.ToHexStringLower(bytes);
        return $"GPU-{hex[..8]}-{hex[8..12]}-{hex[12..16]}-{hex[16..20]}-{hex[20..]}";
    }

    [StructLayout(LayoutKind.Sequential)]
    private readonly struct Uuid
    {
        private readonly ulong _first;
        private readonly ulong _second;
    }

    [DllImport(Driver, EntryPoint = "cuInit")]
    private static extern int CuInit(uint flags);

    [DllImport(Driver, EntryPoint = "cuDeviceGet")]
    private static extern int CuDeviceGet(out int device, int ordinal);

    [DllImport(Driver, EntryPoint = "cuDeviceGetUuid_v2")]
    private static extern int CuDeviceGetUuid(out Uuid uuid, int device);
}
