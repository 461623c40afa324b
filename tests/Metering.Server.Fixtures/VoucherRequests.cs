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
        await vouchers.RegisterHolderAsync(new RegisterHolderRequest
        {
            Holder = new Holder { CreditCode = TestRecords.Holder, Name = "Tencent", Type = HolderType.HolderEnterprise, District = "南山区", EstablishedOn = "1999-11-11" },
        }, operatorKey);
        Holder approved = await vouchers.ApproveHolderAsync(new ApproveHolderRequest { CreditCode = TestRecords.Holder }, operatorKey);
        Contract contract = await vouchers.RecordContractAsync(new RecordContractRequest
        {
            Contract = new Contract
            {
                HolderCode = TestRecords.Holder,
                ProviderId = TestRecords.Provider,
                ServiceItem = Admissions.ServiceItem,
                ContractNumber = contractNumber,
                SignedOn = "2026-01-01",
                StartsOn = "2026-01-01",
                EndsOn = "2026-12-31",
                AmountFen = 200_000_000,
                FeeUnit = FeeUnit.PerCardHour,
                NonRelatedParty = true,
                DeclarationRef = $"declarations/{contractNumber}.pdf",
            },
        }, operatorKey);
        return (approved, contract);
    }
}
