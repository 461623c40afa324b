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
/// </summary>
public static class UsageNormaliser
{
    /// <summary>nPFh per PFLOPS·h.</summary>
    public const long NanoPflopsHoursPerPflopsHour = 1_000_000_000;

    // nPFh = count × num × (ms / 1000) × gflops × 10^9 FLOP / (den × 3.6 × 10^9 FLOP per nPFh)
    //      = count × num × ms × gflops / (den × 3,600).
    private const ulong MillisecondGflopPerNanoPflopsHour = 3_600;

    /// <summary>The usage of one record in nPFh. Inputs are validated before this is called.</summary>
    public static long UsageNanoPflopsHours(uint deviceCount, uint shareNumerator, uint shareDenominator, long durationMs, long fp16DenseGflops)
    {
        System.Diagnostics.Debug.Assert(shareDenominator > 0 && durationMs > 0 && fp16DenseGflops > 0);
        UInt128 numerator = (UInt128)deviceCount * shareNumerator * (ulong)durationMs * (ulong)fp16DenseGflops;
        UInt128 usage = numerator / ((UInt128)shareDenominator * MillisecondGflopPerNanoPflopsHour);
        return checked((long)(ulong)usage);
    }
}
