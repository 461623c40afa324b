using System.Data;
using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Ledger;
using Metering.Engine.Registry;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Vouchers;

// Programme-year parameters: versioned and effective-dated, so that a claim is decided by the version in force.
public sealed partial class VoucherBook
{
    public async Task<ProgrammeParameters> PutParametersAsync(Actor actor, ProgrammeParameters parameters, CancellationToken cancellationToken)
    {
        if (parameters.ProgrammeYear is < 2024 or > 2100)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.ParametersInvalid, "programme_year must be 2024 to 2100");
        }

        if (parameters.SupportRatioBp is 0 or > Pricing.BasisPointsWhole || parameters.StartupRatioBp is 0 or > Pricing.BasisPointsWhole
            || parameters.StackingCapBp is 0 or > Pricing.BasisPointsWhole)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.ParametersInvalid, "support_ratio_bp, startup_ratio_bp and stacking_cap_bp must be 1 to 10000 basis points");
        }

        if (parameters.AnnualCapFen <= 0 || parameters.AnnualCapFen > AmountFenMax || parameters.MinAnnualRentalFen < 0 || parameters.MinAnnualRentalFen > AmountFenMax)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.ParametersInvalid, $"annual_cap_fen must be 1 to {AmountFenMax} and min_annual_rental_fen 0 to {AmountFenMax}");
        }

        if (parameters.HoldDays is 0 or > 400)
        {
            throw new VoucherRefusedException(VoucherRefusalReason.ParametersInvalid, "hold_days must be 1 to 400");
        }

        string mode = VoucherNames.Of(parameters.PayeeMode);
        DateTimeOffset now = time.GetUtcNow();
        DateTimeOffset effective = parameters.EffectiveFromUnixMs == 0 ? now : DateTimeOffset.FromUnixTimeMilliseconds(parameters.EffectiveFromUnixMs);
        return await dataSource.InTransactionAsync(async (connection, transaction) =>
        {
            // Versions of one year are numbered under a lock so that two operators cannot both take the same number.
            await connection.ExecuteAsync("SELECT pg_advisory_xact_lock(@key)", new { key = 0x5041_5241_4d00_0000L + parameters.ProgrammeYear }, transaction);
            var latest = await connection.QueryFirstOrDefaultAsync<(int Version, DateTime EffectiveFrom)?>(
                "SELECT version, effective_from FROM programme_parameters WHERE programme_year = @year ORDER BY version DESC LIMIT 1",
                new { year = (int)parameters.ProgrammeYear }, transaction);
            if (latest is { } l && effective.UtcDateTime < l.EffectiveFrom)
            {
                throw new VoucherRefusedException(VoucherRefusalReason.ParametersInvalid,
                    $"a new version takes effect no earlier than version {l.Version} ({ShanghaiTime.Describe(ShanghaiTime.Instant(l.EffectiveFrom))}); versions are not back-dated");
            }

            int version = (latest?.Version ?? 0) + 1;
            await connection.ExecuteAsync("""
                INSERT INTO programme_parameters (programme_year, version, effective_from, support_ratio_bp, startup_ratio_bp, annual_cap_fen, stacking_cap_bp,
                    min_annual_rental_fen, payee_mode, hold_days, recorded_by, recorded_at)
                VALUES (@year, @version, @effective, @ratio, @startup, @cap, @stacking, @minimum, @mode, @holdDays, @by, @now)
                """, new
            {
                year = (int)parameters.ProgrammeYear,
                version,
                effective = effective.UtcDateTime,
                ratio = (int)parameters.SupportRatioBp,
                startup = (int)parameters.StartupRatioBp,
                cap = parameters.AnnualCapFen,
                stacking = (int)parameters.StackingCapBp,
                minimum = parameters.MinAnnualRentalFen,
                mode,
                holdDays = (int)parameters.HoldDays,
                by = actor.Subject,
                now = now.UtcDateTime,
            }, transaction);
            return (await ReadParametersAsync(connection, transaction, (int)parameters.ProgrammeYear)).Single(p => p.Version == version).ToParameters();
        }, cancellationToken);
    }

    public async Task<IReadOnlyList<ProgrammeParameters>> ListParametersAsync(int year, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return (await ReadParametersAsync(connection, null, year == 0 ? null : year)).Select(p => p.ToParameters()).ToList();
    }

    /// <summary>The version of a year's parameters in force at an instant.</summary>
    internal static async Task<ParametersRow> ParametersInForceAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, int year, DateTimeOffset at) =>
        (await ReadParametersAsync(connection, transaction, year)).Where(p => p.EffectiveFrom <= at).MaxBy(p => p.Version)
        ?? throw new VoucherRefusedException(VoucherRefusalReason.ParametersUnknown, $"no programme parameters for {year} are in force at {ShanghaiTime.Describe(at)}");

    private static async Task<IReadOnlyList<ParametersRow>> ReadParametersAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, int? year) =>
        (await connection.QueryAsync<(int Year, int Version, DateTime From, int Ratio, int Startup, long Cap, int Stacking, long Minimum, string Mode, int HoldDays)>("""
            SELECT programme_year, version, effective_from, support_ratio_bp, startup_ratio_bp, annual_cap_fen, stacking_cap_bp, min_annual_rental_fen, payee_mode, hold_days
            FROM programme_parameters WHERE @year::integer IS NULL OR programme_year = @year ORDER BY programme_year, version
            """, new { year }, transaction))
        .Select(r => new ParametersRow(r.Year, r.Version, ShanghaiTime.Instant(r.From), r.Ratio, r.Startup, r.Cap, r.Stacking, r.Minimum, r.Mode, r.HoldDays)).ToList();
}
