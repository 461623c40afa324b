using Metering.Engine.Registry;
using Metering.Protocol.V1;
using VerificationPart = Metering.Engine.Registry.VerificationPart;
using VerifierPart = Metering.Engine.Registry.VerifierPart;
using Application = Metering.Protocol.V1.Application;

namespace Metering.Server.Registry;

/// <summary>Maps the verification's parts between the wire and the engine's own records.</summary>
internal static class VerificationMessages
{
    /// <summary>The commissioned verifier's parts of a decision, as the engine takes them; the engine checks them.</summary>
    public static IReadOnlyList<VerifierPart> PartsOf(VerificationDecision decision) =>
        [.. decision.VerifierParts.Select(p => new VerifierPart(p.DeviceModel.Trim(), p.Devices, p.DenseFp16Gflops))];

    public static Protocol.V1.VerificationPart ToMessage(VerificationPart part) => new()
    {
        Source = part.Source == VerificationPartSource.Probe ? VerificationSource.Probe : VerificationSource.CommissionedVerifier,
        ValidationId = part.ValidationId,
        DeviceModel = part.DeviceModel,
        Devices = (ulong)part.Devices,
        Fp16Gflops = part.Fp16Gflops,
    };

    public static Protocol.V1.VerifierPart ToMessage(VerifierPart part) => new()
    {
        DeviceModel = part.DeviceModel,
        Devices = (uint)part.Devices,
        DenseFp16Gflops = part.DenseFp16Gflops,
    };

    /// <summary>Fills each application's verification parts and its pending proposal's verifier parts, read in one go.</summary>
    public static async Task<IReadOnlyList<Application>> WithPartsAsync(ProviderRegistry registry, IReadOnlyList<Application> applications, CancellationToken cancellationToken)
    {
        IReadOnlyDictionary<long, VerificationFigures> figures = await registry.GetVerificationFiguresAsync(applications.Select(a => a.ApplicationId), cancellationToken);
        foreach (Application application in applications)
        {
            if (!figures.TryGetValue(application.ApplicationId, out VerificationFigures? found))
            {
                continue;
            }

            application.VerificationParts.Add(found.Recorded.Select(ToMessage));
            application.PendingProposal?.VerifierParts.Add(found.Proposed.Select(ToMessage));
        }

        return applications;
    }

    public static async Task<Application> WithPartsAsync(ProviderRegistry registry, Application application, CancellationToken cancellationToken) =>
        (await WithPartsAsync(registry, [application], cancellationToken))[0];
}
