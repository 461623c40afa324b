using ILGPU;
using Metering.Probe.Attestation.Checksums;

namespace Metering.Probe.Kernels;

/// <summary>
/// Device-memory bandwidth: copies a nonce-derived source buffer into a destination buffer.
/// Elements are 16-byte pairs of words, which ILGPU turns into 128-bit loads and stores
/// (ld/st.global.v2.b64); each thread moves four elements a whole grid apart, all loads before
/// all stores, so that every warp keeps four coalesced requests in flight. The fill and the fold
/// are not timed.
/// </summary>
internal static class BandwidthKernels
{
    /// <summary>Elements each thread copies per launch.</summary>
    public const int ElementsPerThread = 4;

    /// <summary>Two 64-bit words moved as one 16-byte access.</summary>
    public struct WordPair
    {
        public ulong First;
        public ulong Second;
    }

    /// <summary>Writes word i of the source: the nonce-derived value the fold will be checked against.</summary>
    public static void Fill(Index1D index, InputKey key, ArrayView<ulong> source) =>
        source[index] = WorkInputs.BandwidthWord(key, index);

    /// <summary>
    /// Copies <paramref name="count"/> elements; launched with <paramref name="stride"/> threads,
    /// where stride * 4 covers the count.
    /// </summary>
    public static void Copy(Index1D index, ArrayView<WordPair> source, ArrayView<WordPair> destination, int count, int stride)
    {
        int i0 = index;
        int i1 = i0 + stride;
        int i2 = i1 + stride;
        int i3 = i2 + stride;
        if (i3 < count)
        {
            WordPair v0 = source[i0];
            WordPair v1 = source[i1];
            WordPair v2 = source[i2];
            WordPair v3 = source[i3];
            destination[i0] = v0;
            destination[i1] = v1;
            destination[i2] = v2;
            destination[i3] = v3;
            return;
        }

        for (int i = i0; i < count; i += stride)
        {
            destination[i] = source[i];
        }
    }

    /// <summary>Folds one 64 KiB chunk of the destination into the chunk's leaf value.</summary>
    public static void Fold(Index1D chunk, ArrayView<ulong> destination, ArrayView<ulong> folds)
    {
        ulong state = WorkInputs.FoldOffset;
        int first = chunk * WorkShape.BandwidthChunkWords;
        for (int i = 0; i < WorkShape.BandwidthChunkWords; i++)
        {
            state = WorkInputs.Fold(state, destination[first + i]);
        }

        folds[chunk] = state;
    }
}
