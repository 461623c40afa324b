using System.Globalization;
using Grpc.Core;
using Metering.Engine.Access;
using Metering.Engine.Settlement;
using Metering.Engine.Vouchers;
using Metering.Protocol.V1;
using Claim = Metering.Protocol.V1.Claim;
using Contract = Metering.Protocol.V1.Contract;
using Holder = Metering.Protocol.V1.Holder;
using ProgrammeParameters = Metering.Protocol.V1.ProgrammeParameters;
using Voucher = Metering.Protocol.V1.Voucher;
using Metering.Server.Access;
using Microsoft.Extensions.Logging;

namespace Metering.Server.Vouchers;

/// <summary>
/// The voucher book and redemptions over gRPC. The access policy has already checked the caller's
/// role: operators write; operators, auditors and the settlement batch read. Holders are not
/// callers; operators act for them, and every write records the operator's name.
/// </summary>
internal sealed partial class VoucherGrpcService(VoucherBook book, Redemptions redemptions, Payouts payouts, YearEndReleases releases,
    ILogger<VoucherGrpcService> logger) : VoucherService.VoucherServiceBase
{
    public override Task<Holder> RegisterHolder(RegisterHolderRequest request, ServerCallContext context) =>
        Run(context, "RegisterHolder", async (actor, ct) => VoucherMapping.ToWire(await book.RegisterHolderAsync(actor, VoucherMapping.ToEngine(request.Holder ?? new Holder()), ct)));

    public override Task<Holder> ApproveHolder(ApproveHolderRequest request, ServerCallContext context) =>
        Run(context, "ApproveHolder", async (actor, ct) => VoucherMapping.ToWire(await book.ApproveHolderAsync(actor, request.CreditCode, ct)));

    public override Task<Holder> LeaveHolderRole(LeaveHolderRoleRequest request, ServerCallContext context) =>
        Run(context, "LeaveHolderRole", async (actor, ct) => VoucherMapping.ToWire(await book.LeaveHolderRoleAsync(actor, request.CreditCode, request.Reason, ct)));

    public override Task<Holder> GetHolder(GetHolderRequest request, ServerCallContext context) =>
        Run(context, "GetHolder", async (actor, ct) => VoucherMapping.ToWire(await book.GetHolderAsync(request.CreditCode, ct)
            ?? throw new VoucherRefusedException(VoucherRefusalReason.HolderUnknown, $"no voucher holder {request.CreditCode} is registered")));

    public override Task<ListHoldersResponse> ListHolders(ListHoldersRequest request, ServerCallContext context) =>
        Run(context, "ListHolders", async (actor, ct) => new ListHoldersResponse { Holders = { (await book.ListHoldersAsync((int)Math.Min(request.Limit, int.MaxValue), ct)).Select(VoucherMapping.ToWire) } });

    public override Task<ProgrammeParameters> PutProgrammeParameters(ProgrammeParameters request, ServerCallContext context) =>
        Run(context, "PutProgrammeParameters", async (actor, ct) => VoucherMapping.ToWire(await book.PutParametersAsync(actor, VoucherMapping.ToEngine(request), ct)));

    public override Task<ListProgrammeParametersResponse> ListProgrammeParameters(ListProgrammeParametersRequest request, ServerCallContext context) =>
        Run(context, "ListProgrammeParameters", async (actor, ct) => new ListProgrammeParametersResponse
        {
            Parameters = { (await book.ListParametersAsync((int)Math.Min(request.ProgrammeYear, 10_000), ct)).Select(VoucherMapping.ToWire) },
        });

    public override Task<Contract> RecordContract(RecordContractRequest request, ServerCallContext context) =>
        Run(context, "RecordContract", async (actor, ct) => VoucherMapping.ToWire(await book.RecordContractAsync(actor, VoucherMapping.ToEngine(request.Contract ?? new Contract()), ct)));

    public override Task<Contract> GetContract(GetContractRequest request, ServerCallContext context) =>
        Run(context, "GetContract", async (actor, ct) => VoucherMapping.ToWire(await book.GetContractAsync(request.ContractId, ct)
            ?? throw new VoucherRefusedException(VoucherRefusalReason.ContractUnknown, $"there is no contract {request.ContractId}")));

    public override Task<Contract> RecordOtherSupport(RecordOtherSupportRequest request, ServerCallContext context) =>
        Run(context, "RecordOtherSupport", async (actor, ct) => VoucherMapping.ToWire(await book.RecordOtherSupportAsync(actor, VoucherMapping.ToEngine(request), ct)));

    public override Task<Voucher> IssueVoucher(IssueVoucherRequest request, ServerCallContext context) =>
        Run(context, "IssueVoucher", async (actor, ct) => VoucherMapping.ToWire(await book.IssueVoucherAsync(actor, VoucherMapping.ToEngine(request), ct)));

    public override Task<Voucher> GetVoucher(GetVoucherRequest request, ServerCallContext context) =>
        Run(context, "GetVoucher", async (actor, ct) => VoucherMapping.ToWire(await book.GetVoucherAsync(request.VoucherId, ct)
            ?? throw new VoucherRefusedException(VoucherRefusalReason.VoucherUnknown, $"there is no voucher {request.VoucherId}")));

    public override Task<Claim> FileClaim(FileClaimRequest request, ServerCallContext context) =>
        Run(context, "FileClaim", async (actor, ct) => VoucherMapping.ToWire(await redemptions.FileClaimAsync(actor, VoucherMapping.ToEngine(request), ct)));

    public override Task<Claim> VoidClaim(VoidClaimRequest request, ServerCallContext context) =>
        Run(context, "VoidClaim", async (actor, ct) => VoucherMapping.ToWire(await redemptions.VoidClaimAsync(actor, VoucherMapping.ToEngine(request), ct)));

    public override Task<Claim> GetClaim(GetClaimRequest request, ServerCallContext context) =>
        Run(context, "GetClaim", async (actor, ct) => VoucherMapping.ToWire(await redemptions.GetClaimAsync(request.ClaimId, ct)
            ?? throw new VoucherRefusedException(VoucherRefusalReason.ClaimUnknown, $"there is no claim {request.ClaimId}")));

    public override Task<ListClaimsResponse> ListClaims(ListClaimsRequest request, ServerCallContext context) =>
        Run(context, "ListClaims", async (actor, ct) =>
        {
            if (request.ContractId < 0)
            {
                throw new VoucherRefusedException(VoucherRefusalReason.VoucherFieldInvalid, $"contract_id must be a contract's id, or 0 for every contract, not {request.ContractId}");
            }

            long? contract = request.ContractId == 0 ? null : request.ContractId;
            int limit = (int)Math.Min(request.Limit, VoucherBook.ListLimitMax);
            return new ListClaimsResponse { Claims = { (await redemptions.ListClaimsAsync(contract, limit, ct)).Select(VoucherMapping.ToWire) } };
        });

    public override Task<Payout> RecordPayout(RecordPayoutRequest request, ServerCallContext context) =>
        Run(context, "RecordPayout", async (actor, ct) =>
        {
            if (!DateOnly.TryParseExact(request.PaidOn, "yyyy-MM-dd", CultureInfo.InvariantCulture, DateTimeStyles.None, out DateOnly paidOn))
            {
                throw new PayoutRefusedException(PayoutProblem.FieldInvalid, $"paid_on must be a date as yyyy-MM-dd, not '{request.PaidOn}'");
            }

            PayoutRecord payout = await payouts.RecordAsync(actor, new PayoutOrder(request.PayeeCode, request.AmountFen, request.BankReference, paidOn), ct);
            if (!payout.AlreadyRecorded)
            {
                LogPayout(logger, payout.PayoutId, payout.AmountFen, payout.PayeeCode, payout.BankReference, actor.ToString());
            }

            return ToMessage(payout);
        });

    public override Task<ListPayoutsResponse> ListPayouts(ListPayoutsRequest request, ServerCallContext context) =>
        Run(context, "ListPayouts", async (actor, ct) => new ListPayoutsResponse
        {
            Payouts = { (await payouts.ListAsync(request.PayeeCode.Length == 0 ? null : request.PayeeCode, (int)Math.Min(request.Limit, Payouts.ListLimitMax), ct)).Select(ToMessage) },
        });

    public override Task<YearEndRelease> ReleaseYearEnd(ReleaseYearEndRequest request, ServerCallContext context) =>
        Run(context, "ReleaseYearEnd", async (actor, ct) =>
        {
            YearEndReleaseRecord released = await releases.ReleaseYearEndAsync(actor, (int)Math.Min(request.ProgrammeYear, int.MaxValue), ct);
            LogRelease(logger, released.ReleaseId, released.ReleasedFen, released.Vouchers, released.ProgrammeYear, actor.ToString());
            return new YearEndRelease
            {
                ReleaseId = released.ReleaseId,
                ProgrammeYear = (uint)released.ProgrammeYear,
                Vouchers = (uint)released.Vouchers,
                ReleasedFen = released.ReleasedFen,
                YearReleasedFen = released.YearReleasedFen,
                ReleasedBy = released.ReleasedBy,
                ReleasedUnixMs = released.ReleasedAt.ToUnixTimeMilliseconds(),
            };
        });

    private static Payout ToMessage(PayoutRecord payout) => new()
    {
        PayoutId = payout.PayoutId,
        PayeeCode = payout.PayeeCode,
        AmountFen = payout.AmountFen,
        BankReference = payout.BankReference,
        PaidOn = payout.PaidOn.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture),
        LedgerEntryId = payout.LedgerEntryId,
        RecordedBy = payout.RecordedBy,
        RecordedUnixMs = payout.RecordedAt.ToUnixTimeMilliseconds(),
        PayableFen = payout.PayableFen,
        AlreadyRecorded = payout.AlreadyRecorded,
    };

    /// <summary>
    /// Runs a call as its authenticated caller. RefusalInterceptor turns voucher and payout refusals into statuses and
    /// logs them with the gRPC method, which <paramref name="method"/> names where the call is written.
    /// </summary>
    private Task<T> Run<T>(ServerCallContext context, string method, Func<Actor, CancellationToken, Task<T>> call) =>
        call(AuthenticationInterceptor.Caller(context), context.CancellationToken);

    [LoggerMessage(EventId = 6011, Level = LogLevel.Information, Message = "Payout {PayoutId}: {AmountFen} fen to {Payee}, bank reference {Reference}, recorded by {Actor}")]
    private static partial void LogPayout(ILogger logger, long payoutId, long amountFen, string payee, string reference, string actor);

    [LoggerMessage(EventId = 6012, Level = LogLevel.Information, Message = "Year-end release {ReleaseId}: {ReleasedFen} fen unused on {Vouchers} voucher(s) of {Year} returned to the budget by {Actor}")]
    private static partial void LogRelease(ILogger logger, long releaseId, long releasedFen, int vouchers, int year, string actor);
}
