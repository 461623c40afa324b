using Grpc.Core;
using Metering.Engine.Fixtures;
using Metering.Fixtures;
using Metering.Protocol.V1;

namespace Metering.Server.Fixtures;

/// <summary>The voucher set-up that settlement tests share, sent through the server as an operator would.</summary>
public static class VoucherRequests
{
    /// <summary>
    /// Registers and approves the test holder and records its 2026 contract with the test provider
    /// (per card-hour, 2,000,000 CNY, no related party); returns the approved holder and the contract.
    /// </summary>
    public static async Task<(Holder Approved, Contract Contract)> HolderAndContractAsync(VoucherService.VoucherServiceClient vouchers, Metadata operatorKey, string contractNumber)
    {
        Holder approved = await ApprovedHolderAsync(vouchers, operatorKey, TestRecords.Holder, "Tencent");
        return (approved, await ContractAsync(vouchers, operatorKey, TestRecords.Holder, TestRecords.Provider, contractNumber, 2026));
    }

    /// <summary>Registers an enterprise holder (established 1999, so no start-up ratio) and approves it.</summary>
    public static async Task<Holder> ApprovedHolderAsync(VoucherService.VoucherServiceClient vouchers, Metadata operatorKey, string holderCode, string name)
    {
        await vouchers.RegisterHolderAsync(new RegisterHolderRequest
        {
            Holder = new Holder { CreditCode = holderCode, Name = name, Type = HolderType.HolderEnterprise, District = "南山区", EstablishedOn = "1999-11-11" },
        }, operatorKey);
        return await vouchers.ApproveHolderAsync(new ApproveHolderRequest { CreditCode = holderCode }, operatorKey);
    }

    /// <summary>Records a contract of the holder with the provider for the whole of the year: per card-hour, 2,000,000 CNY, no related party.</summary>
    public static async Task<Contract> ContractAsync(VoucherService.VoucherServiceClient vouchers, Metadata operatorKey, string holderCode, string providerId,
        string contractNumber, int year) =>
        await vouchers.RecordContractAsync(new RecordContractRequest
        {
            Contract = new Contract
            {
                HolderCode = holderCode,
                ProviderId = providerId,
                ServiceItem = Admissions.ServiceItem,
                ContractNumber = contractNumber,
                SignedOn = $"{year}-01-01",
                StartsOn = $"{year}-01-01",
                EndsOn = $"{year}-12-31",
                AmountFen = 200_000_000,
                FeeUnit = FeeUnit.PerCardHour,
                NonRelatedParty = true,
                DeclarationRef = $"declarations/{contractNumber}.pdf",
            },
        }, operatorKey);
}
