using System.Globalization;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>
/// `metering registry verify --verifier-part MODEL:DEVICES:GFLOPS` as an operator runs it, against
/// a real server over TLS: malformed parts stop in the CLI with exit 2 and reach no server, a part
/// the server refuses exits 4 with its reason, and a good one is proposed, approved by a second
/// operator and shown with its source.
/// </summary>
[Collection(PostgresCollection.Name)]
public sealed class VerifierPartCliTests(PostgresFixture postgres)
{
    [Fact]
    public async Task Verify_takes_the_commissioned_verifiers_figure_per_model_and_refuses_malformed_parts_with_exit_2()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key) = await scene.RegisterAsync();
        FileApplicationRequest filing = RegistryScene.Filing(code);
        filing.Capacity.Clear();
        filing.Capacity.Add(new DeclaredDevices { Site = "sz-ascend-dc", DeviceModel = "ASCEND-910B", DeviceCount = 1_000 });
        Application filed = await scene.Client.FileApplicationAsync(filing, key);
        await scene.Client.ReviewMaterialsAsync(new StageDecision { ApplicationId = filed.ApplicationId, Pass = true }, RegistryScene.Operator);
        string id = filed.ApplicationId.ToString(CultureInfo.InvariantCulture);

        foreach (var (part, message) in new[]
        {
            ("ASCEND-910B:1000", "expected MODEL:DEVICES:GFLOPS"),
            ("ASCEND-910B:ten:300000000", "DEVICES 'ten' is not a whole number"),
            ("ASCEND-910B:1000:300.5", "GFLOPS '300.5' is not a whole number"),
        })
        {
            var (exit, output) = await CliProcess.RunAsAsync(scene.Server, TestServer.OperatorKey, "registry", "verify", id, "--verifier-part", part, "--pass");
            Assert.True(exit == 2, $"--verifier-part {part} exited with {exit}:\n{output}");
            Assert.Contains(message, output, StringComparison.Ordinal);
        }

        var (withTotal, withTotalOutput) = await CliProcess.RunAsAsync(scene.Server, TestServer.OperatorKey,
            "registry", "verify", id, "--verifier-part", "ASCEND-910B:1000:300000000", "--verified-pflops", "300", "--pass");
        Assert.Equal(2, withTotal);
        Assert.Contains("does not go with a total", withTotalOutput, StringComparison.Ordinal);

        // Well formed, but above what 10 devices can do by the catalog: the server refuses it.
        var (refused, refusedOutput) = await CliProcess.RunAsAsync(scene.Server, TestServer.OperatorKey,
            "registry", "verify", id, "--verifier-part", "ASCEND-910B:10:300000000", "--pass");
        Assert.Equal(4, refused);
        Assert.Contains("refused: InvalidArgument VERIFIER_PART_INVALID", refusedOutput, StringComparison.Ordinal);
        Assert.Null((await scene.Client.GetApplicationAsync(new GetApplicationRequest { ApplicationId = filed.ApplicationId }, RegistryScene.Operator)).PendingProposal);

        var (proposedExit, proposed) = await CliProcess.RunAsAsync(scene.Server, TestServer.OperatorKey,
            "registry", "verify", id, "--verifier-part", "ASCEND-910B:1000:300000000", "--pass", "--reasons", "verifier report VR-2026-118");
        Assert.True(proposedExit == 0, proposed);
        Assert.Contains("with the commissioned verifier's figure for ASCEND-910B (1000 devices, 300.000 PFLOPS FP16)", proposed, StringComparison.Ordinal);

        uint proposalNo = (await scene.Client.GetApplicationAsync(new GetApplicationRequest { ApplicationId = filed.ApplicationId }, RegistryScene.Operator)).PendingProposal.ProposalNo;
        var (approvedExit, approved) = await CliProcess.RunAsAsync(scene.Server, TestServer.SecondOperatorKey,
            "registry", "approve", id, "--proposal", proposalNo.ToString(CultureInfo.InvariantCulture));
        Assert.True(approvedExit == 0, approved);
        Assert.Contains("Verified capacity by part:", approved, StringComparison.Ordinal);
        Assert.Matches(@"commissioned verifier's figure +ASCEND-910B +1000 +300\.000", approved);
        Assert.Matches(@"(?m)^state +AWAITING_PUBLIC_NOTICE$", approved);

        var (shownExit, shown) = await CliProcess.RunAsAsync(scene.Server, TestServer.OperatorKey, "registry", "application", id);
        Assert.True(shownExit == 0, shown);
        Assert.Matches(@"commissioned verifier's figure +ASCEND-910B +1000 +300\.000", shown);

        var (historyExit, history) = await CliProcess.RunAsAsync(scene.Server, TestServer.OperatorKey, "registry", "history", "--code", code);
        Assert.True(historyExit == 0, history);
        Assert.Contains("verification_parts: commissioned verifier ASCEND-910B × 1000 300.000 PFLOPS", history, StringComparison.Ordinal);
    }
}
