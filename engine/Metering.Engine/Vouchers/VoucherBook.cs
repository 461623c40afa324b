using System.Globalization;
using Metering.Engine.Access;
using Metering.Engine.Identity;
using Metering.Engine.Registry;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Vouchers;

/// <summary>
/// The voucher book: holders, programme-year parameters, contracts, other support and vouchers.
/// Each write runs in one transaction that first locks the holder's row, so that everything
/// decided about one holder (contract overlaps, caps, exclusivity) is decided one at a time.
/// A refusal throws <see cref="VoucherRefusedException"/> before anything is written. Who may
/// call what is the server's access policy.
/// </summary>
public sealed partial class VoucherBook(NpgsqlDataSource dataSource, TimeProvider time)
{
    public const int ListLimitDefault = 100;
    public const int ListLimitMax = 1_000;

    /// <summary>Largest contract amount: 100 billion CNY, far above any real contract and far below overflow.</summary>
    public const long AmountFenMax = 10_000_000_000_000;

    /// <summary>Longest contract: five years.</summary>
    public const int ContractDaysMax = 5 * 366;

    internal static string CheckCode(string code) =>
        CreditCode.IsValid(code)
            ? code
            : throw new VoucherRefusedException(VoucherRefusalReason.HolderCreditCodeInvalid, $"'{code}' is not a valid unified social credit code (18 characters, GB 32100-2015 check character)");

    internal static VoucherRefusedException Invalid(string message) => new(VoucherRefusalReason.VoucherFieldInvalid, message);

    public static DateOnly ParseDate(string field, string text) =>
        DateOnly.TryParseExact(text, "yyyy-MM-dd", CultureInfo.InvariantCulture, DateTimeStyles.None, out DateOnly date)
            ? date
            : throw Invalid($"{field} must be a date as yyyy-MM-dd, not '{text}'");
}
