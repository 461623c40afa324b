using Dapper;
using Metering.Engine.Fixtures;
using Metering.Engine.Vouchers;
using Metering.Fixtures;
using Npgsql;
using Claim = Metering.Engine.Vouchers.Claim;
using Contract = Metering.Engine.Vouchers.Contract;
using Voucher = Metering.Engine.Vouchers.Voucher;

namespace Metering.Engine.IntegrationTests.Vouchers;

/// <summary>
/// Migration 0028 keeps the voucher tables' unique keys per provider (so that they distribute on
/// provider_id): what they refused before is still refused, and a row cannot name another
/// provider's contract, voucher or claim.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class ProviderKeyTests(PostgresFixture postgres)
{
    [Fact]
    public async Task A_second_voucher_for_one_contract_and_year_is_refused_and_writes_nothing()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();
        Contract contract = await scene.ContractAsync(holder);
        await scene.VoucherAsync(contract.ContractId, 10_000_000);
        long entries = await scene.ScalarAsync<long>("SELECT count(*) FROM ledger_entries");

        var refused = await Assert.ThrowsAsync<VoucherRefusedException>(() => scene.VoucherAsync(contract.ContractId, 10_000_000));

        Assert.Equal(VoucherRefusalReason.VoucherExists, refused.Reason);
        Assert.Equal(1L, await scene.ScalarAsync<long>("SELECT count(*) FROM vouchers WHERE contract_id = @id", new { id = contract.ContractId }));
        Assert.Equal(entries, await scene.ScalarAsync<long>("SELECT count(*) FROM ledger_entries"));
    }

    [Fact]
    public async Task Rows_naming_another_providers_contract_or_claim_are_refused_by_the_keys()
    {
        await using VoucherScene scene = await VoucherScene.StartAsync(postgres);
        string holder = await scene.HolderAsync();
        Contract contract = await scene.ContractAsync(holder);
        Voucher voucher = await scene.VoucherAsync(contract.ContractId, 100_000_000);
        await scene.IngestAsync("cluster-a", VoucherScene.Jobs(holder, VoucherScene.Day, 4));
        Claim claim = await scene.ClaimDayAsync(contract.ContractId, VoucherScene.Day);
        await using NpgsqlConnection connection = await scene.DataSource.OpenConnectionAsync();

        // The other provider (or an engine bug writing in its name) attaches a voucher to the
        // first provider's contract, for a year the contract has none yet.
        var voucherOfOther = await Assert.ThrowsAsync<PostgresException>(() => connection.ExecuteAsync("""
            INSERT INTO vouchers (provider_id, contract_id, holder_code, programme_year, face_value_fen, valid_from, valid_until, issued_by, issued_at)
            VALUES (@other, @contract, @holder, 2027, 1000, '2027-01-01', '2027-12-31', 'cheater', now())
            """, new { other = TestRecords.OtherProvider, contract = contract.ContractId, holder }));
        Assert.Equal((PostgresErrorCodes.ForeignKeyViolation, "vouchers_provider_id_contract_id_fkey"), (voucherOfOther.SqlState, voucherOfOther.ConstraintName));

        // A second hold on the claim, under the other provider: refused by the claim's key.
        var holdOfOther = await Assert.ThrowsAsync<PostgresException>(() => connection.ExecuteAsync("""
            INSERT INTO voucher_holds (provider_id, voucher_id, claim_id, amount_fen, state, reserved_at, expires_at)
            VALUES (@other, @voucher, @claim, 1, 'reserved', now(), now() + interval '1 day')
            """, new { other = TestRecords.OtherProvider, voucher = voucher.VoucherId, claim = claim.ClaimId }));
        Assert.Equal(PostgresErrorCodes.ForeignKeyViolation, holdOfOther.SqlState);

        // A second hold on the claim under its own provider: one hold per claim still.
        var secondHold = await Assert.ThrowsAsync<PostgresException>(() => connection.ExecuteAsync("""
            INSERT INTO voucher_holds (provider_id, voucher_id, claim_id, amount_fen, state, reserved_at, expires_at)
            VALUES (@provider, @voucher, @claim, 1, 'reserved', now(), now() + interval '1 day')
            """, new { provider = contract.ProviderId, voucher = voucher.VoucherId, claim = claim.ClaimId }));
        Assert.Equal((PostgresErrorCodes.UniqueViolation, "voucher_holds_claim_id_key"), (secondHold.SqlState, secondHold.ConstraintName));

        Assert.Equal(1L, await scene.ScalarAsync<long>("SELECT count(*) FROM voucher_holds"));
        Assert.Equal(1L, await scene.ScalarAsync<long>("SELECT count(*) FROM vouchers"));
    }
}
