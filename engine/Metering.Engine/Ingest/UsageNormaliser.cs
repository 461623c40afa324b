using Metering.Engine.Catalog;

namespace Metering.Engine.Ingest;

/// <summary>
/// Normalises a record to FP16 PFLOPS·h in integers.
///
/// Unit: the nano-PFLOPS·h (nPFh), 10^-9 PFLOPS·h = 3.6 × 10^9 FLOP. One H100 SXM for one second
/// is 274,833 nPFh; a whole PFLOPS·h is 1,000,000,000 nPFh.
///
/// Rule: usage = devices × (share numerator / share denominator) × duration × dense FP16 peak,
/// computed exactly in 128-bit integers and rounded down (toward zero) to a whole nPFh, once per
/// record. Sums over records add the stored per-record values exactly.
///
/// MIG: on a model whose catalog version lists MIG profiles, a share whose denominator is the
/// model's slice count (7) names MIG slices, and the share used here is the profile's
/// multiprocessor fraction from the catalog: 1/7 of an A100 is the 1g profile, 14/108 of the GPU.
/// A record is normalised once, with the catalog version in force at its start; that version is
/// stored with it, so a later version never changes usage already normalised.
/// </summary>
public static class UsageNormaliser
{
    /// <summary>nPFh per PFLOPS·h.</summary>
    public const long NanoPflopsHoursPerPflopsHour = 1_000_000_000;

    // nPFh = count × num × (ms / 1000) × gflops × 10^9 FLOP / (den × 3.6 × 10^9 FLOP per nPFh)
    //      = count × num × ms × gflops / (den × 3,600).
    private const ulong MillisecondGflopPerNanoPflopsHour = 3_600;

    /// <summary>
    /// The usage of one record of a catalog model in nPFh, with the share the model gives it (see
    /// <see cref="DeviceModel.TryComputeShare"/>). The validator refuses a share that names no MIG
    /// profile before this is called.
    /// </summary>
    public static long UsageNanoPflopsHours(uint deviceCount, uint shareNumerator, uint shareDenominator, long durationMs, DeviceModel model)
    {
        if (!model.TryComputeShare(shareNumerator, shareDenominator, out uint numerator, out uint denominator))
        {
            throw new ArgumentException($"Share {shareNumerator}/{shareDenominator} names no MIG profile of {model.Key} in catalog {model.CatalogVersion}.", nameof(shareNumerator));
        }

        return UsageNanoPflopsHours(deviceCount, numerator, denominator, durationMs, model.Fp16DenseGflops);
    }

    /// <summary>The usage of one record in nPFh, with the share as given. Inputs are validated before this is called.</summary>
    public static long UsageNanoPflopsHours(uint deviceCount, uint shareNumerator, uint shareDenominator, long durationMs, long fp16DenseGflops)
    {
        System.Diagnostics.Debug.Assert(shareDenominator > 0 && durationMs > 0 && fp16DenseGflops > 0);
        UInt128 numerator = (UInt128)deviceCount * shareNumerator * (ulong)durationMs * (ulong)fp16DenseGflops;
        UInt128 usage = numerator / ((UInt128)shareDenominator * MillisecondGflopPerNanoPflopsHour);
        return checked((long)(ulong)usage);
    }
}
