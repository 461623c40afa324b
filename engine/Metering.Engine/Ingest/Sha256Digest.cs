using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace Metering.Engine.Ingest;

/// <summary>
/// SHA-256 of one short span, as the hash chain needs it once per record: through OpenSSL's
/// SHA256_Init/Update/Final where the process can load libcrypto, and through .NET's SHA256
/// elsewhere. Both give the same digest; only the cost differs.
///
/// .NET reaches OpenSSL through its EVP layer, and for each digest it clears the error queue
/// and reallocates the digest context several times over: for a 250-byte record that costs
/// about as much as the hashing itself (a profile of the chain verifier showed
/// ERR_clear_error, CRYPTO_free and malloc beside the SHA rounds). The low-level functions
/// work on a context on the caller's stack and use the same SHA extensions of the processor.
/// They are deprecated in OpenSSL 3 but exported by every libcrypto 1.1 and 3; a digest is
/// checked against .NET's at start-up before they are used.
/// </summary>
internal static class Sha256Digest
{
    /// <summary>Bytes of OpenSSL's SHA256_CTX (eight state words, two length words, a 64-byte block, two counters), with room to spare.</summary>
    private const int ContextBytes = 128;

    private const string LibraryName = "libcrypto";

    private static readonly string[] LibraryFiles = ["libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.so"];

    static Sha256Digest()
    {
        try
        {
            NativeLibrary.SetDllImportResolver(typeof(Sha256Digest).Assembly, Resolve);
        }
        catch (InvalidOperationException)
        {
            // Another part of the assembly set a resolver first; the default probing still finds
            // a libcrypto on the library path, or the check below fails and .NET hashes instead.
        }

        // Only where libcrypto is the system's own: macOS, for one, aborts a process that loads
        // its private libcrypto, and no self-check could catch that.
        IsNative = OperatingSystem.IsLinux() && SelfCheck();
    }

    /// <summary>
    /// Longest input hashed natively. The native call skips the GC transition, which is only
    /// fair for calls this short (a few microseconds); longer inputs go through .NET.
    /// </summary>
    public const int NativeBytesMax = 16 * 1024;

    /// <summary>Whether digests go through OpenSSL's low-level functions.</summary>
    public static bool IsNative { get; }

    /// <summary>Writes SHA-256(<paramref name="data"/>) into the first 32 bytes of <paramref name="destination"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Hash(ReadOnlySpan<byte> data, Span<byte> destination)
    {
        if (destination.Length < 32)
        {
            throw new ArgumentException("A SHA-256 digest needs 32 bytes.", nameof(destination));
        }

        if (IsNative && data.Length <= NativeBytesMax)
        {
            NativeHash(data, destination);
        }
        else
        {
            SHA256.HashData(data, destination);
        }
    }

    private static void NativeHash(ReadOnlySpan<byte> data, Span<byte> destination)
    {
        Span<byte> context = stackalloc byte[ContextBytes];
        ref byte state = ref MemoryMarshal.GetReference(context);
        if (LibCrypto.Init(ref state) != 1
            || LibCrypto.Update(ref state, ref MemoryMarshal.GetReference(data), (nuint)data.Length) != 1
            || LibCrypto.Final(ref MemoryMarshal.GetReference(destination), ref state) != 1)
        {
            throw new CryptographicException("OpenSSL's SHA-256 failed.");
        }
    }

    /// <summary>Whether the native path loads and agrees with .NET on inputs of several block counts.</summary>
    private static bool SelfCheck()
    {
        try
        {
            Span<byte> native = stackalloc byte[32];
            Span<byte> managed = stackalloc byte[32];
            byte[] input = new byte[300];
            for (int i = 0; i < input.Length; i++)
            {
                input[i] = (byte)(i * 31 + 7);
            }

            foreach (int length in (int[])[0, 3, 55, 56, 64, 119, 250, 300])
            {
                NativeHash(input.AsSpan(0, length), native);
                SHA256.HashData(input.AsSpan(0, length), managed);
                if (!native.SequenceEqual(managed))
                {
                    return false;
                }
            }

            return true;
        }
        catch (Exception)
        {
            // Whatever went wrong (no library, no entry point, a marshalling surprise), .NET's
            // own SHA-256 is always there.
            return false;
        }
    }

    private static IntPtr Resolve(string name, Assembly assembly, DllImportSearchPath? searchPath)
    {
        if (name != LibraryName)
        {
            return IntPtr.Zero;
        }

        foreach (string file in LibraryFiles)
        {
            if (NativeLibrary.TryLoad(file, assembly, searchPath, out IntPtr handle))
            {
                return handle;
            }
        }

        return IntPtr.Zero;
    }

    /// <summary>
    /// The three functions. On inputs up to <see cref="NativeBytesMax"/> they run for a few
    /// microseconds at most, never block and never call back, so the GC transition is skipped.
    /// </summary>
    private static class LibCrypto
    {
        [DllImport(LibraryName, EntryPoint = "SHA256_Init", ExactSpelling = true)]
        [SuppressGCTransition]
        public static extern int Init(ref byte context);

        [DllImport(LibraryName, EntryPoint = "SHA256_Update", ExactSpelling = true)]
        [SuppressGCTransition]
        public static extern int Update(ref byte context, ref byte data, nuint length);

        [DllImport(LibraryName, EntryPoint = "SHA256_Final", ExactSpelling = true)]
        [SuppressGCTransition]
        public static extern int Final(ref byte digest, ref byte context);
    }
}
