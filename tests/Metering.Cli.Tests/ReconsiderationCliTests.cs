using System.Globalization;
using System.Text.RegularExpressions;
using Metering.Protocol.V1;
using Metering.Engine.Fixtures;
using Metering.Server.Fixtures;
using Metering.Fixtures;

namespace Metering.Cli.Tests;

/// <summary>`metering registry reconsider request|decide` as a provider and an operator would type them, against the real server.</summary>
[Collection(PostgresCollection.Name)]
public sealed class ReconsiderationCliTests(PostgresFixture postgres)
{
    [Fact]
    public async Task A_provider_requests_reconsideration_and_an_operator_dismisses_it_from_the_command_line()
    {
        await using RegistryScene scene = await RegistryScene.StartAsync(postgres);
        var (code, key) = await scene.RegisterAsync();
        long applicationId = (await scene.Client.FileApplicationAsync(RegistryScene.Filing(code), key)).ApplicationId;
        await scene.Client.ReviewMaterialsAsync(new StageDecision { ApplicationId = applicationId, Pass = false, Reasons = "No tax certificate on file." }, RegistryScene.Operator);
        string id = applicationId.ToString(CultureInfo.InvariantCulture);
        string providerKey = RegistryScene.KeyOf(key);

        var (requested, requestOutput) = await CliProcess.RunAsAsync(scene.Server, providerKey, "registry", "reconsider", "request", id, "--grounds", "纳税证明已在材料中。");
        Assert.True(requested == 0, requestOutput);
        AssertField("reconsideration", "pending", requestOutput);
        AssertField("application state", "UNDER_RECONSIDERATION", requestOutput);
        AssertField("grounds", "纳税证明已在材料中。", requestOutput);

        // Both verdicts at once is bad usage, caught before the server is called.
        var (both, bothOutput) = await CliProcess.RunAsAsync(scene.Server, TestServer.OperatorKey, "registry", "reconsider", "decide", id, "--uphold", "--dismiss", "--reason", "?");
        Assert.Equal(2, both);
        Assert.Contains("not both", bothOutput, StringComparison.Ordinal);

        var (dismissed, dismissOutput) = await CliProcess.RunAsAsync(scene.Server, TestServer.OperatorKey, "registry", "reconsider", "decide", id, "--dismiss", "--reason", "所附证明为 2023 年度。");
        Assert.True(dismissed == 0, dismissOutput);
        AssertField("reconsideration", "dismissed", dismissOutput);
        AssertField("application state", "REJECTED", dismissOutput);
        AssertField("reason", "所附证明为 2023 年度。", dismissOutput);

        var (twice, twiceOutput) = await CliProcess.RunAsAsync(scene.Server, providerKey, "registry", "reconsider", "request", id, "--grounds", "再看一次。");
        Assert.Equal(4, twice);
        Assert.Contains("refused: AlreadyExists RECONSIDERATION_ALREADY_REQUESTED", twiceOutput, StringComparison.Ordinal);
        Assert.Equal("rejected", await scene.Server.ScalarAsync<string>("SELECT state FROM applications WHERE application_id = @applicationId", new { applicationId }));
    }

    private static void AssertField(string label, string value, string output) =>
        Assert.Matches(new Regex($"^{Regex.Escape(label)} +{Regex.Escape(value)}$", RegexOptions.Multiline), output);
}
